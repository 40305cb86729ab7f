"""``RefusalDirection``: the extracted direction as an artifact (safetensors + JSON sidecar).

``direction.safetensors`` holds, for P positions x L layers x D hidden units:
``unit`` (P, L, D) float32 unit vectors, ``mean_diff`` (P, L, D) float64 raw differences of
means, ``norms`` (P, L) float64, ``harmful_mean`` / ``harmless_mean`` (P, L, D) float64.
``direction.json`` holds the model name and fingerprint, shapes, positions, data sources and
counts, seed, library versions and, once selected, the chosen (layer, position) and all scores.

>>> rd = RefusalDirection.from_pretrained("runs/direction")  # doctest: +SKIP
>>> rd.unit().shape  # (L, D) at the last prompt token       # doctest: +SKIP
torch.Size([30, 576])
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch

from ..io import ArtifactError, load_tensors, provenance, read_json, save_tensors, write_json

TENSORS_FILE = "direction.safetensors"
INFO_FILE = "direction.json"
FORMAT = "safeanchor.refusal_direction/1"


class IncompatibleDirectionError(ValueError):
    """A direction applied to a model it was not extracted from."""


class RefusalDirection:
    """Per-layer (and per-position) refusal directions of one model.

    ``positions`` are offsets from the end of the prompt: ``-1`` is the last prompt token (the
    end of the assistant generation header); ``-5..-1`` are the post-instruction template
    tokens of ChatML.
    """

    def __init__(self, harmful_mean: torch.Tensor, harmless_mean: torch.Tensor, info: dict[str, Any]):
        if harmful_mean.shape != harmless_mean.shape or harmful_mean.ndim != 3:
            raise ValueError(f"means must both be (P, L, D); got {tuple(harmful_mean.shape)} and {tuple(harmless_mean.shape)}")
        positions = list(info.get("positions", []))
        if len(positions) != harmful_mean.shape[0]:
            raise ValueError(f"info['positions'] has {len(positions)} entries for {harmful_mean.shape[0]} positions")
        self.harmful_mean = harmful_mean.to(torch.float64)  # (P, L, D)
        self.harmless_mean = harmless_mean.to(torch.float64)  # (P, L, D)
        self.info = dict(info)

    # ---- shapes and lookup -------------------------------------------------------------------

    @property
    def positions(self) -> list[int]:
        return list(self.info["positions"])

    @property
    def n_layers(self) -> int:
        return self.harmful_mean.shape[1]

    @property
    def layers(self) -> list[int]:
        return list(range(self.n_layers))

    @property
    def hidden_size(self) -> int:
        return self.harmful_mean.shape[2]

    def pos_index(self, pos: int) -> int:
        try:
            return self.positions.index(pos)
        except ValueError:
            raise ValueError(f"position {pos} was not extracted; positions: {self.positions}") from None

    # ---- the vectors -------------------------------------------------------------------------

    @property
    def mean_diff(self) -> torch.Tensor:
        """Raw differences of means, ``(P, L, D)`` float64."""
        return self.harmful_mean - self.harmless_mean

    @property
    def norms(self) -> torch.Tensor:
        """``‖r^(l)‖`` per position and layer, ``(P, L)`` float64."""
        return self.mean_diff.norm(dim=-1)

    def unit(self, layer: int | None = None, pos: int = -1) -> torch.Tensor:
        """Unit direction(s) at ``pos``: ``(L, D)`` float32 for all layers, ``(D,)`` for one.

        A layer whose means coincide (block 0 at a template token: the input is that token's
        embedding, the same for every prompt) has no direction; its row is all zeros.
        """
        d = self.mean_diff[self.pos_index(pos)]  # (L, D)
        n = d.norm(dim=-1, keepdim=True)
        u = torch.where(n > 0, d / n.clamp_min(torch.finfo(torch.float64).tiny), 0.0).to(torch.float32)
        return u if layer is None else u[layer]

    def vector(self, layer: int | None = None, pos: int = -1) -> torch.Tensor:
        """Raw difference of means at ``pos``: ``(L, D)`` or ``(D,)`` float32 (Arditi's actadd vector)."""
        d = self.mean_diff[self.pos_index(pos)].to(torch.float32)
        return d if layer is None else d[layer]

    def harmful_projection(self, layer: int, pos: int = -1) -> float:
        """Mean projection of harmful prompts onto r̂ at ``(layer, pos)``: ``r̂ᵀ μ_harmful``."""
        u = self.unit(layer, pos).to(torch.float64)
        return float(u @ self.harmful_mean[self.pos_index(pos), layer])

    # ---- selection ---------------------------------------------------------------------------

    @property
    def selected(self) -> tuple[int, int] | None:
        """``(layer, pos)`` chosen by Arditi selection, or None."""
        sel = self.info.get("selected")
        return None if not sel else (int(sel["layer"]), int(sel["pos"]))

    def best_layer(self, pos: int = -1) -> int:
        """The selected layer if Arditi selection ran at ``pos``; otherwise a data-free heuristic:
        the largest relative mean difference ``‖r‖ / ‖(μ_h + μ_b)/2‖`` among layers < 0.8·L
        (Arditi's layer filter). Held-out AUROC is not used: it would pick the layer on the
        prompts the steering check then reports on."""
        if self.selected is not None and self.selected[1] == pos:
            return self.selected[0]
        p = self.pos_index(pos)
        mid = (self.harmful_mean[p] + self.harmless_mean[p]) / 2  # (L, D)
        rel = self.norms[p] / mid.norm(dim=-1)  # (L,)
        keep = max(1, int(0.8 * self.n_layers))
        return int(torch.argmax(rel[:keep]))

    # ---- persistence -------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``direction.safetensors`` and ``direction.json`` into ``directory`` (atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        diff = self.mean_diff
        units = torch.stack([self.unit(pos=p) for p in self.positions])  # (P, L, D)
        save_tensors(directory / TENSORS_FILE, {
            "unit": units,
            "mean_diff": diff,
            "norms": self.norms,
            "harmful_mean": self.harmful_mean,
            "harmless_mean": self.harmless_mean,
        }, metadata={"format": FORMAT})
        info = {**self.info, "format": FORMAT, "provenance": provenance()}
        write_json(directory / INFO_FILE, info)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "RefusalDirection":
        """Load what :meth:`save_pretrained` wrote."""
        directory = Path(directory)
        tensors_path, info_path = directory / TENSORS_FILE, directory / INFO_FILE
        for p in (tensors_path, info_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p} not found: {directory} is not a refusal-direction artifact "
                                        "(written by `safeanchor direction`)")
        info = read_json(info_path)
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise ArtifactError(f"{info_path}: unknown format {info.get('format') if isinstance(info, dict) else info!r}, "
                                f"expected {FORMAT!r}")
        missing = [k for k in ("n_layers", "hidden_size", "positions") if k not in info]
        if missing:
            raise ArtifactError(f"{info_path}: missing field(s) {', '.join(missing)} (a damaged or hand-edited file?)")
        t = load_tensors(tensors_path)
        absent = [k for k in ("harmful_mean", "harmless_mean") if k not in t]
        if absent:
            raise ArtifactError(f"{tensors_path}: missing tensor(s) {', '.join(absent)}")
        try:
            rd = cls(t["harmful_mean"], t["harmless_mean"], info)
        except ValueError as e:
            raise ArtifactError(f"{tensors_path}: {e}") from None
        if rd.n_layers != info["n_layers"] or rd.hidden_size != info["hidden_size"]:
            raise ValueError(f"{directory}: tensor shapes {tuple(rd.harmful_mean.shape)} disagree with "
                             f"{INFO_FILE} (n_layers={info['n_layers']}, hidden_size={info['hidden_size']})")
        return rd

    def copy_with(self, **info_updates: Any) -> "RefusalDirection":
        """A copy whose ``info`` has ``info_updates`` merged in (tensors shared)."""
        info = copy.deepcopy(self.info)
        info.update(info_updates)
        return RefusalDirection(self.harmful_mean, self.harmless_mean, info)

    # ---- compatibility -----------------------------------------------------------------------

    def check_shape(self, model) -> None:
        """Raise :class:`IncompatibleDirectionError` unless ``model`` has this direction's layers x hidden size."""
        from ..families import get_blocks

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        n_layers, hidden = len(get_blocks(model)), int(base.config.hidden_size)
        if (n_layers, hidden) != (self.n_layers, self.hidden_size):
            raise IncompatibleDirectionError(
                f"direction has {self.n_layers} layers x {self.hidden_size} hidden units "
                f"(model {self.info.get('model')!r}) but the model has {n_layers} x {hidden}")

    def check_compatible(self, model, *, derivative: bool = False) -> None:
        """Raise if ``model`` is not the model this direction was extracted from.

        A different layer count or hidden size is always an error. A different weight
        fingerprint is an error unless ``derivative=True`` (the model is an intended derivative,
        such as a fine-tuned checkpoint), where it is a warning -- except for a LoRA adapter on the
        direction's own base model (its base fingerprint matches), which is verified and silent; so
        is such an adapter merged into its base, when the merge recorded the base's fingerprint as
        ``model.safeanchor_base_fingerprint`` (see :func:`safeanchor.models.merge_adapter`).
        """
        from ..models import model_fingerprint

        self.check_shape(model)
        fp = model_fingerprint(model)
        if fp != self.info.get("fingerprint"):
            msg = (f"model fingerprint {fp} differs from the direction's {self.info.get('fingerprint')} "
                   f"(extracted from {self.info.get('model')!r})")
            if not derivative:
                raise IncompatibleDirectionError(
                    msg + "; pass derivative=True (CLI: --derivative) if this model is a fine-tuned copy of it")
            if hasattr(model, "peft_config") and model_fingerprint(model, base_only=True) == self.info.get("fingerprint"):
                return  # an adapter on the very base the direction came from: a derivative, verified
            if getattr(model, "safeanchor_base_fingerprint", None) == self.info.get("fingerprint"):
                return  # the same, merged: the base's fingerprint was taken before the merge
            warnings.warn(msg + "; treating the model as a derivative", stacklevel=2)

    def __repr__(self) -> str:
        return (f"RefusalDirection(model={self.info.get('model')!r}, layers={self.n_layers}, "
                f"hidden={self.hidden_size}, positions={self.positions}, selected={self.selected})")
