"""Safe LoRA (Hsu et al. 2024): post-hoc projection of LoRA updates onto the alignment direction.

For every LoRA module, with C = V Vᵀ / ‖V‖_F (METHODS.md §3-§4)::

    sim = cos(vec(C ΔW), vec(ΔW)),   ΔW = B A
    threshold mode (τ = 0.5): project the modules with sim < τ
    number mode (k = 10):     project the k modules with the lowest sim
    relative mode (extension): project the modules with sim < τ · iso, iso = the cosine an
                              isotropic ΔW would get, √(PR(V) / out), PR = ‖V‖_F⁴ / ‖VᵀV‖_F²
                              (the participation ratio: V's effective rank)

Why the relative mode: for a random (isotropic) ΔW, cos(C ΔW, ΔW) ≈ tr C / (√out ‖C‖_F) = √(PR/out),
so with a low-rank V every module sits far below τ = 0.5 by chance alone; the report gives each
module's PR, ‖V‖_F and iso so a threshold can be read against that baseline.
    projection:               B ← C B   (so ΔW ← C ΔW)

Everything is computed from thin factors: C B = V (Vᵀ B) / ‖V‖_F is ``(out, r)`` and, with
G = A Aᵀ, ⟨C ΔW, ΔW⟩ = sum((C B)ᵀB ⊙ G), ‖C ΔW‖² = sum((C B)ᵀ(C B) ⊙ G), ‖ΔW‖² = sum(BᵀB ⊙ G).
The LoRA scaling alpha/r cancels in the cosine and commutes with C, so it is left out.

>>> # report = apply_safe_lora(peft_model, None, "embedded:smollm2-135m-instruct", mode="threshold")
>>> # report.n_projected, report.modules[0].similarity
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .weight_direction import ModuleAnchor, active_adapter, alignment_directions, build_anchors, lora_factors, lora_modules

log = logging.getLogger(__name__)

MODES = ("threshold", "number", "relative")
DEFAULT_THRESHOLD = 0.5
DEFAULT_K = 10
REPORT_FILE = "safe_lora_report.json"


@dataclass
class SafeLoRAModule:
    """The verdict for one LoRA module."""

    module: str
    similarity: float | None  # None when ΔW = 0 (nothing to compare or project)
    projected: bool
    delta_norm: float  # ‖ΔW‖_F without the alpha/r scaling, before projection
    v_norm: float | None = None  # ‖V‖_F of the alignment direction
    v_effective_rank: float | None = None  # participation ratio ‖V‖_F⁴ / ‖VᵀV‖_F²
    isotropic_cos: float | None = None  # the similarity an isotropic ΔW would get: √(PR / out)


@dataclass
class SafeLoRAReport:
    """What :func:`apply_safe_lora` did, module by module."""

    mode: str
    threshold: float | None
    k: int | None
    aligned_model: str
    unaligned_model: str
    modules: list[SafeLoRAModule] = field(default_factory=list)

    @property
    def n_projected(self) -> int:
        return sum(m.projected for m in self.modules)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_modules"] = len(self.modules)
        d["n_projected"] = self.n_projected
        return d


def module_similarity(B: torch.Tensor, A: torch.Tensor, anchor: ModuleAnchor) -> tuple[float | None, float]:
    """``(cos(vec(C ΔW), vec(ΔW)), ‖ΔW‖_F)`` for ΔW = B A, in float64 from thin factors.

    The cosine is None when ΔW = 0; it is 0 when C ΔW = 0 (ΔW orthogonal to the direction).

    >>> import torch
    >>> V = torch.eye(2, dtype=torch.float64); B = torch.ones(2, 1, dtype=torch.float64)
    >>> round(module_similarity(B, torch.ones(1, 3, dtype=torch.float64), ModuleAnchor.from_direction(V))[0], 6)
    1.0
    """
    B, A = B.to(torch.float64), A.to(torch.float64)
    CB = anchor.apply(B)  # (out, r)
    G = A @ A.T  # (r, r)
    dot = float(((CB.T @ B) * G).sum())
    cdw_sq = max(float(((CB.T @ CB) * G).sum()), 0.0)  # clamp: a Gram sum can round below 0
    dw_sq = max(float(((B.T @ B) * G).sum()), 0.0)
    if dw_sq == 0.0:
        return None, 0.0
    if cdw_sq == 0.0:
        return 0.0, math.sqrt(dw_sq)
    return dot / math.sqrt(cdw_sq * dw_sq), math.sqrt(dw_sq)


def direction_stats(V: torch.Tensor) -> tuple[float, float | None, float | None]:
    """``(‖V‖_F, participation ratio, isotropic cosine)`` of an alignment direction ``V`` (out, in)."""
    V = V.to(torch.float64)
    fro2 = float((V * V).sum())
    if fro2 == 0.0:
        return 0.0, None, None
    gram = V.T @ V if V.shape[1] <= V.shape[0] else V @ V.T
    pr = fro2 ** 2 / float((gram * gram).sum())
    return math.sqrt(fro2), pr, math.sqrt(pr / V.shape[0])


def select_modules(similarities: dict[str, float | None], mode: str, threshold: float, k: int,
                   isotropic: dict[str, float | None] | None = None) -> set[str]:
    """Names to project: similarity below ``threshold`` (relative: below ``threshold`` times the
    module's isotropic cosine), or the ``k`` lowest (ties by name)."""
    scored = {n: s for n, s in similarities.items() if s is not None}
    if mode == "threshold":
        return {n for n, s in scored.items() if s < threshold}
    if mode == "relative":
        iso = isotropic or {}
        return {n for n, s in scored.items() if iso.get(n) is not None and s < threshold * iso[n]}
    if mode == "number":
        return {n for n, _ in sorted(scored.items(), key=lambda kv: (kv[1], kv[0]))[:k]}
    raise ValueError(f"safe_lora mode must be one of {', '.join(MODES)}, got {mode!r}")


@torch.no_grad()
def apply_safe_lora(
    peft_model,
    aligned: str | None,
    unaligned: str,
    mode: str = "threshold",
    threshold: float = DEFAULT_THRESHOLD,
    k: int = DEFAULT_K,
    *,
    target_modules: list[str] | None = None,
) -> SafeLoRAReport:
    """Project the LoRA modules of ``peft_model`` in place (B ← C B) and report every module.

    ``aligned``: aligned checkpoint (None = the base weights under the adapter, i.e. the model that
    was fine-tuned); ``unaligned``: the checkpoint before safety alignment. Modules are matched by
    name.

    >>> # model, tok = load_model("embedded:smollm2-135m-safe", adapter="runs/x/adapter")
    >>> # rep = apply_safe_lora(model, None, "embedded:smollm2-135m-instruct", mode="number", k=10)
    >>> # rep.n_projected
    >>> # 10
    """
    check_options(mode, threshold, k)
    modules = lora_modules(peft_model, target_modules)
    if not modules:
        raise ValueError(f"safe_lora: the model has no LoRA module{' matching ' + str(target_modules) if target_modules else ''}")
    adapter = active_adapter(peft_model)
    directions = alignment_directions(peft_model, modules, aligned=aligned, unaligned=unaligned)
    device = next(iter(modules.values())).lora_B[adapter].weight.device
    anchors = build_anchors(directions, device=device, dtype=torch.float32)

    sims: dict[str, float | None] = {}
    norms: dict[str, float] = {}
    stats = {name: direction_stats(directions[name]) for name in modules}
    for name, module in modules.items():
        B, A = lora_factors(module, adapter)
        sims[name], norms[name] = module_similarity(B, A, anchors[name])
    chosen = select_modules(sims, mode, threshold, k, isotropic={n: st[2] for n, st in stats.items()})
    for name in chosen:
        B = modules[name].lora_B[adapter].weight
        B.copy_(anchors[name].apply(B.to(torch.float64)).to(B.dtype))

    report = SafeLoRAReport(
        mode=mode,
        threshold=threshold if mode in ("threshold", "relative") else None,
        k=k if mode == "number" else None,
        aligned_model=aligned or "<base model under the adapter>",
        unaligned_model=unaligned,
        modules=[SafeLoRAModule(n, sims[n], n in chosen, norms[n], *stats[n]) for n in modules],
    )
    log.info("safe_lora: projected %d of %d modules (%s)", report.n_projected, len(modules), mode)
    return report


def check_options(mode: str, threshold: float, k: int) -> None:
    """The projection's options, checked before any model is loaded."""
    if mode not in MODES:
        raise ValueError(f"safe_lora mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "threshold" and not -1.0 <= threshold <= 1.0:
        raise ValueError(f"safe_lora threshold must be a cosine in [-1, 1], got {threshold}")
    if mode == "relative" and not threshold >= 0.0:
        raise ValueError(f"safe_lora relative threshold must be >= 0 (a multiple of the isotropic cosine), got {threshold}")
    if mode == "number" and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
        raise ValueError(f"safe_lora k must be an integer >= 0, got {k!r}")


def check_output(out_dir: str | Path, *, force: bool = False) -> Path:
    """Before any work: ``out_dir`` is free (absent or empty), or holds a finished projection and
    ``force`` replaces it; its parent (where the temp folder is built) is writable."""
    from ..io import claim_output_folder

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not (out / REPORT_FILE).is_file():
            names = sorted(p.name for p in out.iterdir())
            raise FileExistsError(f"{out} holds files that are not a Safe LoRA result ({', '.join(names[:6])}); "
                                  "choose another --out; nothing was changed")
        if not force:
            raise FileExistsError(f"{out} already holds a finished Safe LoRA projection ({REPORT_FILE}); nothing was "
                                  "changed. Choose another --out, or pass --force to replace it")
    claim_output_folder(out.parent, ())
    return out


def save_projected_adapter(peft_model, report: SafeLoRAReport, out_dir: str | Path, *, force: bool = False,
                           **provenance_extra: Any) -> Path:
    """Write the projected adapter and ``safe_lora_report.json`` to ``out_dir`` atomically.

    Everything goes into a sibling temp folder that is renamed to ``out_dir`` at the end, so an
    interrupted run leaves no half-written adapter. ``out_dir`` must be absent or empty, or hold a
    finished projection that ``force`` replaces (only once the new one is complete).
    """
    from ..io import atomic_dir, provenance, write_json

    out = check_output(out_dir, force=force)
    if out.exists() and not any(out.iterdir()):
        out.rmdir()  # empty: the rename needs the name free

    def build(tmp: Path) -> None:
        peft_model.save_pretrained(str(tmp))
        write_json(tmp / REPORT_FILE, {**report.to_dict(), "provenance": provenance(**provenance_extra)})

    atomic_dir(out, build, if_exists="replace" if force else "error")
    return out


@dataclass
class SafeLoRAOptions:
    """Options of Safe LoRA as a method (``regularizer_options: {safe_lora: {...}}``); τ is the
    method's coefficient (``alpha``)."""

    unaligned_model: str | None = field(default=None, metadata={
        "help": "the checkpoint before safety alignment; default: the base_model in the fine-tuned model's "
                "alignment.json (models built by safeanchor align)"})
    aligned_model: str | None = field(default=None, metadata={
        "help": "the aligned checkpoint; default: the base weights under the adapter"})
    mode: str = field(default="threshold", metadata={
        "help": "threshold (project sim < tau), number (the k lowest) or relative (sim < tau x the module's isotropic "
                "cosine sqrt(PR(V)/out); an extension)"})
    k: int = field(default=DEFAULT_K, metadata={"help": "modules to project in number mode"})

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"safe_lora.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 0:
            raise ValueError(f"safe_lora.k must be an integer >= 0, got {self.k!r}")


def options_from_config(config) -> SafeLoRAOptions:
    """The Safe LoRA options of a run config (validated)."""
    return SafeLoRAOptions(**dict((getattr(config, "regularizer_options", None) or {}).get("safe_lora") or {}))


def post_hoc(model, config, out_dir: str | Path) -> dict[str, Any]:
    """Safe LoRA as a method: project the trained adapter (τ = ``config.alpha``), save it over the
    trained one in ``out_dir`` with ``safe_lora_report.json``; returns a summary."""
    from ..io import write_json
    from .weight_direction import unaligned_from_alignment_stage

    opts = options_from_config(config)
    unaligned = opts.unaligned_model or unaligned_from_alignment_stage(model)
    if unaligned is None:
        raise ValueError("safe_lora needs regularizer_options.safe_lora.unaligned_model (the model has no "
                         "alignment.json naming its base model)")
    report = apply_safe_lora(model, opts.aligned_model, unaligned, mode=opts.mode, threshold=float(config.alpha),
                             k=opts.k)
    model.save_pretrained(str(out_dir))  # the projected adapter replaces the trained one
    write_json(Path(out_dir) / REPORT_FILE, report.to_dict())
    return {"safe_lora_projected": report.n_projected, "safe_lora_modules": len(report.modules)}


__all__ = [
    "SafeLoRAModule", "SafeLoRAOptions", "SafeLoRAReport", "apply_safe_lora", "options_from_config", "post_hoc", "module_similarity", "save_projected_adapter",
    "select_modules", "MODES", "REPORT_FILE",
]
