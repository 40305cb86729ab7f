"""TRL-native safeanchor: ``SafeSFTConfig`` / ``SafeSFTTrainer``, drop-in for TRL's ``SFTConfig`` /
``SFTTrainer`` in a user's own script. Two changed lines switch a method on::

    from safeanchor import SafeSFTConfig as SFTConfig, SafeSFTTrainer as SFTTrainer
    args = SFTConfig(output_dir="out", method="procon_wu_safe", ...)     # + the method and its options

Everything else is TRL's: dataset formats (conversational ``messages``, prompt–completion),
``completion_only_loss`` / ``assistant_only_loss``, ``peft_config``, logging. The regularizer loop
(scheduled coefficients, the zero-penalty guard, the paper's warm-up restart, checkpointed
regularizer state) is :class:`~safeanchor.train.trainer.RegularizerLoop`, the one ``safeanchor
train`` runs on. Extra numbers (``ce``, ``<reg>/raw``, ``<reg>/coef``, ``<reg>/ratio``) go into TRL's
``_metrics``, averaged and logged the TRL way.

ProCon reads the response tokens' block inputs. TRL's forward (a fused LM head) returns no hidden
states, so they are captured by hooks on the decoder blocks around that forward (the first capture
per block wins; the hooks are gone before the backward, so an activation-checkpointing recompute
never replaces them). The response tokens are TRL's loss tokens (``labels != -100``): ProCon needs
a prompt masked out of the loss (prompt–completion data, or ``assistant_only_loss=True``), and no
packing (its anchors are kept per sample; a packed row mixes samples) -- both checked at setup.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from trl import SFTConfig, SFTTrainer

from ..data import IGNORE_INDEX
from ..hooks import capture_residuals
from .config import ConfigError, MethodSettings, SafeTrainingConfig
from ..distributed import mean_over_ranks
from .trainer import RegularizerLoop

log = logging.getLogger(__name__)

#: the method fields a SafeSFTConfig adds to TRL's SFTConfig (their help and defaults are SafeTrainingConfig's)
METHOD_FIELDS = ("method", "alpha", "alpha_schedule", "alpha_after", "schedule_length", "schedule_unit",
                 "warmup_placement", "regularizer_options", "penalty_when_inactive", "zero_penalty_guard_steps",
                 "safety_samples", "safety_harmful", "safety_refusals", "safety_seed")
_SOURCE_FIELDS = {f.name: f for f in dataclasses.fields(SafeTrainingConfig)}


def _same_field(name: str):
    f = _SOURCE_FIELDS[name]
    if f.default_factory is not dataclasses.MISSING:
        return field(default_factory=f.default_factory, metadata=f.metadata)
    return field(default=f.default, metadata=f.metadata)


@dataclass
class SafeSFTConfig(MethodSettings, SFTConfig):
    """TRL's ``SFTConfig`` plus a safeanchor method (the method table's names: ``procon``,
    ``procon_wu_safe``, ``asft``, ``sft_safe``, ...) and its coefficient, schedule and options, with the
    same names, defaults and validation as ``safeanchor train``'s config."""

    method: str = _same_field("method")
    alpha: float | None = _same_field("alpha")
    alpha_schedule: str | None = _same_field("alpha_schedule")
    alpha_after: float | None = _same_field("alpha_after")
    schedule_length: float | None = _same_field("schedule_length")
    schedule_unit: str | None = _same_field("schedule_unit")
    warmup_placement: str | None = _same_field("warmup_placement")
    regularizer_options: dict = _same_field("regularizer_options")
    penalty_when_inactive: bool = _same_field("penalty_when_inactive")
    zero_penalty_guard_steps: int = _same_field("zero_penalty_guard_steps")
    safety_samples: int = _same_field("safety_samples")
    safety_harmful: str = _same_field("safety_harmful")
    safety_refusals: str = _same_field("safety_refusals")
    safety_seed: int = _same_field("safety_seed")

    def __post_init__(self) -> None:
        self._validate_method()
        kind = self.plan.kind
        if kind in ("none", "post_hoc"):
            raise ConfigError(f"method {self.method!r} ({kind}) is not a training loss: "
                              + ("it trains nothing" if kind == "none" else
                                 "train with sft, then run `safeanchor safe-lora` on the adapter"))
        super().__post_init__()


def safety_rows(args: SafeSFTConfig, columns: list[str], example: dict[str, Any]) -> list[dict[str, Any]]:
    """The method's harmful → refusal samples in the format of the user's dataset (``messages``, or
    ``prompt``/``completion``, conversational or plain text); other columns are left empty."""
    from ..methods.safety_data import safety_records

    records = safety_records(args.safety_samples, harmful=args.safety_harmful, refusals=args.safety_refusals,
                             seed=args.safety_seed)
    rows = []
    for r in records:
        row: dict[str, Any] = {c: None for c in columns}
        if "messages" in columns:
            row["messages"] = [{"role": "user", "content": r.prompt}, {"role": "assistant", "content": r.response}]
        elif "prompt" in columns and "completion" in columns:
            chat = isinstance(example["prompt"], list)
            row["prompt"] = [{"role": "user", "content": r.prompt}] if chat else r.prompt
            row["completion"] = [{"role": "assistant", "content": r.response}] if chat else r.response
        else:
            raise ValueError(f"safety samples need a conversational ('messages') or prompt-completion dataset; "
                             f"this one has columns {columns}")
        rows.append(row)
    return rows


class _WithSampleIdx:
    """TRL's collator, plus the ``sample_idx`` of every example (anchors are keyed by it)."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        idx = torch.tensor([int(e["sample_idx"]) for e in examples], dtype=torch.long)
        batch = self.collator([{k: v for k, v in e.items() if k != "sample_idx"} for e in examples])
        batch["sample_idx"] = idx
        return batch


class SafeSFTTrainer(RegularizerLoop, SFTTrainer):
    """TRL's ``SFTTrainer`` whose loss is TRL's plus the method's scheduled penalties.

    Same constructor as ``SFTTrainer``; ``args`` is a :class:`SafeSFTConfig`. ``regularizers``
    (``{name: (Regularizer, Schedule)}``) replaces the method table's, for custom penalties."""

    def __init__(self, model=None, args: SafeSFTConfig | None = None, data_collator=None, train_dataset=None,
                 *rest, regularizers=None, **kwargs):
        if args is None or not isinstance(args, SafeSFTConfig):
            raise TypeError("SafeSFTTrainer needs args=SafeSFTConfig(...) (TRL's SFTConfig plus the method)")
        if args.plan.safety_data:
            train_dataset = self._with_safety_data(train_dataset, args)
        given = len(train_dataset) if hasattr(train_dataset, "__len__") else None
        super().__init__(model, args, data_collator, train_dataset, *rest, **kwargs)
        if given is not None and len(self.train_dataset) < given:  # TRL drops rows truncation left without loss
            log.warning("%d of %d training examples (safety samples included) have no loss token left after "
                        "truncation to max_length=%s and were dropped by TRL", given - len(self.train_dataset), given,
                        args.max_length)
        if regularizers is None:
            plan = args.plan
            regularizers = {name: (plan.make_regularizer(args), args.schedule()) for name in plan.regularizers}
        self._init_regularizers(regularizers, None, None)
        self._check_hidden_state_use()
        # the sample id travels with every example, through TRL's column filter and collator
        self.train_dataset = self.train_dataset.add_column("sample_idx", list(range(len(self.train_dataset))))
        self.data_collator = _WithSampleIdx(self.data_collator)
        self._response_counts: list[int] | None = None

    @staticmethod
    def _with_safety_data(dataset, args: SafeSFTConfig):
        from datasets import Dataset, concatenate_datasets

        if dataset is None or not isinstance(dataset, Dataset):
            raise ValueError(f"method {args.method} mixes safety samples into train_dataset: pass a datasets.Dataset")
        rows = safety_rows(args, list(dataset.column_names), dataset[0])
        return concatenate_datasets([dataset, Dataset.from_list(rows, features=dataset.features)])

    def _check_hidden_state_use(self) -> None:
        uses = [name for name, (reg, _) in self.regularizers.items() if reg.needs_hidden_states]
        if not uses:
            return
        if self.args.packing or getattr(self, "padding_free", False):
            raise ConfigError(f"{', '.join(uses)} keeps its anchors per training sample, and packing / padding_free "
                              "puts several samples in one row: set packing=False and padding_free=False")
        ds = self.train_dataset
        if "labels" in ds.column_names:
            masked = any(IGNORE_INDEX in row for row in ds["labels"])
        else:
            masked = False
        if not masked:
            raise ConfigError(f"{', '.join(uses)} constrains the response tokens, but every token of this dataset is a "
                              "loss token (no prompt masked out): use prompt-completion data (completion_only_loss) "
                              "or conversational data with assistant_only_loss=True")

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "sample_idx" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "sample_idx"]

    def response_counts(self) -> list[int]:
        if self._response_counts is None:
            self._response_counts = [sum(1 for t in row if t != IGNORE_INDEX) for row in self.train_dataset["labels"]]
        return self._response_counts

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sample_idx = inputs.pop("sample_idx", None)  # never reaches the model
        coefs, active = self.active_regularizers(model.training)
        layers = sorted({l for name, _ in active for l in self._layers_of(self.regularizers[name][0])})
        unwrapped = self.accelerator.unwrap_model(model)
        capture = capture_residuals(unwrapped, layers) if layers else contextlib.nullcontext({})
        with capture as hidden:  # return_outputs only when asked: TRL then recomputes the logits (a second forward)
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
        loss, outputs = result if return_outputs else (result, None)
        # TRL normalises by the tokens of the whole accumulated batch when it knows them (and then Trainer
        # does not divide by the accumulation steps): per-batch penalties are averaged over the steps here
        steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
        batch = {**inputs, "sample_idx": sample_idx}
        loss = self.add_penalties(model, batch, SimpleNamespace(hidden_states=hidden), loss, coefs, active,
                                  scale=1.0 / steps, ce_value=float(loss.detach()) * steps)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # TRL averages ``_metrics`` on each rank and logs rank 0's: our penalties are per-rank values, so
        # they are averaged over ranks first (TRL's own entries are already gathered: equal on every rank)
        mode = "train" if self.model.training else "eval"
        for k, v in mean_over_ranks({k: sum(v) / len(v) for k, v in self._metrics[mode].items() if v}).items():
            self._metrics[mode][k] = [v]
        super().log(logs, start_time)

    @staticmethod
    def _layers_of(reg) -> list[int]:
        if not reg.needs_hidden_states:
            return []
        return list(getattr(reg, "hidden_state_layers", None) or [])


__all__ = ["METHOD_FIELDS", "SafeSFTConfig", "SafeSFTTrainer", "safety_rows"]
