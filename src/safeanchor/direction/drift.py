"""Refusal-direction drift: re-extract a checkpoint's direction, cosine to the reference per layer, ``drift.json``."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data import Record
from .artifact import RefusalDirection
from .extract import mean_activations, prompts_from_info

ADAPTER_CONFIG = "adapter_config.json"
DRIFT_FILE = "drift.json"
DRIFT_FORMAT = "safeanchor.drift/1"
#: fields every drift.json has (what :func:`drift_report` always writes; :func:`read_drift` checks them)
REQUIRED_FIELDS = ("format", "reference", "reference_model", "reference_fingerprint", "model", "adapter",
                   "fingerprint", "same_weights", "pos", "cos", "undefined_layers", "cos_mean", "cos_min",
                   "cos_argmin", "data", "seconds", "provenance")
#: fields a drift.json may have besides (``by_position=True``; the ``safeanchor drift`` CLI)
OPTIONAL_FIELDS = ("positions", "cos_by_position", "label", "checkpoint")


class DriftFileError(ValueError):
    """A ``drift.json`` that is not a drift report of this schema."""


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

    Re-extracts ``model``'s raw mean difference with exactly the reference's prompts (recorded in
    its ``direction.json``) unless ``harmful`` / ``harmless`` are given. The model must have the
    reference's shape; a different fingerprint is expected (it is a derivative: a warning).

    >>> compute_drift(ref, model, tok)[ref.pos_index(-1)]  # last prompt token, one cosine per layer  # doctest: +SKIP
    """
    reference.check_compatible(model, derivative=True)
    if harmful is None or harmless is None:
        harmful, harmless = reference_prompts(reference)
    diff = extract_mean_diff(model, tokenizer, reference, harmful, harmless, batch_size=batch_size)
    return cosine_per_layer(reference.mean_diff, diff)


def _per_layer(cos: torch.Tensor) -> list[float | None]:
    """One row of cosines as floats, an undefined (non-finite) layer as None."""
    return [float(c) if math.isfinite(float(c)) else None for c in cos]


def drift_report(reference: RefusalDirection, model, tokenizer, *, reference_path: str | Path | None = None,
                 model_name: str | None = None, adapter: str | Path | None = None, pos: int = -1,
                 harmful: Sequence[Record] | None = None, harmless: Sequence[Record] | None = None,
                 batch_size: int | None = None, by_position: bool = False) -> dict[str, Any]:
    """The drift report of ``model`` against ``reference``: the content of one ``drift.json``.

    ``model_name``: what was loaded (default ``model.safeanchor_source``, set by ``load_model``);
    ``adapter``: the LoRA adapter folder on top of it, if any (also when merged). ``pos`` is the
    position reported in ``cos`` (offset from the prompt end; the experiment's -1); with
    ``by_position`` every extracted position is reported as well.

    Schema ``safeanchor.drift/1`` (every field below is always there, :data:`REQUIRED_FIELDS`):

    - ``format``: ``"safeanchor.drift/1"``
    - ``reference``: the reference artifact folder (str, or null for an in-memory reference);
      ``reference_model``, ``reference_fingerprint``: the model it was extracted from
    - ``model``: the model measured (hub id / folder / ``embedded:<name>``; the base under an adapter);
      ``adapter``: the LoRA adapter folder or null; ``fingerprint``: of the weights measured;
      ``same_weights``: ``fingerprint == reference_fingerprint``
    - ``pos``: the position of ``cos``
    - ``cos``: per layer, ``cos(r_ref^(l), r^(l))`` on the raw mean differences (float64 → float), null
      where undefined (non-finite: a layer without a direction on either side, e.g. block 0's input at a
      template token, the same embedding for every prompt); ``undefined_layers``: those layers
    - ``cos_mean``, ``cos_min``, ``cos_argmin``: mean, minimum and the layer of the minimum over the
      defined layers (null when none is defined); the mean is ``sum(defined) / len(defined)``
    - ``data``: the prompts (the reference's ``data`` record, or ``{"harmful": {"source": null, "count": n}, ...}``
      for prompts passed in); ``seconds``: time of the measurement; ``provenance``: library versions

    Optional fields (:data:`OPTIONAL_FIELDS`): ``positions`` and ``cos_by_position``
    (``{str(offset): [per layer]}``, same conventions as ``cos``) with ``by_position=True``;
    ``label`` and ``checkpoint`` (the ``--checkpoint`` as given), added by ``safeanchor drift``.

    >>> report = drift_report(ref, model, tok, reference_path="runs/direction")  # doctest: +SKIP
    >>> write_drift("runs/drift/ckpt-100", report)                                # doctest: +SKIP
    """
    from ..io import provenance
    from ..models import model_fingerprint

    p = reference.pos_index(pos)  # an unknown position fails before the forward passes
    if harmful is None or harmless is None:
        harmful = harmless = None
        data = reference.info.get("data")
    else:
        data = {"harmful": {"source": None, "count": len(harmful)}, "harmless": {"source": None, "count": len(harmless)}}
    t0 = time.perf_counter()
    cos = compute_drift(reference, model, tokenizer, harmful=harmful, harmless=harmless, batch_size=batch_size)  # (P, L)
    seconds = round(time.perf_counter() - t0, 2)
    per_layer = _per_layer(cos[p])
    defined = [c for c in per_layer if c is not None]
    undefined = [l for l, c in enumerate(per_layer) if c is None]
    cos_min = min(defined) if defined else None
    fingerprint = model_fingerprint(model)
    report: dict[str, Any] = {
        "format": DRIFT_FORMAT,
        "reference": None if reference_path is None else str(reference_path),
        "reference_model": reference.info.get("model"),
        "reference_fingerprint": reference.info.get("fingerprint"),
        "model": model_name if model_name is not None else getattr(model, "safeanchor_source", None),
        "adapter": None if adapter is None else str(adapter),
        "fingerprint": fingerprint,
        "same_weights": fingerprint == reference.info.get("fingerprint"),
        "pos": pos,
        "cos": per_layer,
        "undefined_layers": undefined,
        "cos_mean": sum(defined) / len(defined) if defined else None,
        "cos_min": cos_min,
        "cos_argmin": per_layer.index(cos_min) if defined else None,
        "data": data,
        "seconds": seconds,
        "provenance": provenance(),
    }
    if by_position:
        report["positions"] = reference.positions
        report["cos_by_position"] = {str(q): _per_layer(cos[i]) for i, q in enumerate(reference.positions)}
    return report


def check_drift(report: Any, source: str | Path = "drift report") -> dict[str, Any]:
    """Return ``report`` if it is a drift report of this schema, else raise :class:`DriftFileError`
    naming ``source`` and what is wrong (the first missing field, a wrong format, bad ``cos``)."""
    if not isinstance(report, dict):
        raise DriftFileError(f"{source}: not a drift report (a JSON object is expected, got {type(report).__name__})")
    if "format" not in report:
        raise DriftFileError(f"{source}: not a drift report: missing field 'format' (expected {DRIFT_FORMAT!r}; "
                             "files written before the one schema have none: re-run the drift measurement)")
    if report["format"] != DRIFT_FORMAT:
        raise DriftFileError(f"{source}: unknown format {report['format']!r}, expected {DRIFT_FORMAT!r}")
    for name in REQUIRED_FIELDS:
        if name not in report:
            raise DriftFileError(f"{source}: not a valid {DRIFT_FORMAT} drift report: missing field {name!r}")
    cos = report["cos"]
    if not isinstance(cos, list) or not all(c is None or isinstance(c, (int, float)) for c in cos):
        raise DriftFileError(f"{source}: field 'cos' must be a list of numbers or null (one per layer)")
    if report["undefined_layers"] != [l for l, c in enumerate(cos) if c is None]:
        raise DriftFileError(f"{source}: field 'undefined_layers' {report['undefined_layers']} disagrees with "
                             "the null layers of 'cos'")
    return report


def write_drift(folder: str | Path, report: dict[str, Any]) -> Path:
    """Check ``report`` (:func:`check_drift`) and write it as ``folder/drift.json`` (atomically); returns the path."""
    from ..io import write_json

    path = Path(folder) / DRIFT_FILE
    check_drift(report, path)
    write_json(path, report)
    return path


def read_drift(path: str | Path) -> dict[str, Any]:
    """Read a ``drift.json`` (the file, or the folder holding it) and check its schema.

    Raises ``FileNotFoundError`` for a missing file and :class:`DriftFileError` (a ``ValueError``)
    naming the file and the problem: not JSON, wrong ``format``, a missing field.
    """
    path = Path(path)
    if path.is_dir():
        path = path / DRIFT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: no drift report there (written by `safeanchor drift` "
                                "or an experiment's 06_drift stage)")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DriftFileError(f"{path}: not a drift report (not valid JSON: {e})") from None
    return check_drift(report, path)


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


def check_checkpoint_base(ref, model, checkpoint: str, *, allow_mismatch: bool = False) -> str:
    """Was ``checkpoint`` trained from the model ``ref`` was extracted from? Drift is only meaningful
    against the start model's own direction. A LoRA adapter: its base (as loaded) must be the
    direction's model; a full checkpoint saved by ``safeanchor train``: the base it recorded must be.
    Returns ``"verified"`` or ``"unverified"`` (a full checkpoint from elsewhere; a direction saved
    before precision-independent fingerprints were recorded, loaded in another precision; fp16
    against bf16); a mismatch is an ``IncompatibleDirectionError`` unless ``allow_mismatch``."""
    from ..models import base_fingerprints, model_fingerprint, recorded_base_fingerprint, same_base
    from .artifact import IncompatibleDirectionError

    ref_fps = ref.info.get("weights_fingerprints")
    if hasattr(model, "peft_config"):
        if ref_fps:
            ok = same_base(ref_fps, base_fingerprints(model) or {})
        else:  # an older direction: only its exact fingerprint, which includes the dtype
            ok = True if model_fingerprint(model, base_only=True) == ref.info.get("fingerprint") else None
        what = "the base it is loaded on"
    else:
        recorded = recorded_base_fingerprint(checkpoint)
        if recorded is None or not ref_fps:
            return "unverified"
        ok = same_base(recorded[1], ref_fps)
        what = f"the base it was trained on ({recorded[0]})"
    if ok is None:
        return "unverified"
    if not ok and not allow_mismatch:
        raise IncompatibleDirectionError(
            f"{checkpoint}: {what} is not the model the reference direction was extracted from "
            f"({ref.info.get('model')!r}, fingerprint {ref.info.get('fingerprint')}); drift compares a fine-tuned "
            "model with its start model's direction. Use that model's direction, or pass --allow-direction-mismatch "
            "if the weights are the same")
    return "verified" if ok else "mismatch allowed"


def drift_summary(cos: torch.Tensor) -> dict:
    """``{"mean", "min", "argmin"}`` of one row of per-layer cosines, ignoring undefined (NaN) layers
    (the training callback's figures; a drift report has its own ``cos_mean`` / ``cos_min``)."""
    ok = ~torch.isnan(cos)
    vals = cos[ok]
    layers = torch.arange(len(cos))[ok]
    return {"mean": float(vals.mean()), "min": float(vals.min()), "argmin": int(layers[torch.argmin(vals)])}
