"""A whole training run: load the model, build the data and the regularizers, train with
:class:`~safeanchor.train.trainer.SafeTrainer`, write the artifacts. What the CLI and the recipes call.

>>> # result = train(SafeTrainingConfig(method="procon_wu_safe", output_dir="runs/x"))
>>> # result.steps[0]["procon/raw"]   -> 0.0
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..distributed import barrier, check_one_run, is_main
from ..io import provenance, write_json
from ..methods.base import Regularizer
from .schedules import Schedule
from .trainer import SafeTrainer


@dataclass
class TrainResult:
    """What :func:`train` returns. ``steps``: one row per optimizer step (``step`` 0 = first batch)
    with ``ce``, ``loss``, ``<reg>/raw``, ``<reg>/coef``; ``log_history``: HF's log rows."""

    output_dir: Path
    log_history: list[dict[str, Any]]
    reports: dict[str, Any]
    runtime_s: float
    steps: list[dict[str, Any]] = field(default_factory=list)
    post_hoc: dict[str, Any] | None = None  # a post_hoc method's summary (Safe LoRA: modules projected)
    model: Any = field(default=None, repr=False)
    tokenizer: Any = field(default=None, repr=False)


def prepare_model(config, model=None, tokenizer=None):
    """Load (or take) the model and tokenizer and make the right parameters trainable.

    A passed-in model is modified in place (LoRA layers are injected into it). A model that is
    already a PEFT model keeps its adapter.
    """
    from ..models import attach_lora, load_model, load_tokenizer

    if model is None:
        model, tokenizer = load_model(config.model, precision=config.precision)
    elif tokenizer is None:
        tokenizer = load_tokenizer(config.model)
    if config.use_lora:
        if not hasattr(model, "peft_config"):
            model = attach_lora(model, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout,
                                target_modules=config.lora_target_modules, seed=config.seed)
    else:
        if hasattr(model, "peft_config"):
            raise ValueError("use_lora=False (full fine-tuning) but the model already carries a PEFT adapter")
        model.requires_grad_(True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def build_regularizers(config) -> dict[str, tuple[Regularizer, Schedule]]:
    """The method's regularizers, each with the schedule of the method's (resolved) coefficient."""
    method = config.plan
    return {name: (method.make_regularizer(config), config.schedule()) for name in method.regularizers}


def drift_callbacks(config, model, tokenizer) -> list[TrainerCallback]:
    """The refusal-direction drift monitor, when ``drift_every_steps`` > 0."""
    if not config.drift_every_steps:
        return []
    try:
        from ..direction.callback import DriftCallback
    except ImportError as e:
        raise ImportError(f"drift_every_steps needs safeanchor.direction.callback ({e})") from e
    return [DriftCallback.from_config(config, model, tokenizer)]


class RunFinished(FileExistsError):
    """The output folder already holds this run, finished: a resume has nothing left to do, and
    nothing was changed."""


# What safeanchor's train() and HF's Trainer write into an output folder (overwrite_output_dir
# removes these, and only these): weights, configs and tokenizer files, checkpoints, logs, reports.
RUN_FILES = frozenset({
    "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "model.safetensors",
    "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json", "config.json",
    "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
    "merges.txt", "tokenizer.model", "added_tokens.json", "spiece.model", "chat_template.jinja",
    "chat_template.json", "training_args.bin", "trainer_state.json", "all_results.json", "train_results.json",
    "eval_results.json", "train_config.yaml", "train_log.json", "train_report.json", "drift_history.json",
    "safe_lora_report.json", "regularizers.safetensors", "safeanchor_state.json", "stage.json", "optimizer.pt",
    "scheduler.pt", "rng_state.pth",
})
_RUN_PATTERNS = ("model-*-of-*.safetensors", "pytorch_model-*-of-*.bin", "rng_state_*.pth")
_CHECKPOINT_DIR = re.compile(r"(tmp-)?checkpoint-\d+")


def run_artifacts(out: str | Path) -> tuple[list[Path], list[Path]]:
    """``(ours, others)``: the entries of ``out`` that a training run writes (:data:`RUN_FILES`,
    ``checkpoint-N`` folders, a ``runs/`` folder of TensorBoard event files, PEFT's model card, the
    temp files of an interrupted atomic write) and everything else (a user's files: never deleted)."""
    out = Path(out)
    if not out.is_dir():
        return [], []
    ours, others = [], []
    for p in sorted(out.iterdir()):
        (ours if _is_run_artifact(p) else others).append(p)
    return ours, others


def _is_run_artifact(p: Path) -> bool:
    name = p.name
    if p.is_dir() and not p.is_symlink():
        if _CHECKPOINT_DIR.fullmatch(name):
            return True
        if name == "runs":  # TensorBoard (report_to=tensorboard): event files only
            files = [f for f in p.rglob("*") if f.is_file()]
            return all(f.name.startswith("events.out.tfevents") for f in files)
        return False
    if name in RUN_FILES or any(fnmatch.fnmatch(name, pat) for pat in _RUN_PATTERNS):
        return True
    if name == "README.md":  # PEFT's adapter model card, not a user's notes
        try:
            return "library_name: peft" in p.read_text(encoding="utf-8", errors="replace")[:4000]
        except OSError:
            return False
    # an atomic write interrupted before its rename: .<artifact>.<random>
    return name.startswith(".") and any(name.startswith(f".{f}.") for f in RUN_FILES)


def checkpoints(out: str | Path) -> list[Path]:
    """The ``checkpoint-N`` folders of ``out``, by step."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = [p for p in out.iterdir()
             if p.is_dir() and _CHECKPOINT_DIR.fullmatch(p.name) and not p.name.startswith("tmp-")]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


@dataclass
class OutputPlan:
    """What :func:`check_output_dir` found: the checkpoint to resume from (None: a fresh run) and
    the previous run's artifacts that ``overwrite_output_dir`` removes before the new run starts."""

    resume_from: Path | None = None
    remove: list[Path] = field(default_factory=list)


def check_output_dir(config, model=None) -> OutputPlan:
    """Before any work (no model load): decide what the run does with its output folder, or refuse.

    * A resume (``resume_from_checkpoint``: ``last``/``true`` or a path) needs a checkpoint that
      exists and was trained with these same settings and data (and base weights, when ``model`` is
      given); resuming a finished run is :class:`RunFinished` (nothing to do, nothing changed).
    * A fresh run into a folder with a previous run's files is refused -- a finished run, an
      interrupted one (its checkpoints: continue it with ``resume_from_checkpoint=last``) or the
      leftovers of a failed one -- naming what differs; with ``overwrite_output_dir`` those files
      are removed before training (and nothing is when the folder also holds files of its own).
    """
    import yaml

    from ..configfile import ConfigError
    from ..io import claim_output_folder, read_json
    from ..models import base_fingerprints
    from .config import DATA_FINGERPRINTS, run_identity, setting_differences
    from .trainer import resume_differences

    out = Path(config.output_dir)
    report = out / "train_report.json"
    finished = report.is_file()
    def base():  # the passed-in model's weights, when a checkpoint is compared (cheap, but only then)
        return base_fingerprints(model) if model is not None else None

    resume = _resume_request(config.resume_from_checkpoint)
    options = ("set resume_from_checkpoint=last to continue it, overwrite_output_dir=true to start over, or choose "
               "another output_dir")
    if resume is not None:
        found = checkpoints(out)
        if resume == "last":
            if not found:
                if finished:
                    raise RunFinished(f"{out} already holds a finished run (train_report.json) and no checkpoint; "
                                      "there is nothing to resume; nothing was changed")
                raise ConfigError(f"resume_from_checkpoint=last: no checkpoint found in {out} (no checkpoint-N "
                                  "folder; checkpoints are written with save_strategy=steps or epoch)")
            complete = [c for c in found if (c / "trainer_state.json").is_file()]  # a save cut short has none
            if not complete:
                raise ConfigError(f"resume_from_checkpoint=last: no complete checkpoint in {out} "
                                  f"({', '.join(c.name for c in found)} lack trainer_state.json: saves cut short?)")
            ckpt = complete[-1]
        else:
            ckpt = Path(resume).expanduser()
            if not ckpt.is_dir():
                raise ConfigError(f"resume_from_checkpoint: checkpoint folder not found: {ckpt}")
        if not (ckpt / "trainer_state.json").is_file():
            raise ConfigError(f"resume_from_checkpoint: {ckpt} is not a training checkpoint (no trainer_state.json)")
        if config.overwrite_output_dir and _inside(ckpt, out):
            raise ConfigError(f"resume_from_checkpoint={config.resume_from_checkpoint!r} with overwrite_output_dir=true:"
                              f" overwriting {out} would delete the checkpoint to resume from; set one of them")
        diffs = resume_differences(ckpt, config, base())
        if diffs:
            raise ConfigError(f"cannot resume from {ckpt}: it was trained with other settings ({'; '.join(diffs)}); "
                              "resume with the same settings or start a new output_dir")
        if finished:
            raise RunFinished(f"{out} already holds this run, finished (train_report.json): there is nothing left to "
                              "resume; nothing was changed. To train from one of its checkpoints again, copy it into "
                              "a new output_dir and resume there")
        remove = []
        if config.overwrite_output_dir:  # resuming from a checkpoint elsewhere into a folder to replace
            remove = _removable(out)
        claim_output_folder(out, ())
        return OutputPlan(ckpt, remove)

    ours, others = run_artifacts(out)
    if ours and config.overwrite_output_dir:
        return OutputPlan(None, _removable(out))
    if finished:
        try:
            saved = yaml.safe_load((out / "train_config.yaml").read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            saved = {}
        if isinstance(saved, dict):
            try:
                saved[DATA_FINGERPRINTS] = read_json(report).get(DATA_FINGERPRINTS)
            except (OSError, ValueError, AttributeError):
                pass
        diffs = setting_differences(saved if isinstance(saved, dict) else {}, run_identity(config))
        what = f"another run (differs in: {'; '.join(diffs)})" if diffs else "this same run, finished"
        error = FileExistsError if diffs else RunFinished  # the same run again: a no-op for the CLI
        raise error(f"{out} already holds {what}; nothing was changed. Choose another output_dir, or set "
                    "overwrite_output_dir=true to replace it")
    found = checkpoints(out)
    if found:
        last = found[-1]
        diffs = resume_differences(last, config, base())
        what = (f"an interrupted run with other settings (differs in: {'; '.join(diffs)})" if diffs
                else "an interrupted run with these same settings")
        raise FileExistsError(f"{out} holds {what}, last saved at {last.name}; starting afresh would overwrite its "
                              f"checkpoints, so nothing was changed: {options}")
    if ours:
        raise FileExistsError(f"{out} holds files of an earlier, unfinished run ({', '.join(p.name for p in ours)}); "
                              "nothing was changed: set overwrite_output_dir=true to remove them and start over, or "
                              "choose another output_dir")
    claim_output_folder(out, ())  # writable (Trainer makes the folder when it starts)
    return OutputPlan()


def _resume_request(value) -> str | None:
    """``"last"`` (the newest checkpoint of output_dir), a checkpoint path, or None (a fresh run)."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("", "false", "none")):
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() in ("true", "last")):
        return "last"
    return str(value)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _removable(out: Path) -> list[Path]:
    """The previous run's artifacts of ``out``, for ``overwrite_output_dir``; refused when the folder
    holds anything else (a user's files are never deleted)."""
    from ..io import claim_output_folder

    ours, others = run_artifacts(out)
    if others:
        raise FileExistsError(f"{out}: overwrite_output_dir=true removes the previous run's files first, but the "
                              f"folder also holds files that no training run writes ({', '.join(p.name for p in others)})"
                              "; nothing was changed. Move them away, or choose another output_dir")
    claim_output_folder(out, ())  # writable, before anything is removed
    return ours


def remove_previous_run(paths: list[Path]) -> None:
    """Delete a replaced run's artifacts (what :func:`check_output_dir` listed), so no stale file of
    it (an adapter beside new full weights, old checkpoints) is picked up with the new run's."""
    import shutil

    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def train(config, model=None, tokenizer=None, callbacks: list[TrainerCallback] | None = None) -> TrainResult:
    """Fine-tune with ``config`` and write the adapter (or full model) and logs to ``config.output_dir``.

    Works from a model name (``config.model``) or an already-loaded ``model``/``tokenizer``;
    ``callbacks`` are added to the trainer's.
    Writes ``train_config.yaml`` (resolved: the α used, never null for a method with a
    coefficient), ``train_log.json`` (per-step CE, raw penalties, coefficients) and
    ``train_report.json`` (data counts, regularizer setup reports, runtime). A ``post_hoc`` method
    (Safe LoRA) transforms the trained adapter after training and saves it in its place.

    >>> from safeanchor.train import SafeTrainingConfig, train              # doctest: +SKIP
    >>> cfg = SafeTrainingConfig(method="procon", alpha=0.1, output_dir="runs/procon")  # doctest: +SKIP
    >>> result = train(cfg)                                                 # doctest: +SKIP
    >>> result.steps[0]["procon/raw"]                                      # doctest: +SKIP
    0.0
    """
    import time

    import yaml
    from transformers import set_seed

    from ..data import SFTCollator
    from ..io import atomic_write_text
    from ..models import model_fingerprint
    from .config import DATA_FINGERPRINTS, data_fingerprints
    from .data import build_train_dataset

    world = check_one_run(config)  # several processes that are not one run: stop before any work
    plan = check_output_dir(config, model)
    data_sha = data_fingerprints(config.to_yaml_dict())  # the data as this run starts to read it
    set_seed(config.seed)
    model, tokenizer = prepare_model(config, model, tokenizer)
    regularizers = build_regularizers(config)
    dataset, data_report = build_train_dataset(config, tokenizer, [reg for reg, _ in regularizers.values()])
    # overwrite_output_dir: the old run goes once the new one has its model and data, and only after every
    # rank has planned (a rank that listed the folder mid-removal would plan otherwise)
    barrier()
    if plan.remove and is_main():
        remove_previous_run(plan.remove)
    barrier()
    trainer = SafeTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
        data_collator=SFTCollator(tokenizer.pad_token_id, config.padding_side),
        regularizers=regularizers,
        callbacks=[*drift_callbacks(config, model, tokenizer), *(callbacks or [])])
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(plan.resume_from) if plan.resume_from is not None else None)
    runtime = time.perf_counter() - t0

    model.eval()  # as load_model hands models out
    out = Path(config.output_dir)
    trainer.save_model(str(out))  # every rank takes part (FSDP/ZeRO-3 gather); the main one writes
    method = config.plan
    result = TrainResult(out, list(trainer.state.log_history), {"data": data_report, **trainer.reports}, runtime,
                         list(trainer.step_log), None, model, tokenizer)
    if not trainer.is_world_process_zero():  # one writer: the artifacts below come from the main process
        barrier()
        return result
    post_hoc = method.transform(model, config, out) if method.kind == "post_hoc" else None
    atomic_write_text(out / "train_config.yaml", yaml.safe_dump(config.to_yaml_dict(), sort_keys=False))
    write_json(out / "train_log.json", {"steps": trainer.step_log, "log_history": trainer.state.log_history})
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    write_json(out / "train_report.json", {
        "model": config.model if getattr(model, "safeanchor_source", None) is None else model.safeanchor_source,
        "model_type": base.config.model_type,
        "adapter": "lora" if config.use_lora else "full",
        "method": config.method,
        "paper_name": method.paper_name,
        "coefficient": None if method.coefficient is None else {
            "name": method.coefficient, "alpha": config.alpha, "schedule": config.alpha_schedule,
            "alpha_after": config.alpha_after, "schedule_length": config.schedule_length, "unit": config.schedule_unit},
        "post_hoc": post_hoc,
        "base_fingerprint": trainer.base_fingerprint,  # load_model checks an adapter's base against it
        DATA_FINGERPRINTS: data_sha,  # what the "same run" check compares
        "trained_fingerprint": model_fingerprint(model),
        "data": data_report,
        "regularizers": trainer.reports,
        "global_steps": trainer.state.global_step,
        "world_size": world,
        "global_batch_size": config.per_device_train_batch_size * config.gradient_accumulation_steps * world,
        "runtime_s": runtime,
        "seed": config.seed,
        "provenance": provenance(),
    })
    barrier()
    result.post_hoc = post_hoc
    return result


__all__ = ["OutputPlan", "RUN_FILES", "RunFinished", "TrainResult", "build_regularizers", "check_output_dir", "checkpoints",
           "drift_callbacks", "prepare_model", "remove_previous_run", "run_artifacts", "train"]
