"""safeanchor: safety-preserving fine-tuning of chat LLMs (ProCon, AsFT, Safe LoRA) and its evaluation."""

__version__ = "0.1.0"
