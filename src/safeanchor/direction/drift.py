"""Stage 4: how far did fine-tuning move the refusal direction?

Re-extract r^(l) from a checkpoint with exactly the reference's prompts (recorded in its
``direction.json``) and report ``cos(r_ref^(l), r_ckpt^(l))`` per layer on the raw mean
differences (ProCon's drift measure).

>>> ref = RefusalDirection.from_pretrained("runs/direction")  # doctest: +SKIP
>>> cos = compute_drift(ref, model, tok)                      # doctest: +SKIP
>>> cos.shape  # (P, L)                                       # doctest: +SKIP
torch.Size([1, 30])
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..data import Record
from .artifact import RefusalDirection
from .extract import mean_activations, prompts_from_info

ADAPTER_CONFIG = "adapter_config.json"


def cosine_per_layer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine along the last dim in float64; a zero vector on either side gives NaN (undefined).

    >>> cosine_per_layer(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]])).tolist()
    [1.0]
    """
    a, b = a.to(torch.float64), b.to(torch.float64)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def reference_prompts(reference: RefusalDirection, *, limit: int | None = None) -> tuple[list[Record], list[Record]]:
    """The reference's harmful and harmless prompts (first ``limit`` of each if given)."""
    data = reference.info.get("data", {})
    for name in ("harmful", "harmless"):
        if not data.get(name, {}).get("source"):
            raise ValueError(f"the reference direction does not record where its {name} prompts came from "
                             "(it was extracted from in-memory records); pass harmful=/harmless= explicitly")
    return prompts_from_info(data["harmful"], limit=limit), prompts_from_info(data["harmless"], limit=limit)


def extract_mean_diff(model, tokenizer, reference: RefusalDirection, harmful: Sequence[Record],
                      harmless: Sequence[Record], *, batch_size: int | None = None) -> torch.Tensor:
    """``mean_h − mean_b`` of ``model`` with the reference's positions and settings, ``(P, L, D)`` float64."""
    ext = reference.info.get("extraction", {})
    kw = dict(offsets=reference.positions, batch_size=batch_size or int(ext.get("batch_size", 32)),
              max_length=int(ext.get("max_length", 512)), padding_side=ext.get("padding_side", "left"))
    return mean_activations(model, tokenizer, harmful, **kw) - mean_activations(model, tokenizer, harmless, **kw)


def compute_drift(reference: RefusalDirection, model, tokenizer, *,
                  harmful: Sequence[Record] | None = None, harmless: Sequence[Record] | None = None,
                  batch_size: int | None = None) -> torch.Tensor:
    """Per-layer cosine between the reference direction and ``model``'s, ``(P, L)`` float64.

    Uses the reference's own prompts unless ``harmful`` / ``harmless`` are given. The model must
    have the reference's shape; a different fingerprint is expected (it is a derivative).

    >>> compute_drift(ref, model, tok)[-1]   # last prompt token, one cosine per layer  # doctest: +SKIP
    """
    reference.check_compatible(model, derivative=True)
    if harmful is None or harmless is None:
        harmful, harmless = reference_prompts(reference)
    diff = extract_mean_diff(model, tokenizer, reference, harmful, harmless, batch_size=batch_size)
    return cosine_per_layer(reference.mean_diff, diff)


def is_adapter_dir(path: str | Path) -> bool:
    """True for a PEFT adapter folder (has ``adapter_config.json``), False for a full model."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def load_checkpoint(path: str, *, base: str | None, precision: str = "auto"):
    """Load a full model folder, or a LoRA adapter folder over ``base``; returns ``(model, tok)``."""
    from ..models import load_model

    if is_adapter_dir(path):
        if not base:
            raise ValueError(f"{path} is a LoRA adapter folder; pass the base model (--base)")
        return load_model(base, adapter=path, precision=precision)
    return load_model(path, precision=precision)


def drift_summary(cos: torch.Tensor) -> dict:
    """``{"mean", "min", "argmin"}`` of one row of per-layer cosines, ignoring undefined (NaN) layers."""
    ok = ~torch.isnan(cos)
    vals = cos[ok]
    layers = torch.arange(len(cos))[ok]
    return {"mean": float(vals.mean()), "min": float(vals.min()), "argmin": int(layers[torch.argmin(vals)])}
