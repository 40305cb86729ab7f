"""A whole training run: load the model, build the data and the regularizers, train with
:class:`~safeanchor.train.trainer.SafeTrainer`, write the artifacts. What the CLI and the recipes call.

>>> # result = train(SafeTrainingConfig(method="procon_wu_safe", output_dir="runs/x"))
>>> # result.steps[0]["procon/raw"]   -> 0.0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..distributed import barrier, check_one_run
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


def check_output_dir(config) -> None:
    """Before any work: the output folder is writable, and does not hold a finished run (its
    ``train_report.json``) unless ``overwrite_output_dir`` or this is a resume."""
    import yaml

    from ..io import claim_output_folder
    from .config import setting_differences

    out = Path(config.output_dir)
    finished = out / "train_report.json"
    if finished.is_file() and not config.overwrite_output_dir and not config.resume_from_checkpoint:
        try:
            saved = yaml.safe_load((out / "train_config.yaml").read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            saved = {}
        diffs = setting_differences(saved, config.to_yaml_dict())
        what = f"another run (differs in: {'; '.join(diffs)})" if diffs else "this same run, finished"
        raise FileExistsError(f"{out} already holds {what}; nothing was changed. Choose another output_dir, or set "
                              "overwrite_output_dir=true to replace it")
    claim_output_folder(out, ())  # exists (made now) and writable


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
    from .data import build_train_dataset

    world = check_one_run(config)  # several processes that are not one run: stop before any work
    check_output_dir(config)
    set_seed(config.seed)
    model, tokenizer = prepare_model(config, model, tokenizer)
    regularizers = build_regularizers(config)
    dataset, data_report = build_train_dataset(config, tokenizer, [reg for reg, _ in regularizers.values()])
    trainer = SafeTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
        data_collator=SFTCollator(tokenizer.pad_token_id, config.padding_side),
        regularizers=regularizers,
        callbacks=[*drift_callbacks(config, model, tokenizer), *(callbacks or [])])
    resume = config.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = True
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
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


__all__ = ["TrainResult", "build_regularizers", "check_output_dir", "drift_callbacks", "prepare_model", "train"]
