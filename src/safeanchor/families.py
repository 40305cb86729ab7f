"""Per-family facts, keyed on ``config.model_type``: where the decoder blocks live, which tokens
open a refusal, which modules LoRA targets by default.

Adding a family is one entry in :data:`FAMILIES`; nothing else dispatches on model names.

>>> family_of("llama").blocks_path
'model.layers'
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """What safeanchor needs to know about one architecture family."""

    blocks_path: str  # attribute path from the *ForCausalLM to the ModuleList of decoder blocks
    refusal_tokens: tuple[str, ...]  # first tokens of a refusal (Arditi et al. refusal score)
    lora_targets: tuple[str, ...]  # default LoRA target modules (ProCon paper: q/k/v/o)
    attn_path: str = "self_attn"  # attribute of a block holding attention
    mlp_path: str = "mlp"  # attribute of a block holding the MLP


_QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")

FAMILIES: dict[str, Family] = {
    "llama": Family("model.layers", ("I",), _QKVO),
    "mistral": Family("model.layers", ("I",), _QKVO),
    "qwen2": Family("model.layers", ("I", "As"), _QKVO),
    "qwen3": Family("model.layers", ("I", "As"), _QKVO),
    "gemma": Family("model.layers", ("I",), _QKVO),
    "gemma2": Family("model.layers", ("I",), _QKVO),
}


class UnsupportedModelError(ValueError):
    """Raised for a model family safeanchor has no entry for."""


def family_of(model_type: str) -> Family:
    """Return the :class:`Family` for ``config.model_type``; unknown types are a clear error."""
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(sorted(FAMILIES))}. "
            "Add an entry to safeanchor.families.FAMILIES."
        ) from None


def get_blocks(model) -> "list":
    """The decoder blocks of a (possibly PEFT-wrapped) causal LM, as a ``ModuleList``.

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> m = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
    ...                                  num_attention_heads=2, num_key_value_heads=2, vocab_size=64))
    >>> len(get_blocks(m))
    2
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    fam = family_of(base.config.model_type)
    obj = base
    for part in fam.blocks_path.split("."):
        obj = getattr(obj, part)
    return obj
