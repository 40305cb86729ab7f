"""safeanchor: safety-preserving fine-tuning of chat LLMs (ProCon, AsFT, Safe LoRA) and its evaluation.

The public Python API, imported lazily (``import safeanchor`` stays cheap for the CLI):

>>> import safeanchor                                                          # doctest: +SKIP
>>> model, tok = safeanchor.load_model("embedded:smollm2-135m-safe")           # doctest: +SKIP
>>> rd = safeanchor.extract_direction(model, tok)                              # doctest: +SKIP
>>> result = safeanchor.train.train(safeanchor.SafeTrainingConfig(method="procon_wu_safe", output_dir="runs/x"))  # doctest: +SKIP
"""

import importlib

__version__ = "0.1.0"

# name -> module holding it; the package root re-exports the user-facing names of the layers below
_EXPORTS = {
    "load_model": "models",
    "extract_direction": "direction.extract", "ExtractConfig": "direction.extract",
    "RefusalDirection": "direction.artifact", "drift_report": "direction.drift",
    "evaluate_model": "evaluate.suite", "EvalConfig": "evaluate.suite",
    "SafeTrainingConfig": "train.config", "SafeTrainer": "train.trainer",  # train(): safeanchor.train.train
    "SafeSFTConfig": "train.trl_trainer", "SafeSFTTrainer": "train.trl_trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
