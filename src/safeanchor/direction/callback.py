"""Drift of the refusal direction *during* training, as a ``transformers.TrainerCallback``.

Every ``every_n_steps`` optimizer steps the callback re-extracts the direction from the model
being trained on a small fixed prompt subset (the first N of a reference artifact's prompts,
or of two named sources; default ``bundled:*:val``) and logs, per layer, its cosine to the
anchor direction: ``drift/cos_mean``, ``drift/cos_min`` and ``drift/layer_XX``.

The anchor is the *original* model's direction on the *same* subset (ProCon compares with the
same prompts): for a PEFT model it is extracted with the adapters disabled, otherwise from the
model at the start of training. A 32 + 32 subset direction is a noisy estimate of a
reference's 128 + 128 one; comparing with the reference artifact directly would show that
noise as drift, so that comparison is recorded once instead (``anchor_vs_reference``).

Values go to ``state.log_history`` (the trainer's log and ``trainer_state.json``), to TensorBoard
when ``report_to`` includes tensorboard (an event file in the trainer's own run folder when the
trainer links its TensorBoard callback, as ``SafeTrainer`` does; else ``<output_dir>/runs/drift``)
and to ``<output_dir>/drift_history.json``.

>>> cb = DriftCallback("runs/direction", every_n_steps=50, n_prompts=32)  # doctest: +SKIP
>>> cb = DriftCallback(harmful="bundled:harmful:val", harmless="bundled:harmless:val")  # doctest: +SKIP
>>> trainer.add_callback(cb)                                              # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from ..data import Record, load_source
from ..io import write_json
from .artifact import RefusalDirection
from .drift import cosine_per_layer, drift_summary, reference_prompts
from .extract import mean_activations

log = logging.getLogger(__name__)

HISTORY_FILE = "drift_history.json"
DEFAULT_HARMFUL = "bundled:harmful:val"
DEFAULT_HARMLESS = "bundled:harmless:val"


def _nan_to_none(values: torch.Tensor) -> list[float | None]:
    return [None if v != v else v for v in values.tolist()]


class DriftCallback(TrainerCallback):
    """Log the per-layer cosine of the refusal direction to its original value every N steps.

    ``reference``: optional :class:`RefusalDirection` (or its folder); when given, its prompts
    (the first ``n_prompts`` of each class) and positions are used and the shape is checked.
    Without it, or to override, ``harmful`` / ``harmless`` name the prompt sources (first
    ``n_prompts`` of each) and the last prompt token is used. ``pos``: which position to report.
    ``output_dir``: where ``drift_history.json`` goes (default the trainer's ``output_dir``).
    """

    def __init__(self, reference: RefusalDirection | str | Path | None = None, tokenizer=None, *,
                 harmful: str | None = None, harmless: str | None = None, every_n_steps: int = 50,
                 n_prompts: int = 32, batch_size: int = 16, pos: int = -1, output_dir: str | Path | None = None):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if n_prompts < 1:
            raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
        if isinstance(reference, (str, Path)):
            reference = RefusalDirection.from_pretrained(reference)
        self.reference = reference
        if reference is None and (harmful is None or harmless is None):
            harmful, harmless = harmful or DEFAULT_HARMFUL, harmless or DEFAULT_HARMLESS
        self.sources = (harmful, harmless)
        self.offsets = reference.positions if reference is not None else [-1]
        if pos not in self.offsets:
            raise ValueError(f"pos {pos} is not among the positions {self.offsets}")
        self.pos = pos
        self.tokenizer = tokenizer
        self.every_n_steps = every_n_steps
        self.n_prompts = n_prompts
        self.batch_size = batch_size
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.history: list[dict[str, Any]] = []
        self._anchor: torch.Tensor | None = None  # (P, L, D) float64
        self._prompts: tuple[list[Record], list[Record]] | None = None
        self._writer = None
        self._info: dict[str, Any] = {}
        # the trainer's TensorBoardCallback, when there is one (SafeTrainer links it): drift values
        # are then written into the same run folder, so TensorBoard shows them in the same run
        self.tensorboard: TrainerCallback | None = None

    @classmethod
    def from_config(cls, config, model=None, tokenizer=None) -> "DriftCallback":
        """Build from a training config's ``drift_*`` fields (``drift_every_steps``, ``drift_harmful``,
        ``drift_harmless``, ``drift_samples``) and its ``output_dir``."""
        return cls(tokenizer=tokenizer, harmful=config.drift_harmful, harmless=config.drift_harmless,
                   every_n_steps=config.drift_every_steps, n_prompts=config.drift_samples,
                   output_dir=config.output_dir)

    # ---- measuring ---------------------------------------------------------------------------

    def _load_prompts(self) -> tuple[list[Record], list[Record]]:
        harmful_src, harmless_src = self.sources
        if harmful_src is None:  # only reachable with a reference: its own recorded prompts
            return reference_prompts(self.reference, limit=self.n_prompts)
        return (load_source(harmful_src, limit=self.n_prompts), load_source(harmless_src, limit=self.n_prompts))

    def _mean_diff(self, model) -> torch.Tensor:
        # eval mode: no dropout in the measurement; the caller's mode is restored after
        was_training = model.training
        model.eval()
        try:
            harmful, harmless = self._prompts
            kw = dict(offsets=self.offsets, batch_size=self.batch_size)
            return (mean_activations(model, self.tokenizer, harmful, **kw)
                    - mean_activations(model, self.tokenizer, harmless, **kw))  # (P, L, D)
        finally:
            model.train(was_training)

    def measure(self, model, step: int) -> dict[str, float]:
        """Cosines of ``model``'s direction to the anchor; appended to :attr:`history`."""
        cos = cosine_per_layer(self._anchor, self._mean_diff(model))[self.offsets.index(self.pos)]  # (L,)
        summary = drift_summary(cos)
        metrics = {"drift/cos_mean": summary["mean"], "drift/cos_min": summary["min"]}
        metrics.update({f"drift/layer_{l:02d}": c for l, c in enumerate(cos.tolist()) if c == c})
        self.history.append({"step": step, "cos_mean": summary["mean"], "cos_min": summary["min"],
                             "argmin_layer": summary["argmin"], "cos": _nan_to_none(cos)})
        return metrics

    # ---- trainer events ----------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self.tokenizer = self.tokenizer or processing_class
        if self.tokenizer is None:
            raise ValueError("DriftCallback needs a tokenizer: pass tokenizer= or give the Trainer a processing_class")
        if self.output_dir is None:
            self.output_dir = Path(args.output_dir)
        if self.reference is not None:
            self.reference.check_shape(model)  # a fresh LoRA changes the fingerprint by design: shape only
        self._prompts = self._load_prompts()
        disable = getattr(model, "disable_adapter", None)
        with disable() if disable is not None else contextlib.nullcontext():
            self._anchor = self._mean_diff(model)
        self._info = {
            "anchor": "original weights (adapters disabled)" if disable is not None else "model at train begin",
            "prompts": {"harmful": self.sources[0] or "reference", "harmless": self.sources[1] or "reference",
                        "n_harmful": len(self._prompts[0]), "n_harmless": len(self._prompts[1])},
            "pos": self.pos,
            "every_n_steps": self.every_n_steps,
        }
        if self.reference is not None:
            anchor_vs_ref = cosine_per_layer(self.reference.mean_diff, self._anchor)[self.offsets.index(self.pos)]
            self._info.update(reference_model=self.reference.info.get("model"),
                              anchor_vs_reference=_nan_to_none(anchor_vs_ref))
        if state.is_world_process_zero and "tensorboard" in (args.report_to or []):
            from torch.utils.tensorboard import SummaryWriter

            run_dir = getattr(self.tensorboard, "logging_dir", None) or os.path.join(args.output_dir, "runs", "drift")
            self._writer = SummaryWriter(log_dir=run_dir)
        self._record(args, state, self.measure(model, state.global_step))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every_n_steps == 0:
            self._record(args, state, self.measure(model, state.global_step))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self.history or self.history[-1]["step"] != state.global_step:
            self._record(args, state, self.measure(model, state.global_step))
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ---- plumbing ----------------------------------------------------------------------------

    def _record(self, args, state, metrics: dict[str, float]) -> None:
        state.log_history.append({**metrics, "step": state.global_step})
        if self._writer is not None:
            for k, v in metrics.items():
                self._writer.add_scalar(k, v, state.global_step)
            self._writer.flush()
        if state.is_world_process_zero:
            write_json(self.output_dir / HISTORY_FILE, {**self._info, "history": self.history})
        log.info("step %d: drift cos mean %.4f, min %.4f", state.global_step,
                 metrics["drift/cos_mean"], metrics["drift/cos_min"])
