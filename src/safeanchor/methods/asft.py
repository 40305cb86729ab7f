"""AsFT: anchor LoRA updates to the alignment direction (METHODS.md §3, PKU-YuanGroup).

For every LoRA target module, with V = W_aligned - W_unaligned and C = V Vᵀ / ‖V‖_F::

    R = Σ_modules ‖(I - C) ΔW‖_F² ,   ΔW = B A ,   L = L_task + λ R   (λ = 1 in the reference)

computed without the out×out C: with X = B - C B = B - V (Vᵀ B) / ‖V‖_F (shape ``(out, r)``),
‖X A‖_F² = sum((XᵀX) ⊙ (A Aᵀ)) -- two r×r matrices per module. The reference code uses raw
``B A`` (no alpha/r); ``include_lora_scaling=True`` multiplies ΔW by alpha/r.

Named extension ``rank=k``: replace C by the true projector onto the top-k left singular vectors
of V (X = B - U_k U_kᵀ B), so an update inside span(U_k) costs exactly 0.

>>> # from safeanchor.methods.asft import AsFT, AsFTConfig
>>> # reg = AsFT(AsFTConfig(unaligned_model="embedded:smollm2-135m-instruct"))
>>> # trainer built with regularizers={"asft": reg}; reg.setup(trainer) reports the modules
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .weight_direction import (
    AlignmentDirectionError,
    ModuleAnchor,
    active_adapter,
    alignment_directions,
    build_anchors,
    lora_factors,
    lora_modules,
    unaligned_from_alignment_stage,
)
from .base import Regularizer, RegularizerSetupError

log = logging.getLogger(__name__)

DIRECTION_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class AsFTConfig:
    """Settings of the AsFT penalty. Paper defaults; ``rank`` is our extension."""

    unaligned_model: str | None = field(
        default=None,
        metadata={"help": "the unaligned checkpoint of the pair (e.g. embedded:smollm2-135m-instruct when "
                          "fine-tuning embedded:smollm2-135m-safe); default: the base_model recorded in the "
                          "fine-tuned model's alignment.json (models built by safeanchor align)"},
    )
    aligned_model: str | None = field(
        default=None,
        metadata={"help": "the aligned checkpoint; default: the model being fine-tuned (its original weights)"},
    )
    target_modules: tuple[str, ...] | None = field(
        default=None,
        metadata={"help": "module names (e.g. q_proj v_proj) the penalty covers; default: every LoRA module"},
    )
    include_lora_scaling: bool = field(
        default=False,
        metadata={"help": "penalise (alpha/r)·B·A instead of the raw B·A the reference code uses"},
    )
    rank: int | None = field(
        default=None,
        metadata={"help": "extension: project with the top-k left singular vectors of V (true projector) "
                          "instead of C = VVᵀ/‖V‖_F; None = paper"},
    )
    direction_dtype: str = field(
        default="float32",
        metadata={"help": "dtype V (or U_k) is stored in on the model's device: float32, bfloat16, float16"},
    )

    def __post_init__(self) -> None:
        if self.unaligned_model is not None and not str(self.unaligned_model).strip():
            raise ValueError("asft.unaligned_model must be a model name or path, got an empty string")
        if self.aligned_model is not None and not str(self.aligned_model).strip():
            raise ValueError("asft.aligned_model must be a model name or path or None, got an empty string")
        if self.target_modules is not None:
            if isinstance(self.target_modules, str):
                self.target_modules = (self.target_modules,)
            self.target_modules = tuple(self.target_modules)
            if not self.target_modules:
                raise ValueError("asft.target_modules must be None (every LoRA module) or a non-empty list")
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1):
            raise ValueError(f"asft.rank must be None or an integer >= 1, got {self.rank!r}")
        if self.direction_dtype not in DIRECTION_DTYPES:
            raise ValueError(f"asft.direction_dtype must be one of {', '.join(DIRECTION_DTYPES)}, "
                             f"got {self.direction_dtype!r}")


def asft_module_penalty(B: torch.Tensor, A: torch.Tensor, anchor: ModuleAnchor, scaling: float = 1.0) -> torch.Tensor:
    """‖(I - C)(scaling·B A)‖_F² for one module, never forming an out×out matrix.

    ``B``: ``(out, r)``, ``A``: ``(r, in)``; ``anchor`` applies C (or P_k).

    >>> import torch
    >>> from safeanchor.methods.weight_direction import ModuleAnchor
    >>> V, B, A = torch.eye(3, dtype=torch.float64), torch.ones(3, 1, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    >>> float(asft_module_penalty(B, A, ModuleAnchor.from_direction(V, rank=3)))  # ΔW inside span(V)
    0.0
    """
    X = B - anchor.apply(B)  # (out, r): the part of B's columns off the alignment direction
    gram = (X.T @ X) * (A @ A.T)  # (r, r) ⊙ (r, r); sum = tr(Aᵀ XᵀX A) = ‖X A‖_F²
    return gram.sum() * (scaling ** 2)


class AsFT(Regularizer):
    """AsFT penalty R = Σ ‖(I - C) ΔW‖_F² over the LoRA modules (unweighted; λ is the trainer's coef)."""

    name = "asft"
    needs_hidden_states = False
    zero_at_start = True  # LoRA B starts at 0, so ΔW = 0 and R = 0 before the first update

    #: λ of the reference scripts; the trainer multiplies the raw value by it

    def __init__(self, config: AsFTConfig | None = None, **overrides: Any):
        if config is not None and overrides:
            raise TypeError("pass either an AsFTConfig or keyword overrides, not both")
        self.config = config or AsFTConfig(**overrides)
        self._modules: dict[str, torch.nn.Module] = {}
        self._anchors: dict[str, ModuleAnchor] = {}
        self._adapter = "default"

    def setup(self, trainer: Any) -> dict[str, Any]:
        cfg = self.config
        model = trainer.model
        unaligned = cfg.unaligned_model or unaligned_from_alignment_stage(model)
        if unaligned is None:
            raise RegularizerSetupError(
                "asft needs unaligned_model (the checkpoint before safety alignment, e.g. "
                "embedded:smollm2-135m-instruct for embedded:smollm2-135m-safe)"
            )
        try:
            modules = lora_modules(model, cfg.target_modules)
        except AlignmentDirectionError as e:
            raise RegularizerSetupError(f"asft: {e}") from e
        if not modules:
            present = sorted({n.rsplit(".", 1)[-1] for n in lora_modules(model)})
            raise RegularizerSetupError(
                f"asft attached to no module: target_modules={list(cfg.target_modules or [])} matched none of the "
                f"LoRA modules (LoRA module types present: {present or 'none -- is the model a PeftModel?'})"
            )
        try:
            directions = alignment_directions(model, modules, aligned=cfg.aligned_model, unaligned=unaligned)
            lora_weight = next(iter(modules.values())).lora_A[active_adapter(model)].weight
            self._anchors = build_anchors(directions, rank=cfg.rank, device=lora_weight.device,
                                          dtype=DIRECTION_DTYPES[cfg.direction_dtype])
        except (AlignmentDirectionError, ValueError) as e:
            raise RegularizerSetupError(f"asft: {e}") from e
        self._modules = modules
        self._adapter = active_adapter(model)
        norms = [a.norm for a in self._anchors.values()]
        report = {
            "n_modules": len(modules),
            "modules": list(modules),
            "zero_direction_modules": [n for n, a in self._anchors.items() if a.is_zero],
            "direction_norm_min": min(norms),
            "direction_norm_max": max(norms),
            **asdict(cfg),
            "aligned_model": cfg.aligned_model or "<the model being fine-tuned>",
            "unaligned_model": unaligned,
        }
        log.info("asft: anchored %d LoRA modules (rank=%s)", len(modules), cfg.rank)
        return report

    def __call__(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        if not self._modules:
            raise RuntimeError("asft: setup(trainer) must run before the penalty is computed")
        first = next(iter(self._modules.values())).lora_A[self._adapter].weight
        total = torch.zeros((), device=first.device, dtype=torch.float32)
        # Under autocast these matmuls would run in bf16; X = B - C B is a difference whose
        # cancellation bf16 would blur, and the cost (r×r Grams) is negligible in fp32.
        with torch.autocast(first.device.type, enabled=False):
            for name, module in self._modules.items():
                B, A = whole_factors(name, module, self._adapter)
                scaling = float(module.scaling[self._adapter]) if self.config.include_lora_scaling else 1.0
                total = total + asft_module_penalty(B.float(), A.float(), self._anchors[name], scaling)
        return total


def whole_factors(name: str, module, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``lora_factors`` checked to be whole on this process. Under DeepSpeed ZeRO-3 a partitioned
    parameter read outside its module's forward is an empty tensor, under FSDP a local shard or a
    DTensor: the penalty computed from it would be 0 or partial without any error. safeanchor's ZeRO-3
    config keeps LoRA factors whole (``stage3_param_persistence_threshold``); anything else stops here."""
    B, A = lora_factors(module, adapter)
    r = int(module.r[adapter])
    out_f, in_f = getattr(module, "out_features", None), getattr(module, "in_features", None)
    problems = []
    for label, t, shape in (("lora_B", B, (out_f, r)), ("lora_A", A, (r, in_f))):
        if type(t).__name__ == "DTensor" or hasattr(t, "ds_id") and getattr(t, "ds_status", None) is not None \
                and str(getattr(t, "ds_status")).endswith("NOT_AVAILABLE"):
            problems.append(f"{label} is sharded ({type(t).__name__})")
        elif t.numel() == 0 or (None not in shape and tuple(t.shape) != shape):
            problems.append(f"{label} has shape {tuple(t.shape)}, expected {shape}")
    if problems:
        raise RuntimeError(
            f"asft: the LoRA factors of {name} are not whole on this process ({'; '.join(problems)}): the penalty "
            "would be computed from a shard. Keep LoRA parameters unpartitioned (DeepSpeed ZeRO-3: "
            "stage3_param_persistence_threshold above the largest LoRA factor, as configs/accelerate/zero3.yaml "
            "does; FSDP: use DDP or ZeRO-2 for AsFT)")
    return B, A


def from_config(config) -> AsFT:
    """Factory for the method table: options from ``regularizer_options.asft``."""
    return AsFT(AsFTConfig(**dict((getattr(config, "regularizer_options", None) or {}).get("asft") or {})))


__all__ = ["AsFT", "AsFTConfig", "asft_module_penalty", "from_config", "unaligned_from_alignment_stage", "whole_factors"]
