"""``SafeTrainer``: HF ``Trainer`` whose loss is CE + Σ α_k(step) · R_k.

Each regularizer returns an unweighted scalar; the trainer multiplies it by its scheduled
coefficient and logs CE, every raw value and every coefficient separately (TRL style:
accumulated in ``self._metrics``, averaged in :meth:`log`, sent to ``report_to`` and shown in a
rich progress display). Every optimizer step also lands in :attr:`SafeTrainer.step_log`
(``step`` = updates done before the batch: step 0 is the first batch).

Checkpoints additionally hold ``regularizers.safetensors`` (each regularizer's ``state_dict``,
e.g. ProCon's direction and anchor cache) and ``safeanchor_state.json`` (step log, setup
reports); :meth:`train` reloads them on resume. Coefficients need no saving: schedules are
functions of ``(global_step, epoch)``, which ``Trainer`` restores.

>>> # trainer = SafeTrainer(model=m, args=cfg, train_dataset=ds, data_collator=SFTCollator(0),
>>> #                       processing_class=tok, regularizers={"procon": (ProCon(), Schedule(alpha=0.1))})
>>> # trainer.train()
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ..distributed import all_reduce, mean_over_ranks, world_size
from ..io import load_tensors, provenance, read_json, save_tensors, write_json
from ..methods.base import Regularizer, RegularizerSetupError
from ..data.batches import forward_inputs
from ..models import base_fingerprints, model_precision, same_base
from .schedules import Schedule

log = logging.getLogger(__name__)

# A weighted penalty this many times the CE, as the median over the first DOMINANCE_STEPS steps
# after step 0, gets a warning: the task loss then hardly steers the updates (BENCHMARKS.md:
# ProCon_s at lr 2e-3 learned nothing of the task that way).
DOMINANCE_RATIO = 10.0
DOMINANCE_STEPS = 10
REGULARIZER_STATE_FILE = "regularizers.safetensors"
TRAINER_STATE_FILE = "safeanchor_state.json"


class ZeroPenaltyError(RuntimeError):
    """An active safety term (coefficient > 0) returned exactly 0: it is not doing anything."""


@contextlib.contextmanager
def preserved_rng():
    """Run setup work without moving any RNG: a method's setup must not change the training
    randomness (LoRA dropout, shuffling), so α=0 runs stay identical to plain SFT."""
    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])


class RegularizerLoop:
    """The regularizer loop shared by :class:`SafeTrainer` and ``safeanchor.train.trl.SafeSFTTrainer``:
    scheduled coefficients, :meth:`add_penalties` (CE + Σ α_k R_k, metrics, the zero-penalty guard),
    the per-step log, the paper's warm-up learning-rate restart and checkpointed regularizer state.
    A mixin in front of a ``transformers.Trainer`` subclass; the subclass runs the forward."""

    def _init_regularizers(self, regularizers, zero_penalty_guard_steps, penalty_when_inactive) -> None:
        self.regularizers: dict[str, tuple[Regularizer, Schedule]] = dict(regularizers or {})
        for name, (reg, _) in self.regularizers.items():
            if reg.name != name:
                raise ValueError(f"regularizer registered as {name!r} calls itself {reg.name!r}")
        self.guard_steps = _arg(zero_penalty_guard_steps, self.args, "zero_penalty_guard_steps", 3)
        self.penalty_when_inactive = _arg(penalty_when_inactive, self.args, "penalty_when_inactive", False)
        if not hasattr(self, "_metrics"):
            self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._step_acc: dict[str, list[float]] = defaultdict(list)
        self.step_log: list[dict[str, Any]] = []
        self.reports: dict[str, Any] = {}
        self.resuming_from: str | None = None
        self._setup_done = False
        self.dominance_steps = DOMINANCE_STEPS
        # what an adapter saved from this run records of its base (checked when it is loaded, and on resume)
        self.base_fingerprint = base_fingerprints(self.model)
        self.add_callback(_StepRecorder(self))
        if getattr(self.args, "fsdp", None) and not self.is_fsdp_enabled:
            # Trainer drops an FSDP request it cannot honour (e.g. on CPU: accelerate runs plain DDP)
            raise ValueError(f"fsdp={self.args.fsdp!r} was requested, but accelerate runs this job as "
                             f"{self.accelerator.state.distributed_type.value}: FSDP needs accelerator devices "
                             "(GPUs); remove fsdp to train data-parallel without sharding")

    def response_counts(self) -> list[int]:
        """Response (loss) tokens per training sample, in ``sample_idx`` order: the anchor cache's layout."""
        return self.train_dataset.response_counts()

    # ---- setup / resume --------------------------------------------------------------------

    def setup_regularizers(self, resume_from_checkpoint: str | None = None) -> dict[str, Any]:
        """Run every regularizer's ``setup`` once (restoring checkpointed state first)."""
        if self._setup_done:
            return self.reports
        self.resuming_from = resume_from_checkpoint
        if resume_from_checkpoint is not None:
            self._load_safeanchor_state(resume_from_checkpoint)
        with preserved_rng():
            for name, (reg, _) in self.regularizers.items():
                report = reg.setup(self)
                if not report:
                    raise RegularizerSetupError(f"{name}: setup reported nothing attached (no modules, layers or anchors)")
                self.reports[name] = {**dict(report), "zero_at_start": reg.zero_at_start}
        self._setup_done = True
        return self.reports

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no checkpoint found in {self.args.output_dir} to resume from")
        elif resume_from_checkpoint is False:
            resume_from_checkpoint = None
        self.setup_regularizers(resume_from_checkpoint)
        self._link_tensorboard()
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _link_tensorboard(self) -> None:
        """Point drift callbacks at the trainer's TensorBoard callback, so their values land in the
        trainer's run rather than a separate one."""
        from transformers.integrations import TensorBoardCallback

        tb = next((cb for cb in self.callback_handler.callbacks if isinstance(cb, TensorBoardCallback)), None)
        for cb in self.callback_handler.callbacks:
            if hasattr(cb, "tensorboard") and cb.tensorboard is None:
                cb.tensorboard = tb

    # ---- the paper's warm-up: its own learning-rate schedule, then a fresh one ------------------

    def set_initial_training_values(self, args, dataloader, *a, **kw):
        values = super().set_initial_training_values(args, dataloader, *a, **kw)
        self._steps_per_epoch = values[1]  # optimizer updates per epoch (what state.epoch counts in)
        return values

    def warmup_boundary(self, num_training_steps: int) -> int | None:
        """With ``warmup_placement=before``: the number of warm-up updates (the steps whose α is the
        warm-up's), else None. The same rule as the α schedule: step s is in the warm-up while
        s / steps_per_epoch < m (unit epoch) or s < m (unit step)."""
        if not getattr(self.args, "warmup_before", False):
            return None
        m = float(self.args.schedule_length)
        if self.args.schedule_unit == "step":
            b = math.ceil(m - 1e-9)
        else:
            b = math.ceil(m * self._steps_per_epoch - 1e-9)
        if not 0 < b < num_training_steps:
            raise ValueError(f"warmup_placement=before: the warm-up ({b} updates) must be shorter than the run "
                             f"({num_training_steps} updates)")
        return b

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        b = self.warmup_boundary(num_training_steps) if self.lr_scheduler is None else None
        if b is None:
            return super().create_scheduler(num_training_steps, optimizer)
        from torch.optim.lr_scheduler import LambdaLR
        from transformers import get_scheduler

        optimizer = self.optimizer if optimizer is None else optimizer

        def phase(n: int):
            return get_scheduler(self.args.lr_scheduler_type, optimizer=optimizer,
                                 num_warmup_steps=self.args.get_warmup_steps(n), num_training_steps=n,
                                 scheduler_specific_kwargs=self.args.lr_scheduler_kwargs).lr_lambdas
        first, rest = phase(b), phase(num_training_steps - b)
        self.lr_scheduler = LambdaLR(optimizer, [_restart(f, r, b) for f, r in zip(first, rest)])
        self._created_lr_scheduler = True
        self.warmup_updates = b
        return self.lr_scheduler

    # ---- the loss ----------------------------------------------------------------------------

    def coefficients(self) -> dict[str, float]:
        """Each regularizer's coefficient for the batch about to be computed."""
        step, epoch = self.state.global_step, float(self.state.epoch or 0.0)
        return {name: sched(step, epoch, self.state.max_steps) for name, (_, sched) in self.regularizers.items()}

    def active_regularizers(self, training: bool) -> tuple[dict[str, float], list[tuple[str, float]]]:
        """The coefficients for this batch and the regularizers to compute (coefficient > 0, or
        ``penalty_when_inactive`` while training); none outside training."""
        coefs = self.coefficients() if training else {}
        active = [(name, coefs[name]) for name in self.regularizers
                  if coefs[name] > 0 or (training and self.penalty_when_inactive)]
        return coefs, active

    def add_penalties(self, model, batch: dict[str, Any], outputs: Any, ce: torch.Tensor, coefs: dict[str, float],
                      active: list[tuple[str, float]], scale: float = 1.0, ce_value: float | None = None) -> torch.Tensor:
        """``ce + Σ coef_k · scale · R_k`` for the active regularizers, each value checked by the guard and
        recorded (``ce``, ``<reg>/raw``, ``<reg>/coef``, ``<reg>/ratio``). ``batch`` holds ``labels`` and
        ``sample_idx``; ``outputs.hidden_states`` is what the hidden-state regularizers read; ``scale``
        brings the per-batch penalties to the loss's own normalisation (1 when Trainer divides the loss
        by the accumulation steps itself); ``ce_value``, the CE as a per-batch mean for the logs (default
        ``ce``)."""
        training = model.training
        loss = ce
        metrics = {"ce": float(ce.detach()) if ce_value is None else ce_value}
        for name, coef in active:
            reg = self.regularizers[name][0]
            raw = reg(model, batch, outputs)
            self._guard(name, reg, coef, raw if world_size() == 1 else all_reduce(raw.detach().float()))
            if coef > 0:
                loss = loss + (coef * scale) * raw
            metrics[f"{name}/raw"] = float(raw.detach())
            metrics[f"{name}/coef"] = coef
            # the weighted penalty against the task loss: how much of each update the constraint steers
            metrics[f"{name}/ratio"] = coef * metrics[f"{name}/raw"] / metrics["ce"] if metrics["ce"] > 0 else float("nan")
        for name, coef in coefs.items():
            metrics.setdefault(f"{name}/coef", coef)
        if training:
            for k, v in metrics.items():
                self._metrics["train"][k].append(v)
                self._step_acc[k].append(v)
            self._step_acc["loss"].append(float(loss.detach()))
            self._step_acc["learning_rate"].append(self._get_learning_rate())  # the rate this step uses
        return loss

    def _guard(self, name: str, reg: Regularizer, coef: float, raw: torch.Tensor) -> None:
        """Checks one penalty value; under data parallelism ``raw`` is the sum over ranks, so every rank
        decides alike (a check that stopped one rank only would leave the others waiting)."""
        if not torch.isfinite(raw.detach()).all():
            raise FloatingPointError(f"{name}: penalty is {float(raw)} at step {self.state.global_step}")
        step = self.state.global_step
        if step == 0 and reg.zero_at_start:
            self.reports.setdefault(name, {})["step0_raw"] = float(raw.detach())
            if float(raw.detach()) != 0.0:
                log.warning("%s is %.3g at step 0 where it should be exactly 0 (anchors computed with a different "
                            "precision or batch?)", name, float(raw.detach()))
            return
        if coef > 0 and 0 < self.guard_steps and step <= self.guard_steps and float(raw.detach()) == 0.0:
            raise ZeroPenaltyError(
                f"{name}: coefficient {coef:g} but the penalty is exactly 0 at step {step}; a silent safety term is "
                f"a failure (set zero_penalty_guard_steps=0 to disable this check). Setup report: "
                f"{self.reports.get(name)}")

    # ---- logging -------------------------------------------------------------------------------

    def _flush_step(self) -> None:
        """One ``step_log`` row per optimizer step: micro-batch values averaged."""
        if not self._step_acc:
            return
        row: dict[str, Any] = {"step": self.state.global_step - 1, "epoch": self.state.epoch}
        row.update(mean_over_ranks({k: sum(v) / len(v) for k, v in self._step_acc.items()}))  # ranks averaged
        self.step_log.append(row)
        self._step_acc.clear()
        if row["step"] == self.dominance_steps:
            self._warn_if_dominant()

    def _warn_if_dominant(self) -> None:
        """Warn once when a weighted penalty dwarfs the cross-entropy over steps 1..dominance_steps."""
        rows = [r for r in self.step_log if 1 <= r["step"] <= self.dominance_steps and r.get("ce", 0) > 0]
        for name in self.regularizers:
            ratios = sorted(r.get(f"{name}/coef", 0.0) * r.get(f"{name}/raw", 0.0) / r["ce"] for r in rows)
            if not ratios:
                continue
            median = ratios[len(ratios) // 2]
            if median > DOMINANCE_RATIO:
                self.reports.setdefault(name, {})["dominance_ratio"] = median
                log.warning("%s: coefficient x penalty is %.0fx the cross-entropy (median of steps 1-%d): the task "
                            "loss hardly steers the updates and the task may not be learned. Consider a smaller "
                            "coefficient, a warm-up schedule, or a mean reduction.", name, median, self.dominance_steps)

    # ---- checkpoints ---------------------------------------------------------------------------

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save and folder.is_dir():
            self.save_safeanchor_state(folder)

    def save_safeanchor_state(self, folder: str | Path) -> None:
        """Regularizer state (safetensors) and step log + reports (JSON) into ``folder``."""
        folder = Path(folder)
        tensors = {f"{name}.{k}": v for name, (reg, _) in self.regularizers.items()
                   for k, v in reg.state_dict().items()}
        if tensors:
            save_tensors(folder / REGULARIZER_STATE_FILE, tensors,
                         metadata={"regularizers": ",".join(self.regularizers)})
        state = {"global_step": self.state.global_step, "step_log": self.step_log, "reports": self.reports,
                 "world_size": self.args.world_size, "base_fingerprint": self.base_fingerprint,
                 "provenance": provenance()}
        if hasattr(self.args, "to_yaml_dict"):  # what a resume from here must match: settings + data content
            from .config import run_identity

            state["run_config"] = run_identity(self.args)
        write_json(folder / TRAINER_STATE_FILE, state)

    def _load_safeanchor_state(self, checkpoint: str) -> None:
        folder = Path(checkpoint)
        if hasattr(self.args, "to_yaml_dict"):
            check_resumable(folder, self.args, self.base_fingerprint)
        if (folder / REGULARIZER_STATE_FILE).is_file():
            tensors = load_tensors(folder / REGULARIZER_STATE_FILE)
            for name, (reg, _) in self.regularizers.items():
                prefix = f"{name}."
                state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
                if state:
                    reg.load_state_dict(state)
        if (folder / TRAINER_STATE_FILE).is_file():
            saved = read_json(folder / TRAINER_STATE_FILE)
            self.step_log = [row for row in saved.get("step_log", []) if row["step"] < saved["global_step"]]


def resume_differences(checkpoint: str | Path, args, base_fingerprint: dict[str, str] | None = None) -> list[str]:
    """What differs between the run that wrote ``checkpoint`` and the run ``args`` describes: every
    result setting and data file (:func:`~safeanchor.train.config.setting_differences`), the world
    size (the global batch and the data shards), and the base weights when ``base_fingerprint`` is
    given. Empty for a checkpoint without safeanchor's state file (written elsewhere)."""
    from .config import run_identity, setting_differences

    state_file = Path(checkpoint) / TRAINER_STATE_FILE
    if not state_file.is_file():
        return []
    state = read_json(state_file)
    saved = state.get("run_config")
    diffs = setting_differences(saved, run_identity(args)) if saved else []
    if state.get("world_size", 1) != args.world_size:
        diffs.append(f"world_size: {state.get('world_size', 1)} there, {args.world_size} here")
    there = state.get("base_fingerprint")
    if there and base_fingerprint and same_base(there, base_fingerprint) is False:  # same name, other weights
        shown = there if isinstance(there, str) else there.get("bf16")
        diffs.append(f"base weights fingerprint: {shown} there, {base_fingerprint['bf16']} here")
    return diffs


def check_resumable(checkpoint: str | Path, args, base_fingerprint: dict[str, str] | None = None) -> None:
    """:class:`~safeanchor.configfile.ConfigError` naming every difference when ``checkpoint`` was
    trained with other settings, data or base weights than ``args`` (:func:`resume_differences`)."""
    from ..configfile import ConfigError

    diffs = resume_differences(checkpoint, args, base_fingerprint)
    if diffs:
        raise ConfigError(f"cannot resume from {checkpoint}: it was trained with other settings "
                          f"({'; '.join(diffs)}); resume with the same settings or start a new output_dir")


class SafeTrainer(RegularizerLoop, Trainer):
    """``Trainer`` + regularizers with coefficient schedules, metrics, a zero-penalty guard and
    checkpointed regularizer state (safeanchor's own data: :class:`~safeanchor.data.SFTCollator` batches)."""

    def __init__(self, *args, regularizers: Mapping[str, tuple[Regularizer, Schedule]] | None = None,
                 zero_penalty_guard_steps: int | None = None, penalty_when_inactive: bool | None = None,
                 progress: bool | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # Each micro-batch loss is a per-batch mean that Trainer divides by the accumulation steps;
        # regularizers are per-batch values too, so both scale the same way under accumulation.
        self.model_accepts_loss_kwargs = False
        self._init_regularizers(regularizers, zero_penalty_guard_steps, penalty_when_inactive)
        # HF prints a dict per log line (or a tqdm bar); the rich display replaces both, or nothing does.
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        self.remove_callback(PrinterCallback)
        self.remove_callback(ProgressCallback)
        if _arg(progress, self.args, "progress", False):
            self.add_callback(RichProgress())

    def autocast_smart_context_manager(self, cache_enabled: bool | None = True):
        # The model's own precision (CPU: fp32; GPU: bf16 weights; or a forced autocast), so the forward of
        # training and of any anchor pass run in exactly the same arithmetic.
        return model_precision(self.model).autocast_context(self.args.device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sample_idx = inputs.pop("sample_idx", None)  # never reaches the model
        labels = inputs["labels"]
        coefs, active = self.active_regularizers(model.training)
        need_hs = any(self.regularizers[name][0].needs_hidden_states for name, _ in active)
        outputs = model(**forward_inputs(inputs), labels=labels, output_hidden_states=need_hs)
        loss = self.add_penalties(model, {**inputs, "sample_idx": sample_idx}, outputs, outputs.loss, coefs, active)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = mean_over_ranks({k: sum(v) / len(v) for k, v in self._metrics[mode].items() if v})
        if mode == "eval":
            metrics = {f"eval_{k}": v for k, v in metrics.items()}
        logs = {**logs, **metrics}
        super().log(logs, start_time)
        self._metrics[mode].clear()


def _restart(first, rest, boundary: int):
    """A learning-rate factor in two phases: ``first`` for the warm-up's ``boundary`` updates, then
    ``rest`` from its own step 0 (the standard run's fresh schedule). A plain function, so the
    scheduler's checkpoint holds only its step count (LambdaLR saves callable objects' state)."""

    def factor(step: int) -> float:
        return first(step) if step < boundary else rest(step - boundary)

    return factor


def _arg(explicit, args, name: str, default):
    return explicit if explicit is not None else getattr(args, name, default)


class _StepRecorder(TrainerCallback):
    def __init__(self, trainer: SafeTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._flush_step()


class RichProgress(TrainerCallback):
    """Terminal display: a progress bar plus the last logged CE, penalties and coefficients."""

    def __init__(self):
        self._progress = None
        self._task = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[metrics]}"))
        self._progress.start()
        self._task = self._progress.add_task("train", total=state.max_steps, completed=state.global_step, metrics="")

    def on_step_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._progress is None or not logs:
            return
        shown = {k: v for k, v in logs.items() if k in ("loss", "ce") or k.endswith("/raw") or k.endswith("/coef")}
        self._progress.update(self._task, metrics="  ".join(f"{k} {v:.4g}" for k, v in shown.items()))

    def on_train_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


__all__ = ["REGULARIZER_STATE_FILE", "TRAINER_STATE_FILE", "RichProgress", "SafeTrainer", "ZeroPenaltyError",
           "check_resumable", "preserved_rng", "resume_differences"]
