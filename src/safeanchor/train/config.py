"""``SafeTrainingConfig``: everything a training run needs, as one validated dataclass.

It extends ``transformers.TrainingArguments`` (batch size, epochs, learning rate, checkpoints,
``report_to`` ... keep their HF meaning) with the model, the data, the method and its
coefficient schedule, LoRA and monitoring. YAML files hold overrides only; unknown keys are
errors naming the key and the file.

>>> cfg = SafeTrainingConfig(method="procon", alpha=2.0, alpha_schedule="warmup", schedule_length=4,
...                          output_dir="runs/x", report_to="none")
>>> cfg.schedule()(step=0, epoch=5.0)
0.0
>>> SafeTrainingConfig(method="procon_wu_safe", output_dir="runs/x", report_to="none").alpha  # resolved once
1.0
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Sequence

from transformers import TrainingArguments

from ..configfile import (ConfigError, check_annotated, check_keys, error_key, field_types, located_error,
                          matches_type, read_mapping)
from .schedules import SCHEDULES, UNITS, Schedule

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PADDING_SIDES = ("right", "left")
PLACEMENTS = ("before", "inside")
SEED_MAX = 2**32 - 1  # numpy's seed range (transformers.set_seed seeds numpy too)

# Fields whose annotation in TrainingArguments is narrower than what it accepts (a resume flag is
# `true` or a path; fsdp a string, a list or true; deepspeed a path or a dict): the annotation the
# type check uses instead.
TYPE_OVERRIDES: dict[str, Any] = {"resume_from_checkpoint": str | bool | None, "fsdp": str | bool | list[str] | None,
                                  "deepspeed": str | dict | None, "report_to": str | list[str] | None,
                                  "fsdp_config": str | dict | None}


class MethodSettings:
    """The method part of a training config, shared by :class:`SafeTrainingConfig` and
    ``safeanchor.train.trl.SafeSFTConfig``: the method's coefficient and schedule resolved once,
    the components' options validated, the warm-up placement checked. Needs the fields ``method``,
    ``alpha``, ``alpha_schedule``, ``alpha_after``, ``schedule_length``, ``schedule_unit``,
    ``warmup_placement``, ``regularizer_options``, ``safety_samples`` (and TrainingArguments')."""

    #: the fields this part of a config owns (checked against their annotations here, so a SafeSFTConfig
    #: gets the same checks as SafeTrainingConfig)
    METHOD_FIELD_NAMES = ("method", "alpha", "alpha_schedule", "alpha_after", "schedule_length", "schedule_unit",
                          "warmup_placement", "regularizer_options", "penalty_when_inactive",
                          "zero_penalty_guard_steps", "safety_samples", "safety_harmful", "safety_refusals",
                          "safety_seed")

    def _check_method_values(self) -> None:
        """Ranges, then declared types, of the method fields (before any work)."""
        _int_at_least("zero_penalty_guard_steps", self.zero_penalty_guard_steps, 0)
        _int_at_least("safety_samples", self.safety_samples, 0)
        _seed("safety_seed", self.safety_seed)
        for name in ("alpha", "alpha_after", "schedule_length"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value < 0):
                raise ConfigError(f"{name} must be a finite number >= 0; got {value!r}")
        check_annotated(self, only=self.METHOD_FIELD_NAMES)

    def _validate_method(self) -> None:
        from ..methods import components, resolve_method

        self._check_method_values()
        explicit_placement = self.warmup_placement is not None
        try:
            plan = resolve_method(self.method)
        except ValueError as e:
            raise ConfigError(f"method: {e}") from None
        self._resolve_coefficient(plan)
        if plan.safety_data and self.safety_samples < 1:
            raise ConfigError(f"method={self.method} mixes in safety data: safety_samples must be >= 1")
        if not isinstance(self.regularizer_options, dict):
            raise ConfigError(f"regularizer_options must be a mapping name -> options; got {self.regularizer_options!r}")
        owners = components()
        for name, opts in self.regularizer_options.items():
            if name not in owners:
                raise ConfigError(f"regularizer_options.{name}: unknown component; known: {', '.join(owners)}")
            if opts is not None and not isinstance(opts, dict):
                raise ConfigError(f"regularizer_options.{name} must be a mapping of options; got {opts!r}")
            try:
                owners[name].validate_options(self)  # constructing validates the options (cheap: no model work)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"regularizer_options.{name}: {e}") from None
        if plan.coefficient is not None:
            try:
                self.schedule()
            except ValueError as e:
                raise ConfigError(str(e)) from None
        self._check_placement(explicit_placement)

    def _resolve_coefficient(self, plan) -> None:
        """α and its schedule, once: explicit values win, then the method's defaults, then the global ones."""
        defaults = {"alpha_schedule": "constant", "alpha_after": 0.0, "schedule_length": 0.0, "schedule_unit": "epoch",
                    "warmup_placement": "inside", **dict(plan.schedule)}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        _one_of("alpha_schedule", self.alpha_schedule, SCHEDULES)
        _one_of("schedule_unit", self.schedule_unit, UNITS)
        _one_of("warmup_placement", self.warmup_placement, PLACEMENTS)
        if plan.coefficient is None:
            if self.alpha is not None:
                raise ConfigError(f"alpha: method {self.method!r} has no coefficient (alpha is for methods with one: "
                                  f"{', '.join(_methods_with_coefficient())})")
            return
        if self.alpha is None:
            self.alpha = float(plan.default)
        self.alpha = float(self.alpha)

    def _check_placement(self, explicit: bool) -> None:
        """A warm-up placed before the standard run needs a run longer than the warm-up."""
        if self.warmup_placement != "before":
            return
        if self.alpha_schedule != "warmup":
            if explicit:
                raise ConfigError(f"warmup_placement=before needs alpha_schedule=warmup; got {self.alpha_schedule!r}")
            return
        m = float(self.schedule_length)
        if self.schedule_unit == "epoch" and self.max_steps <= 0 and not float(self.num_train_epochs) > m:
            raise ConfigError(f"num_train_epochs={self.num_train_epochs!r} must exceed schedule_length={m:g}: with "
                              "warmup_placement=before, num_train_epochs counts the m warm-up epochs and the n epochs "
                              "of the standard run (m + n)")
        if self.schedule_unit == "step" and self.max_steps > 0 and not self.max_steps > m:
            raise ConfigError(f"max_steps={self.max_steps} must exceed schedule_length={m:g} warm-up steps "
                              "(warmup_placement=before)")

    @property
    def warmup_before(self) -> bool:
        """The paper's ProCon_wu: the warm-up gets its own learning-rate schedule, then a fresh one starts."""
        return self.alpha is not None and self.alpha_schedule == "warmup" and self.warmup_placement == "before"

    # ---- derived --------------------------------------------------------------------------------

    @property
    def plan(self):
        from ..methods import resolve_method

        return resolve_method(self.method)

    def schedule(self) -> Schedule:
        """The coefficient schedule of the method's coefficient (resolved at construction)."""
        if self.alpha is None:
            raise ConfigError(f"method {self.method!r} has no coefficient to schedule")
        return Schedule(self.alpha_schedule, float(self.alpha), float(self.alpha_after), float(self.schedule_length),
                        self.schedule_unit)


@dataclass
class SafeTrainingConfig(MethodSettings, TrainingArguments):
    """A safeanchor training run. Defaults: LoRA (ProCon paper r=8, alpha=16, q/k/v/o, lr 2e-4)."""

    # ---- model ----------------------------------------------------------------------------------
    model: str = field(default="embedded:smollm2-135m-instruct", metadata={
        "help": "model to fine-tune: hub id, local folder, .gguf file or embedded:<name>"})
    precision: str = field(default="auto", metadata={
        "help": "auto (GPU: bf16 weights; CPU: fp32), fp32, bf16 or fp16"})

    # ---- data -----------------------------------------------------------------------------------
    train_data: Any = field(default_factory=lambda: ["task:arithmetic:train"], metadata={
        "help": "training data source(s) with prompt -> response pairs (safeanchor data sources: "
                "file:x.jsonl, hf:name, task:arithmetic:train, ...); a string or a list"})
    train_columns: dict[str, str] | None = field(default=None, metadata={
        "help": "column mapping for file/hf sources: record field -> column name, e.g. {prompt: instruction, "
                "response: output} (record fields: id, prompt, response, messages, system)"})
    max_train_samples: int | None = field(default=None, metadata={
        "help": "keep the first N records of each training source (None = all)"})
    max_length: int = field(default=512, metadata={"help": "max tokens per example (prompt + response)"})
    padding_side: str = field(default="right", metadata={"help": "batch padding side: right or left"})

    # ---- method ---------------------------------------------------------------------------------
    method: str = field(default="sft", metadata={
        "help": "a trainable method of the method table (safeanchor.methods): sft, sft_safe (SFT + safety "
                "samples), procon (ProCon_s), procon_wu, procon_safe, procon_wu_safe, asft, asft_safe, safe_lora, "
                "refusal_decision"})
    alpha: float | None = field(default=None, metadata={
        "help": "the method's coefficient (ProCon α, AsFT λ, Safe LoRA τ, ...); None = the method's default "
                "(procon 0.1, procon_wu 1, asft 1, safe_lora 0.5). Resolved when the config is built, so the "
                "saved train_config.yaml records the value used"})
    alpha_schedule: str | None = field(default=None, metadata={
        "help": "constant (ProCon_s), warmup (alpha for schedule_length units, then alpha_after: ProCon_wu), "
                "linear or cosine (decay to alpha_after over schedule_length, 0 = the whole run); None = the "
                "method's default (procon_wu*: warmup, else constant)"})
    alpha_after: float | None = field(default=None, metadata={
        "help": "coefficient after the warm-up / at the end of a decay (ProCon_wu: 0); None = the method's default"})
    schedule_length: float | None = field(default=None, metadata={
        "help": "warm-up / decay length in schedule_unit (ProCon_wu: m ≈ 4 epochs Llama, 16 Qwen2, halved with "
                "safety data); None = the method's default (procon_wu 1, procon_wu_safe 0.5, else 0)"})
    schedule_unit: str | None = field(default=None, metadata={
        "help": "unit of schedule_length: epoch or step; None = the method's default (epoch)"})
    warmup_placement: str | None = field(default=None, metadata={
        "help": "where a warmup schedule's schedule_length sits: before (the paper: the warm-up has its own "
                "learning-rate schedule, then the standard run starts a fresh one; num_train_epochs counts both, "
                "m + n) or inside (one learning-rate schedule over the whole run); None = the method's default "
                "(procon_wu*: before, else inside)"})
    regularizer_options: dict = field(default_factory=dict, metadata={
        "help": "options per method component, e.g. {procon: {anchor: online, norm: square}}, {asft: "
                "{unaligned_model: ...}}, {safe_lora: {mode: number, k: 10}}; each component validates its own"})
    penalty_when_inactive: bool = field(default=False, metadata={
        "help": "compute and log a regularizer's raw value also while its coefficient is 0 (e.g. after a "
                "ProCon warm-up) to watch it; costs the regularizer's work"})
    zero_penalty_guard_steps: int = field(default=3, metadata={
        "help": "error if an active regularizer (coefficient > 0) returns exactly 0 in steps 1..N "
                "(step 0 too unless it is legitimately 0 there); 0 disables the guard"})

    # ---- safety data ----------------------------------------------------------------------------
    safety_samples: int = field(default=128, metadata={
        "help": "number of harmful -> refusal samples mixed in by safety_data / *_safe (paper ~1000 for 7B "
                "runs on ~17k samples; 128 uses each bundled harmful train prompt at most once)"})
    safety_harmful: str = field(default="bundled:harmful:train", metadata={"help": "harmful prompts for safety data"})
    safety_refusals: str = field(default="bundled:refusals", metadata={"help": "refusal texts for safety data"})
    safety_seed: int = field(default=0, metadata={"help": "seed of the prompt/refusal pairing"})

    # ---- LoRA -----------------------------------------------------------------------------------
    use_lora: bool = field(default=True, metadata={"help": "train a LoRA adapter (True) or all weights (False)"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (ProCon paper: 8)"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (ProCon paper: 16; AsFT reference: 32)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA branch input"})
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "LoRA target modules (None = the family default, q/k/v/o)"})

    # ---- monitoring -----------------------------------------------------------------------------
    drift_every_steps: int = field(default=0, metadata={
        "help": "re-extract the refusal direction every N steps and log cos(r_orig, r_now) per layer (0 = off)"})
    drift_harmful: str = field(default="bundled:harmful:val", metadata={"help": "harmful prompts for drift monitoring"})
    drift_harmless: str = field(default="bundled:harmless:val", metadata={"help": "harmless prompts for drift monitoring"})
    drift_samples: int = field(default=32, metadata={"help": "prompts per side for drift monitoring"})
    progress: bool = field(default=True, metadata={"help": "rich progress display in the terminal"})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "train into an output_dir that already holds a run (finished, interrupted or failed), replacing it: "
                "that run's files (weights, checkpoints, logs, reports) are removed once the new run has its model "
                "and data; a folder that also holds files no run writes is refused. Without it, such a folder is an "
                "error (an interrupted run: resume_from_checkpoint=last continues it)"})

    # ---- TrainingArguments defaults changed for this library -----------------------------------
    output_dir: str | None = field(default="runs/train", metadata={"help": "where the adapter/model, logs and checkpoints go"})
    learning_rate: float = field(default=2e-4, metadata={"help": "peak learning rate (ProCon paper LoRA: 2e-4)"})
    logging_steps: float = field(default=1, metadata={"help": "log every N steps (per-step values always go to train_log.json)"})
    report_to: None | str | list[str] = field(default="tensorboard", metadata={
        "help": "experiment trackers (tensorboard writes to <output_dir>/runs); 'none' for none"})
    remove_unused_columns: bool = field(default=False, metadata={
        "help": "must stay False: batches carry sample_idx, which the trainer strips before the forward"})
    disable_tqdm: bool | None = field(default=True, metadata={"help": "HF's tqdm bar (safeanchor shows a rich display instead)"})
    optim: str = field(default="adamw_torch", metadata={"help": "optimizer (HF names)"})

    def __post_init__(self) -> None:
        import torch

        if self.dataloader_pin_memory and not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # pinned memory needs an accelerator (else a warning per run)
        if isinstance(self.train_data, str):
            self.train_data = [self.train_data]
        if (not isinstance(self.train_data, (list, tuple)) or not self.train_data
                or not all(isinstance(s, str) and s.strip() for s in self.train_data)):
            raise ConfigError(f"train_data must be a data source or a non-empty list of them; got {self.train_data!r}")
        self.train_data = list(self.train_data)
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [self.lora_target_modules]
        _one_of("precision", self.precision, PRECISIONS)
        _one_of("padding_side", self.padding_side, PADDING_SIDES)
        _int_at_least("max_length", self.max_length, 8)
        _int_at_least("lora_r", self.lora_r, 1)
        _int_at_least("lora_alpha", self.lora_alpha, 1)
        _int_at_least("drift_every_steps", self.drift_every_steps, 0)
        _int_at_least("drift_samples", self.drift_samples, 1)
        if self.max_train_samples is not None:
            _int_at_least("max_train_samples", self.max_train_samples, 1)
        _fraction("lora_dropout", self.lora_dropout)
        _check_columns(self.train_columns)
        self._check_method_values()
        _check_training_arguments(self)
        # every other field by its declared type (a bool is not an int), before any work
        check_annotated(self, types=TYPE_OVERRIDES, skip=("train_data",))
        if self.remove_unused_columns:
            raise ConfigError("remove_unused_columns must be False: batches carry sample_idx (anchors are keyed by it)")
        if self.fp16 or self.bf16:
            raise ConfigError("fp16/bf16 must stay False: set precision instead (auto/fp32/bf16/fp16), which "
                              "also sets the autocast that regularizer anchors use")

        self._validate_method()
        from ..distributed import is_multi_process_launch

        if is_multi_process_launch() and not torch.cuda.is_available():
            # accelerate forms a CPU process group only when told the run is on CPU; otherwise each
            # process would train alone (torchrun --nproc_per_node 2 on a CPU machine)
            self.use_cpu = True
            self.ddp_backend = self.ddp_backend or "gloo"
        super().__post_init__()

    def to_yaml_dict(self) -> dict[str, Any]:
        """Every field, resolved, as plain YAML-able values (re-loadable with :func:`config_from_dict`)."""
        d = {}
        for f in dataclasses.fields(self):
            if not f.init or f.name.endswith("_token"):
                continue
            d[f.name] = _plain(getattr(self, f.name))
        return d


# "The same run": every setting must agree -- for a resume (the checkpoint's settings against these)
# and for a finished run in the output folder to be called this same run -- except the ones below,
# which cannot change what a run computes: where it writes and what happens to that folder, how it
# logs, reports, checkpoints and shows progress, the hub, evaluation (`safeanchor train` has no
# eval set), the drift monitor (it measures in eval mode and moves no RNG), a guard that can only
# stop a run, how batches reach the device (not which batches), and memory / process plumbing
# (gradient checkpointing recomputes the same activations). A field added to TrainingArguments
# later is compared until it is listed here. Deliberately compared: num_train_epochs and max_steps
# (the learning-rate and coefficient schedules are functions of the run's length, so the steps
# already trained would not be the ones a longer fresh run trains: train longer in a new run),
# seed and data_seed, the data and its content, model, precision, method, alpha and its schedule,
# LoRA, optimizer, scheduler, batch size and accumulation, torch_compile / tf32 (other kernels).
NON_RESULT_KEYS = frozenset({
    # the folder
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "run_name",
    # logging, reporting, progress
    "logging_strategy", "logging_steps", "logging_first_step", "logging_nan_inf_filter", "log_on_each_node",
    "log_level", "log_level_replica", "disable_tqdm", "progress", "report_to", "project", "trackio_space_id",
    "trackio_bucket_id", "trackio_static_space_id", "include_num_input_tokens_seen", "skip_memory_metrics", "debug",
    # monitoring and guards
    "drift_every_steps", "drift_harmful", "drift_harmless", "drift_samples", "zero_penalty_guard_steps",
    # checkpoints
    "save_strategy", "save_steps", "save_total_limit", "save_on_each_node", "save_only_model",
    "enable_jit_checkpoint", "restore_callback_states_from_checkpoint",
    # the hub
    "push_to_hub", "hub_model_id", "hub_strategy", "hub_private_repo", "hub_always_push", "hub_revision",
    # evaluation
    "eval_strategy", "eval_steps", "eval_delay", "per_device_eval_batch_size", "prediction_loss_only",
    "eval_on_start", "eval_do_concat_batches", "eval_use_gather_object", "eval_accumulation_steps",
    "include_for_metrics", "batch_eval_metrics", "bf16_full_eval", "fp16_full_eval", "do_train", "do_eval",
    "do_predict",
    # how batches reach the device
    "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
    "dataloader_prefetch_factor", "dataloader_multiprocessing_context",
    # memory and process plumbing
    "gradient_checkpointing", "gradient_checkpointing_kwargs", "activation_checkpointing",
    "activation_checkpointing_kwargs", "torch_empty_cache_steps", "use_cache", "ddp_timeout", "ddp_backend",
    "ddp_find_unused_parameters", "ddp_bucket_cap_mb", "ddp_static_graph", "local_rank",
})
DATA_FINGERPRINTS = "data_fingerprints"  # the key under which a run's saved settings hold its data's sha256
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def result_settings(config_dict: dict[str, Any]) -> dict[str, Any]:
    """Every setting of a resolved config dict (``to_yaml_dict()``, a saved train_config.yaml, a
    checkpoint's ``run_config``) that can change what the run computes: all but :data:`NON_RESULT_KEYS`."""
    return {k: v for k, v in config_dict.items() if k not in NON_RESULT_KEYS and not k.endswith("_token")}


def run_identity(config) -> dict[str, Any]:
    """What a run's folder and checkpoints record to be recognised again: :func:`result_settings`
    plus the content fingerprints of its local data (:func:`data_fingerprints`)."""
    settings = config.to_yaml_dict()
    return {**result_settings(settings), DATA_FINGERPRINTS: data_fingerprints(settings)}


def setting_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``key: saved -> now`` for every result-changing setting that differs, then every local data
    file whose content changed (when both sides recorded it). In a record of this format (it holds
    the data fingerprints) a setting the saved side lacks was added to the config later, so it had
    the field's default. An older record (a checkpoint's ``run_config`` listed only a fixed subset
    of settings) is compared on the settings it holds. A setting this version lacks is gone and
    not compared."""
    a, b = result_settings(saved or {}), result_settings(now)
    current_format = isinstance((saved or {}).get(DATA_FINGERPRINTS), dict)
    defaults = _field_defaults()
    order = {k: i for i, k in enumerate(config_keys())}
    out = []
    for k in sorted(set(a) | set(b), key=lambda k: (order.get(k, len(order)), k)):
        if k == DATA_FINGERPRINTS or k not in b or (k not in a and not current_format):
            continue
        there = a[k] if k in a else defaults.get(k)
        if there != b[k]:
            out.append(f"{k}: {there!r} -> {b[k]!r}")
    fa, fb = a.get(DATA_FINGERPRINTS), b.get(DATA_FINGERPRINTS)
    if isinstance(fa, dict) and isinstance(fb, dict):
        for source in sorted(set(fa) & set(fb)):
            if fa[source] != fb[source]:
                out.append(f"content of {source}: sha256 {str(fa[source])[:12]}… -> {str(fb[source])[:12]}… "
                           "(the file changed)")
    return out


def data_fingerprints(settings: dict[str, Any]) -> dict[str, str]:
    """``source -> sha256`` of the local data a run reads, so an edited file is not mistaken for the
    same data: every ``file:<path>`` source (a file, or a dataset folder: all its files), every bare
    path to a data file (``.jsonl``/``.json``/``.csv``/``.parquet``) and every RefusalDirection folder
    (``direction.json``) named anywhere in the result settings (``train_data``, ``safety_*``,
    ``regularizer_options``...). Models are not hashed here: a base model's weights have their own
    fingerprint, checked when an adapter or a checkpoint meets its base.

    >>> data_fingerprints({"train_data": ["task:arithmetic:train"]})
    {}
    """
    found: dict[str, str] = {}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, str) and value not in found:
            path = _local_data(value)
            if path is not None:
                found[value] = _content_sha256(path)

    walk({k: v for k, v in result_settings(settings).items() if k != DATA_FINGERPRINTS})
    return found


def _local_data(value: str) -> Path | None:
    if value.startswith("file:"):
        path = Path(value[len("file:"):]).expanduser()
        return path if path.exists() else None
    if ":" in value.split("/")[0] or not value.strip() or "\n" in value:  # bundled:..., task:..., hf:..., embedded:...
        return None
    path = Path(value).expanduser()
    try:
        if path.is_file() and path.suffix.lower() in DATA_SUFFIXES:
            return path
        if path.is_dir() and (path / "direction.json").is_file():
            return path
    except OSError:  # a name too long for a path, ...
        return None
    return None


def _content_sha256(path: Path) -> str:
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(path).as_posix()}\0{_file_sha256(f)}\0".encode())
        return h.hexdigest()
    return _file_sha256(path)


def _file_sha256(path: Path) -> str:
    st = path.stat()
    return _sha256_cached(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    # keyed on size and mtime: a file hashed at the start is not read again at every checkpoint
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _field_defaults() -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(SafeTrainingConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = _plain(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = _plain(f.default_factory())  # type: ignore[misc]
    return out


def _methods_with_coefficient() -> list[str]:
    from ..methods import METHODS

    return [m.name for m in METHODS.values() if m.coefficient is not None]


def _plain(v: Any) -> Any:
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "to_dict"):
        return _plain(v.to_dict())
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def _number(name: str, value: Any, *, low: float, strict: bool = False, integer: bool = False,
            optional: bool = False) -> None:
    if optional and value is None:
        return
    kind = "an integer" if integer else "a number"
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float)) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low)
    if not ok:
        raise ConfigError(f"{name} must be {kind} {'>' if strict else '>='} {low:g}{' or null' if optional else ''}; "
                          f"got {value!r}")


def _fraction(name: str, value: Any, *, optional: bool = False) -> None:
    """A number in [0, 1) (a dropout, a momentum, a smoothing factor)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{name} must be a number in [0, 1){' or null' if optional else ''}; got {value!r}")


def _seed(name: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{name} must be an integer in [0, {SEED_MAX}]{' or null' if optional else ''}; "
                          f"got {value!r}")


def _check_training_arguments(cfg) -> None:
    """Type and range of the TrainingArguments fields a run depends on, before any work (HF
    checks few of them, and a bad one fails deep in a DataLoader or the optimizer, after the model
    load, or trains 0 steps). Every other field is checked against its annotation afterwards."""
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        _number(name, getattr(cfg, name), low=1, integer=True)
    _number("learning_rate", cfg.learning_rate, low=0)  # 0 is a legitimate probe: the weights never move
    _number("weight_decay", cfg.weight_decay, low=0)
    _number("max_grad_norm", cfg.max_grad_norm, low=0)
    _number("warmup_steps", cfg.warmup_steps, low=0)
    ratio = getattr(cfg, "warmup_ratio", None)  # gone in transformers 5 (warmup_steps < 1 is a ratio there)
    _fraction("warmup_ratio", ratio, optional=True)
    for name in ("adam_beta1", "adam_beta2", "label_smoothing_factor"):  # torch / HF refuse 1 and more, late
        _fraction(name, getattr(cfg, name))
    _number("adam_epsilon", cfg.adam_epsilon, low=0)
    _number("neftune_noise_alpha", cfg.neftune_noise_alpha, low=0, optional=True)
    if isinstance(cfg.max_steps, bool) or not isinstance(cfg.max_steps, int) or (cfg.max_steps < 1 and cfg.max_steps != -1):
        raise ConfigError(f"max_steps must be -1 (train num_train_epochs) or an integer >= 1; got {cfg.max_steps!r}")
    if cfg.max_steps == -1:
        _number("num_train_epochs", cfg.num_train_epochs, low=0, strict=True)
    _number("logging_steps", cfg.logging_steps, low=0, strict=True)
    _number("save_steps", cfg.save_steps, low=0, strict=True)
    _number("eval_steps", cfg.eval_steps, low=0, strict=True, optional=True)
    _number("eval_delay", cfg.eval_delay, low=0)
    _number("save_total_limit", cfg.save_total_limit, low=0, integer=True, optional=True)
    _number("dataloader_num_workers", cfg.dataloader_num_workers, low=0, integer=True)
    for name in ("dataloader_prefetch_factor", "eval_accumulation_steps", "torch_empty_cache_steps"):
        _number(name, getattr(cfg, name, None), low=1, integer=True, optional=True)
    _seed("seed", cfg.seed)
    _seed("data_seed", cfg.data_seed, optional=True)
    _check_named_choices(cfg)


def _check_named_choices(cfg) -> None:
    """A string field that HF turns into one of its enums (``lr_scheduler_type``, ``save_strategy``,
    ``optim``, ...) names one of its members (HF's own message starts with the value, not the field)."""
    import enum
    import typing

    from transformers.training_args import OptimizerNames

    for name, annotation in {**_types(), "optim": OptimizerNames}.items():
        value = getattr(cfg, name, None)
        if name == "debug" or not isinstance(value, str) or isinstance(value, enum.Enum):
            continue
        choices = [a for a in (typing.get_args(annotation) or (annotation,))
                   if isinstance(a, type) and issubclass(a, enum.Enum)]
        allowed = [str(m.value) for e in choices for m in e]
        if allowed and value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _check_columns(columns: Any) -> None:
    """``train_columns``: record field -> column name, for the record fields only."""
    from ..data.records import KNOWN_FIELDS

    if columns is None:
        return
    if not isinstance(columns, dict) or not all(isinstance(v, str) and v.strip() for v in columns.values()):
        raise ConfigError(f"train_columns must be a mapping record field -> column name (e.g. {{prompt: instruction, "
                          f"response: output}}) or null; got {columns!r}")
    unknown = [k for k in columns if k not in KNOWN_FIELDS]
    if unknown:
        raise ConfigError(f"train_columns maps unknown record field(s) {unknown}; record fields: "
                          f"{', '.join(KNOWN_FIELDS)}")


def _one_of(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _int_at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}; got {value!r}")


# ---------------------------------------------------------------------------------------------
# YAML + --set overrides
# ---------------------------------------------------------------------------------------------


def config_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(SafeTrainingConfig) if f.init]


def _check_keys(keys, where: str, lines: dict[str, int] | None = None) -> None:
    check_keys(dict.fromkeys(keys), config_keys(), where=where, lines=lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> ``(["a", "b"], parsed value)``; values are YAML (``3``, ``true``, ``[1, 2]``).

    >>> parse_override("regularizer_options.procon.layers=[1, 2]")
    (['regularizer_options', 'procon', 'layers'], [1, 2])
    """
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value; got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r} ({e})") from None
    return [p.strip() for p in key.split(".")], value


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _yaml11_fixups(data: dict[str, Any], where: str) -> dict[str, Any]:
    """Undo two YAML 1.1 surprises for top-level fields.

    * An unquoted ``no`` reads as ``False``: for a field that is not a boolean (``save_strategy:
      no``) it means the string ``"no"`` (the HF TrainingArguments convention); ``True`` there is
      an error naming the field.
    * ``2e-3`` (no dot) reads as a string: for a float field it is the number; any other text
      there is an error naming the field.
    """
    types = _types()
    out = dict(data)
    for key, value in data.items():
        if key not in types:
            continue
        if isinstance(value, bool) and not matches_type(value, types[key]):
            if value:
                raise ConfigError(f"{where}: field {key!r} takes a string or number, got a boolean (true/yes/on); "
                                  "quote the value", key=key)
            out[key] = "no"
        elif isinstance(value, str) and matches_type(1.5, types[key]) and not matches_type(value, types[key]):
            if not _FLOAT_TEXT.fullmatch(value.strip()):
                raise ConfigError(f"{where}: field {key!r} must be a number, got {value!r}", key=key)
            out[key] = float(value)
    return out


@functools.lru_cache(maxsize=1)
def _types() -> dict[str, Any]:
    return {**field_types(SafeTrainingConfig), **TYPE_OVERRIDES}


def config_from_dict(data: dict[str, Any], *, where: str = "config",
                     lines: dict[str, int] | None = None, file: str | None = None) -> SafeTrainingConfig:
    """Build a config from a mapping; unknown keys and bad values are :class:`ConfigError` naming
    ``where`` (or ``file:line`` of the key, when ``lines`` has it; ``file`` defaults to ``where``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys, got {type(data).__name__}")
    _check_keys(data, where, lines)
    data = _yaml11_fixups(data, where)
    try:
        return SafeTrainingConfig(**data)
    except (TypeError, ValueError) as e:
        key = getattr(e, "key", None) or error_key(str(e))
        located = located_error(str(e), file or where, lines) if key in (lines or {}) else f"{where}: {e}"
        raise ConfigError(located, key=key, detail=str(e)) from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> SafeTrainingConfig:
    """Read a YAML config (or none), apply ``key=value`` overrides (dotted keys reach into mappings).

    >>> load_config(None, ["method=procon", "alpha=0.2", "report_to=none"]).alpha
    0.2
    """
    data: dict[str, Any] = {}
    lines: dict[str, int] = {}
    where = "--set"
    if path is not None:
        data, lines = read_mapping(path)
        _check_keys(data, str(path), lines)
        where = str(path)
    for text in overrides:
        keys, value = parse_override(text)
        _check_keys(keys[:1], "--set")
        node = data
        for k in keys[:-1]:
            if node.get(k) is None:
                node[k] = {}
            if not isinstance(node[k], dict):
                raise ConfigError(f"--set {'.'.join(keys)}: {k!r} is not a mapping")
            node = node[k]
        node[keys[-1]] = value
        lines.pop(keys[0], None)  # an overridden key's error is about the override, not the file's line
    file = where
    if overrides and path is not None:
        where = f"{where} (with --set overrides)"
    return config_from_dict(data, where=where, lines=lines, file=file)


__all__ = ["ConfigError", "DATA_FINGERPRINTS", "NON_RESULT_KEYS", "SafeTrainingConfig", "config_from_dict", "config_keys",
           "data_fingerprints", "load_config", "parse_override", "result_settings", "run_identity",
           "setting_differences"]
