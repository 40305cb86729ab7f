"""The alignment direction shared by AsFT and Safe LoRA (METHODS.md §3-§4).

For every LoRA target module, V = W_aligned - W_unaligned (shape ``(out, in)``, like ΔW) and
C = V Vᵀ / ‖V‖_F (Frobenius norm, *not* squared; C is not idempotent). Both methods only ever
need ``C M`` for a thin matrix M (a LoRA ``B`` of shape ``(out, r)``), which costs two thin
matmuls: ``C M = V (Vᵀ M) / ‖V‖_F``. The out×out C is never formed.

The named extension ``rank=k`` replaces C by the true projector P = U_k U_kᵀ onto the top-k left
singular vectors of V (same thin form: ``P M = U_k (U_kᵀ M)``).

Modules are matched by *name* (``model.layers.3.self_attn.q_proj``, the name inside the base
model, which is also the checkpoint key without ``.weight``), never by position. Weights are read
from the checkpoints' safetensors files tensor by tensor, so neither the aligned nor the
unaligned model is ever built; other formats fall back to loading the model on CPU.

>>> import torch
>>> V = torch.randn(6, 4, dtype=torch.float64); B = torch.randn(6, 2, dtype=torch.float64)
>>> anchor = ModuleAnchor.from_direction(V)
>>> torch.allclose(anchor.apply(B), V @ V.T @ B / torch.linalg.norm(V))
True
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch

SAFETENSORS_INDEX = "model.safetensors.index.json"


class AlignmentDirectionError(ValueError):
    """The aligned/unaligned checkpoints do not provide a direction for the requested modules."""


# ---------------------------------------------------------------------------------------------
# LoRA modules by name
# ---------------------------------------------------------------------------------------------


def lora_modules(model, target_modules: Iterable[str] | None = None) -> dict[str, torch.nn.Module]:
    """LoRA layers of a PEFT model, keyed by their name inside the base model.

    ``target_modules``: keep only modules whose last name component is listed (``q_proj``) or
    whose full name is listed. The keys equal the checkpoint keys without ``.weight``.

    >>> # lora_modules(peft_model, ["q_proj", "v_proj"])
    >>> # -> {'model.layers.0.self_attn.q_proj': <lora.Linear>, 'model.layers.0.self_attn.v_proj': ...}
    """
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    wanted = set(target_modules) if target_modules is not None else None
    out: dict[str, torch.nn.Module] = {}
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if wanted is not None and name not in wanted and name.rsplit(".", 1)[-1] not in wanted:
            continue
        if not isinstance(module.get_base_layer(), torch.nn.Linear) and not getattr(module, "fan_in_fan_out", False):
            raise AlignmentDirectionError(
                f"{name}: LoRA on {type(module.get_base_layer()).__name__} is not supported; "
                "the alignment direction needs Linear (or Conv1D) target modules"
            )
        out[name] = module
    return out


def active_adapter(model) -> str:
    """Name of the single active adapter of a PEFT model."""
    name = getattr(model, "active_adapter", "default")
    if isinstance(name, (list, tuple)):
        if len(name) != 1:
            raise ValueError(f"expected one active adapter, got {list(name)}")
        name = name[0]
    return name


def lora_factors(module, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B (out, r), A (r, in))`` of one LoRA layer, oriented like the base weight ``(out, in)``.

    Conv1D layers (``fan_in_fan_out``) store ``(in, out)`` weights; their ΔW is ``(BA)ᵀ``, and V
    is transposed once at setup instead (:func:`alignment_directions`), so factors stay as is.
    """
    return module.lora_B[adapter].weight, module.lora_A[adapter].weight


# ---------------------------------------------------------------------------------------------
# Reading weights by name
# ---------------------------------------------------------------------------------------------


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return sorted({folder / f for f in weight_map.values()})
    return sorted(folder.glob("*.safetensors"))


def _read_from_files(folder: Path, keys: set[str]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    found: dict[str, torch.Tensor] = {}
    for file in _safetensors_files(folder):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for key in keys.intersection(f.keys()):
                found[key] = f.get_tensor(key)
    return found


def _read_by_loading(path: str, gguf: str | None, keys: set[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    from transformers import AutoModelForCausalLM

    kw: dict = {"dtype": torch.float32, "output_loading_info": True}
    if gguf:
        kw["gguf_file"] = gguf
    model, info = AutoModelForCausalLM.from_pretrained(path, **kw)
    # weights the checkpoint lacked were randomly initialised: they are no direction
    absent = set(info.get("missing_keys", ()))
    sd = model.state_dict()
    found = {k: sd[k].detach().clone() for k in keys if k in sd and k not in absent}
    available = sorted(k for k in sd if k not in absent)
    del model, sd
    return found, available


def read_module_weights(spec: str, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Weights ``<name>.weight`` of a checkpoint, read by name (CPU tensors, stored dtype).

    ``spec`` is anything :func:`safeanchor.models.load_model` accepts. A local folder with
    safetensors is read tensor by tensor (no model is built); other formats (GGUF, a hub id in the
    HF cache) are loaded on CPU once. Missing names raise :class:`AlignmentDirectionError` listing
    them and some names the checkpoint does have.

    >>> # w = read_module_weights("embedded:smollm2-135m-instruct", ["model.layers.0.self_attn.q_proj"])
    """
    from ..models import resolve_model_path

    names = list(names)
    keys = {f"{n}.weight" for n in names}
    path, gguf = resolve_model_path(spec)
    files = _safetensors_files(Path(path)) if gguf is None and Path(path).is_dir() else []
    if files:
        found = _read_from_files(Path(path), keys)
    else:
        found, available = _read_by_loading(path, gguf, keys)
    missing = sorted(k[: -len(".weight")] for k in keys - set(found))
    if missing:
        if files:
            available = sorted(_file_keys(files))
        raise AlignmentDirectionError(
            f"{spec}: no weights for {len(missing)} of {len(names)} LoRA module(s): "
            f"{missing[:10]}{' ...' if len(missing) > 10 else ''}; the checkpoint has e.g. {available[:5]}. "
            "Modules are matched by name: aligned, unaligned and fine-tuned models must use the same "
            "module names."
        )
    return {k[: -len(".weight")]: v for k, v in found.items()}


def _file_keys(files: list[Path]) -> set[str]:
    from safetensors import safe_open

    keys: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            keys.update(f.keys())
    return keys


def alignment_directions(
    model,
    modules: Mapping[str, torch.nn.Module],
    *,
    aligned: str | None,
    unaligned: str,
) -> dict[str, torch.Tensor]:
    """V = W_aligned - W_unaligned for each named LoRA module, float32 on CPU, shape ``(out, in)``.

    ``aligned=None`` means the model being fine-tuned: its frozen base weights (LoRA never
    changes them), so nothing is read from disk for that side.
    """
    names = list(modules)
    unaligned_w = read_module_weights(unaligned, names)
    if aligned is None:
        aligned_w = {n: m.get_base_layer().weight.detach().to("cpu") for n, m in modules.items()}
    else:
        aligned_w = read_module_weights(aligned, names)
    out: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        a, u = aligned_w[name], unaligned_w[name]
        expected = tuple(module.get_base_layer().weight.shape)
        if tuple(a.shape) != expected or tuple(u.shape) != expected:
            raise AlignmentDirectionError(
                f"{name}: aligned weight {tuple(a.shape)} / unaligned weight {tuple(u.shape)} do not match "
                f"the fine-tuned model's {expected}"
            )
        V = a.to(torch.float32) - u.to(torch.float32)  # (out, in)
        if getattr(module, "fan_in_fan_out", False):
            V = V.T  # Conv1D stores (in, out); ΔW is oriented (out, in)
        if not torch.isfinite(V).all():
            raise AlignmentDirectionError(f"{name}: the alignment direction has non-finite values")
        out[name] = V
    return out


# ---------------------------------------------------------------------------------------------
# The thin operator C M (or P_k M)
# ---------------------------------------------------------------------------------------------


@dataclass
class ModuleAnchor:
    """``apply(M) = scale * basis @ (basisᵀ @ M)``: C M with basis=V, scale=1/‖V‖_F, or the
    rank-k projector P_k M with basis=U_k, scale=1. Never forms an out×out matrix.

    A zero direction (aligned == unaligned for that module) gives C = 0: the whole ΔW counts as
    off-direction, which is the limit of the definition; :attr:`is_zero` lets callers report it.
    """

    basis: torch.Tensor  # (out, in) for C, (out, k) for P_k
    scale: float
    norm: float  # ‖V‖_F, for reports
    rank: int | None = None

    @classmethod
    def from_direction(cls, V: torch.Tensor, rank: int | None = None) -> "ModuleAnchor":
        norm = float(torch.linalg.matrix_norm(V.to(torch.float64)))  # Frobenius
        if rank is None:
            return cls(V, 1.0 / norm if norm > 0 else 0.0, norm)
        max_rank = min(V.shape)
        if not 1 <= rank <= max_rank:
            raise ValueError(f"rank must be in 1..{max_rank} for a {tuple(V.shape)} direction, got {rank}")
        # SVD in float64 when V is on CPU (cheap at these sizes); on GPU float32 is accurate enough
        work = V.to(torch.float64) if V.device.type == "cpu" else V.to(torch.float32)
        U, S, _ = torch.linalg.svd(work, full_matrices=False)  # U: (out, min(out, in))
        U_k = U[:, :rank].to(V.dtype) if norm > 0 else torch.zeros_like(U[:, :rank], dtype=V.dtype)
        return cls(U_k.contiguous(), 1.0, norm, rank)

    @property
    def is_zero(self) -> bool:
        return self.norm == 0.0

    def to(self, device: torch.device | str, dtype: torch.dtype) -> "ModuleAnchor":
        return ModuleAnchor(self.basis.to(device=device, dtype=dtype), self.scale, self.norm, self.rank)

    def apply(self, M: torch.Tensor) -> torch.Tensor:
        """C M (or P_k M) for a thin ``M`` of shape ``(out, r)``; result ``(out, r)``."""
        basis = self.basis.to(M.dtype)
        return (basis @ (basis.T @ M)) * self.scale  # (out, in)@(in, r) -> (out, r)


def build_anchors(
    directions: Mapping[str, torch.Tensor],
    *,
    rank: int | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, ModuleAnchor]:
    """One :class:`ModuleAnchor` per module, moved once to ``device``/``dtype``.

    Raises :class:`AlignmentDirectionError` if every direction is zero (aligned == unaligned):
    there would be nothing to anchor to.
    """
    anchors = {n: ModuleAnchor.from_direction(V, rank).to(device, dtype) for n, V in directions.items()}
    if anchors and all(a.is_zero for a in anchors.values()):
        raise AlignmentDirectionError(
            "the aligned and unaligned weights are identical in every target module: the alignment "
            "direction is zero (did you pass the same model twice?)"
        )
    return anchors


def unaligned_from_alignment_stage(model) -> str | None:
    """The base model recorded in ``alignment.json`` when ``model`` was built by ``safeanchor align``.

    That file names the exact pair (aligned = this model, unaligned = its base), so fine-tuning
    ``embedded:smollm2-135m-safe`` needs no ``unaligned_model`` option.
    """
    from ..models import build_info, resolve_model_path

    source = getattr(model, "safeanchor_source", None)
    if source is None and hasattr(model, "get_base_model"):
        source = getattr(model.get_base_model(), "safeanchor_source", None)
    if not source:
        return None
    path, gguf = resolve_model_path(source)
    info = None if gguf is not None else build_info(path)
    return info.get("base_model") if info else None


__all__ = [
    "AlignmentDirectionError", "ModuleAnchor", "active_adapter", "alignment_directions", "build_anchors",
    "lora_factors", "lora_modules", "read_module_weights", "unaligned_from_alignment_stage",
]
