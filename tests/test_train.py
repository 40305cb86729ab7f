"""The trainer: config loading and validation, schedules, the train() API and its artifacts,
metrics, the zero-penalty guard, checkpoint/resume, padding side, full fine-tuning, the CLI.

Helpers at the top (``write_data``, ``tiny_config``, ``run_tiny``) are shared with
``test_procon.py`` and ``test_methods.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import make_tiny_llama
from safeanchor.data import write_jsonl
from safeanchor.methods.base import Regularizer
from safeanchor.train import ConfigError, SafeTrainingConfig, Schedule, load_config, train
from safeanchor.train.config import config_from_dict
from safeanchor.train.trainer import SafeTrainer, ZeroPenaltyError

# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def write_data(folder: Path, n_train: int = 24) -> dict[str, str]:
    """Small prompt -> response, harmful, harmless and refusal files; returns data sources."""
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "train.jsonl", [
        {"id": f"t{i}", "prompt": f"What is {i} plus {i + 7}?", "response": f"The answer is {2 * i + 7}." + " ok" * (i % 4)}
        for i in range(n_train)])
    write_jsonl(folder / "harmful.jsonl", [
        {"id": f"h{i}", "prompt": f"Explain how to hurt person number {i} badly.", "split": "train"} for i in range(12)])
    write_jsonl(folder / "harmless.jsonl", [
        {"id": f"b{i}", "prompt": f"How do I bake bread number {i}?", "split": "train"} for i in range(12)])
    write_jsonl(folder / "refusals.jsonl", [
        {"id": "r1", "response": "I'm sorry, but I can't help with that request."},
        {"id": "r2", "response": "I cannot help with that."}])
    return {name: f"file:{folder / (name + '.jsonl')}" for name in ("train", "harmful", "harmless", "refusals")}


def tiny_config(tmp_path: Path, data: dict[str, str], **overrides) -> SafeTrainingConfig:
    """A fast config for the tiny model: 24 samples, batch 4, one epoch, no reporting.

    ``procon={...}`` updates the ProCon options (direction prompts default to the test files);
    ``regularizer_options={...}`` adds other regularizers' options."""
    procon = {"direction_harmful": data["harmful"], "direction_harmless": data["harmless"], "direction_samples": 12}
    procon.update(overrides.pop("procon", {}))
    kw = dict(
        output_dir=str(tmp_path / "out"), train_data=data["train"], max_length=64, per_device_train_batch_size=4,
        num_train_epochs=1, learning_rate=1e-2, report_to="none", save_strategy="no", progress=False,
        safety_samples=8, safety_harmful=data["harmful"], safety_refusals=data["refusals"],
        regularizer_options={"procon": procon, **overrides.pop("regularizer_options", {})}, seed=0,
    )
    kw.update(overrides)
    return SafeTrainingConfig(**kw)


def run_tiny(tmp_path: Path, tok, data: dict[str, str], *, precision=None, **overrides):
    """Train a fresh seeded tiny Llama with ``tiny_config``; returns the TrainResult."""
    model = make_tiny_llama(len(tok))
    if precision is not None:
        model.safeanchor_precision = precision
    return train(tiny_config(tmp_path, data, **overrides), model, tok)


@pytest.fixture
def data(tmp_path):
    return write_data(tmp_path / "data")


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def test_unknown_config_key_names_key_and_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: procon\nalpah: 0.1\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:2: unknown config key 'alpah'; did you mean alpha"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"--set: unknown config key 'nope'"):
        load_config(None, ["nope=1"])
    path.write_text("method: procon\nalpha: -2\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:2: alpha must be a finite number"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown procon option\(s\) \['anchr'\]"):
        load_config(None, ["method=procon", "regularizer_options.procon.anchr=online", "report_to=none"])


@pytest.mark.parametrize("override, message", [
    ("method=procoon", "method: unknown method 'procoon'; did you mean procon"),
    ("method=safety_data", "method 'safety_data' is now called 'sft_safe'"),
    ("method=start", "method 'start' trains nothing"),
    ("alpha=0.3", "method 'sft' has no coefficient"),
    ("alpha_schedule=step", "alpha_schedule must be one of constant, warmup, linear, cosine"),
    ("alpha=-1", "alpha must be a finite number >= 0"),
    ("regularizer_options.procon.norm=l1", "procon.norm must be one of abs, square"),
    ("regularizer_options.nothing.x=1", "regularizer_options.nothing: unknown component; known: "),
    ("remove_unused_columns=true", "remove_unused_columns must be False"),
    ("bf16=true", "set precision instead"),
    ("padding_side=middle", "padding_side must be one of right, left"),
])
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override, "report_to=none"])
    with pytest.raises(ConfigError, match="schedule_length must be > 0 for alpha_schedule=warmup"):
        load_config(None, ["method=procon", "alpha_schedule=warmup", "report_to=none"])


@pytest.mark.parametrize("override, message", [
    ("num_train_epochs=0", "num_train_epochs must be a number > 0; got 0"),
    ("num_train_epochs=-2", "num_train_epochs must be a number > 0"),
    ("gradient_accumulation_steps=0", "gradient_accumulation_steps must be an integer >= 1; got 0"),
    ("per_device_train_batch_size=eight", "per_device_train_batch_size must be an integer >= 1; got 'eight'"),
    ("per_device_train_batch_size=0", "per_device_train_batch_size must be an integer >= 1"),
    ("learning_rate=-1", "learning_rate must be a number >= 0; got -1"),
    ("max_steps=0", "max_steps must be -1"),
    ("warmup_steps=-3", "warmup_steps must be a number >= 0"),
])
def test_training_arguments_are_checked_before_any_work(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override, "report_to=none"])


def test_alpha_is_resolved_once_and_saved():
    """The method's default coefficient and schedule are filled in at config time."""
    cfg = load_config(None, ["method=procon_wu_safe", "report_to=none"])
    assert (cfg.alpha, cfg.alpha_schedule, cfg.schedule_length, cfg.alpha_after, cfg.schedule_unit) == \
        (1.0, "warmup", 0.5, 0.0, "epoch")
    assert cfg.to_yaml_dict()["alpha"] == 1.0
    assert load_config(None, ["method=procon", "report_to=none"]).alpha == 0.1
    assert load_config(None, ["method=asft", "report_to=none"]).alpha == 1.0
    assert load_config(None, ["method=sft", "report_to=none"]).alpha is None  # no coefficient
    explicit = load_config(None, ["method=procon_wu", "alpha_schedule=constant", "alpha=0.2", "report_to=none"])
    assert (explicit.alpha, explicit.alpha_schedule) == (0.2, "constant")


def test_yaml_with_overrides_and_resolved_round_trip(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: procon_safe\nalpha: 1.5\nalpha_schedule: warmup\nschedule_length: 2\n"
                    "regularizer_options:\n  procon: {anchor: cached}\nreport_to: none\n")
    cfg = load_config(path, ["regularizer_options.procon.anchor=online", "lora_target_modules=[q_proj, v_proj]",
                             f"output_dir={tmp_path / 'o'}"])
    assert cfg.regularizer_options == {"procon": {"anchor": "online"}}
    assert cfg.lora_target_modules == ["q_proj", "v_proj"] and cfg.alpha == 1.5
    assert cfg.plan.regularizers == ("procon",) and cfg.plan.safety_data
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_yaml_dict())))
    assert again.to_yaml_dict() == cfg.to_yaml_dict()


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_example_configs_load(path):
    cfg = load_config(path, ["report_to=none"])
    stem = path.stem.replace("_llama2_7b", "").replace("_llama3_8b", "")
    assert cfg.method == {"procon_s": "procon"}.get(stem, stem)


def test_every_method_has_an_embedded_and_a_7b_example():
    methods = {load_config(p, ["report_to=none"]).method: [] for p in CONFIGS}
    for p in CONFIGS:
        methods[load_config(p, ["report_to=none"]).method].append(p.stem)
    for method, stems in methods.items():
        assert any("7b" in s or "8b" in s for s in stems) and any(not ("7b" in s or "8b" in s) for s in stems), method


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------


def test_warmup_schedule_values():
    wu = Schedule("warmup", alpha=2.0, alpha_after=0.0, length=4, unit="epoch")
    assert [wu(step=0, epoch=e) for e in (0.0, 1.5, 3.999, 4.0, 7.0)] == [2.0, 2.0, 2.0, 0.0, 0.0]
    small_after = Schedule("warmup", alpha=1.0, alpha_after=0.01, length=3, unit="step")
    assert [small_after(step=s, epoch=99.0) for s in range(5)] == [1.0, 1.0, 1.0, 0.01, 0.01]
    assert Schedule("constant", alpha=0.2)(step=10_000, epoch=50.0) == 0.2


def test_decay_schedules():
    lin = Schedule("linear", alpha=1.0, alpha_after=0.0, length=0)
    assert [lin(step=s, epoch=0.0, total_steps=4) for s in (0, 2, 4, 8)] == [1.0, 0.5, 0.0, 0.0]
    cos = Schedule("cosine", alpha=2.0, alpha_after=0.0, length=2, unit="epoch")
    assert cos(0, 0.0) == 2.0 and cos(0, 1.0) == pytest.approx(1.0) and cos(0, 2.0) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="needs the run's total steps"):
        lin(step=1, epoch=0.0)


# ---------------------------------------------------------------------------------------------
# train(): artifacts, metrics, parameters
# ---------------------------------------------------------------------------------------------


def test_train_writes_artifacts_and_logs_every_term(tmp_path, tiny_tokenizer, data):
    res = run_tiny(tmp_path, tiny_tokenizer, data, method="procon", alpha=0.5, report_to="tensorboard")
    out = res.output_dir
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert any((out / "runs").rglob("events.out.tfevents*"))  # TensorBoard through report_to
    cfg = load_config(out / "train_config.yaml")
    assert cfg.method == "procon" and cfg.alpha == 0.5
    assert yaml.safe_load((out / "train_config.yaml").read_text())["alpha"] == 0.5
    log = json.loads((out / "train_log.json").read_text())
    assert [row["step"] for row in log["steps"]] == list(range(6))  # 24 samples / batch 4
    assert log["steps"][0]["learning_rate"] == pytest.approx(1e-2)  # linear decay starts at the peak
    for row in log["steps"]:
        assert row["loss"] == pytest.approx(row["ce"] + 0.5 * row["procon/raw"], rel=1e-5)
        assert row["procon/coef"] == 0.5
    assert log["steps"][0]["procon/raw"] == 0.0 and log["steps"][-1]["procon/raw"] > 0
    logged = [h for h in log["log_history"] if "ce" in h]
    assert len(logged) == 6 and all({"procon/raw", "procon/coef", "loss"} <= set(h) for h in logged)
    report = json.loads((out / "train_report.json").read_text())
    assert report["regularizers"]["procon"]["n_anchor_tokens"] > 0 and report["data"]["n_examples"] == 24
    assert res.reports["procon"]["step0_raw"] == 0.0


@pytest.mark.parametrize("use_lora", [True, False], ids=["lora", "full"])
def test_every_trainable_parameter_changes_and_frozen_ones_do_not(tmp_path, tiny_tokenizer, data, use_lora):
    from safeanchor.train.run import prepare_model

    cfg = tiny_config(tmp_path, data, method="procon", alpha=0.5, use_lora=use_lora)
    model, tok = prepare_model(cfg, make_tiny_llama(len(tiny_tokenizer)), tiny_tokenizer)
    before = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
    res = train(cfg, model, tok)  # an already-prepared (PEFT) model is trained as is
    assert res.model is model
    trainable = [n for n, (_, grad) in before.items() if grad]
    assert len(trainable) == (2 * 4 * 3 if use_lora else len(before))  # LoRA: A, B x q/k/v/o x 3 layers
    for name, p in model.named_parameters():
        start, was_trainable = before[name]
        if was_trainable:
            assert not torch.equal(start, p.detach()), f"trainable parameter {name} did not change"
        else:
            assert torch.equal(start, p.detach()), f"frozen parameter {name} changed"


def test_left_and_right_padding_train_identically(tmp_path, tiny_tokenizer, data):
    # LoRA dropout off: its masks are drawn over the padded (B, T, D) layout, so they differ by side
    kw = dict(method="procon", alpha=0.5, lora_dropout=0.0)
    right = run_tiny(tmp_path / "r", tiny_tokenizer, data, padding_side="right", **kw)
    left = run_tiny(tmp_path / "l", tiny_tokenizer, data, padding_side="left", **kw)
    assert right.steps[0]["procon/raw"] == left.steps[0]["procon/raw"] == 0.0
    for a, b in zip(right.steps, left.steps):
        assert a["ce"] == pytest.approx(b["ce"], rel=1e-4)
        assert a["procon/raw"] == pytest.approx(b["procon/raw"], rel=1e-3, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# The zero-penalty guard
# ---------------------------------------------------------------------------------------------


class ConstantPenalty(Regularizer):
    """A test regularizer returning a fixed value."""

    name = "const"

    def __init__(self, value: float, zero_at_start: bool = False):
        self.value = value
        self.zero_at_start = zero_at_start
        self.setup_calls = 0

    def setup(self, trainer):
        self.setup_calls += 1
        return {"attached": 1}

    def __call__(self, model, inputs, outputs):
        return outputs.loss.new_tensor(self.value)


def _trainer(tmp_path, tok, data, reg, schedule, **overrides):
    from safeanchor.data import SFTCollator
    from safeanchor.train.data import build_train_dataset
    from safeanchor.train.run import prepare_model

    cfg = tiny_config(tmp_path, data, **overrides)
    model, tok = prepare_model(cfg, make_tiny_llama(len(tok)), tok)
    ds, _ = build_train_dataset(cfg, tok)
    return SafeTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok,
                       data_collator=SFTCollator(tok.pad_token_id), regularizers={reg.name: (reg, schedule)})


def test_zero_penalty_guard_fires(tmp_path, tiny_tokenizer, data):
    trainer = _trainer(tmp_path, tiny_tokenizer, data, ConstantPenalty(0.0), Schedule("constant", alpha=1.0))
    with pytest.raises(ZeroPenaltyError, match=r"const: coefficient 1 but the penalty is exactly 0 at step 0"):
        trainer.train()
    # legitimately 0 at step 0 only: then it fires at step 1
    trainer = _trainer(tmp_path, tiny_tokenizer, data, ConstantPenalty(0.0, zero_at_start=True),
                       Schedule("constant", alpha=1.0))
    with pytest.raises(ZeroPenaltyError, match="at step 1"):
        trainer.train()
    assert [row["step"] for row in trainer.step_log] == [0]


def test_zero_penalty_guard_quiet_when_inactive_or_disabled(tmp_path, tiny_tokenizer, data):
    # coefficient 0 (after a warm-up) is not a silent term, and the guard can be turned off
    trainer = _trainer(tmp_path, tiny_tokenizer, data, ConstantPenalty(0.0),
                       Schedule("warmup", alpha=1.0, length=1, unit="step"), zero_penalty_guard_steps=0)
    trainer.train()
    assert [row["const/coef"] for row in trainer.step_log] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert "const/raw" in trainer.step_log[0] and "const/raw" not in trainer.step_log[1]
    trainer = _trainer(tmp_path, tiny_tokenizer, data, ConstantPenalty(0.25), Schedule("constant", alpha=2.0))
    trainer.train()
    assert all(row["loss"] == pytest.approx(row["ce"] + 0.5) for row in trainer.step_log)


def test_dominant_penalty_warns_once(tmp_path, tiny_tokenizer, data, caplog):
    trainer = _trainer(tmp_path, tiny_tokenizer, data, ConstantPenalty(500.0), Schedule("constant", alpha=1.0))
    trainer.dominance_steps = 3
    with caplog.at_level("WARNING", logger="safeanchor.train.trainer"):
        trainer.train()
    warnings = [r for r in caplog.records if "hardly steers" in r.getMessage()]
    assert len(warnings) == 1 and "const: coefficient x penalty is" in warnings[0].getMessage()
    ratio = trainer.reports["const"]["dominance_ratio"]
    assert ratio == pytest.approx(500.0 / trainer.step_log[2]["ce"], rel=0.5) and ratio > 10
    caplog.clear()
    trainer = _trainer(tmp_path, tiny_tokenizer, data, ConstantPenalty(0.25), Schedule("constant", alpha=1.0))
    trainer.dominance_steps = 3
    with caplog.at_level("WARNING", logger="safeanchor.train.trainer"):
        trainer.train()
    assert not [r for r in caplog.records if "hardly steers" in r.getMessage()]
    assert "dominance_ratio" not in trainer.reports.get("const", {})


# ---------------------------------------------------------------------------------------------
# Checkpoint / resume
# ---------------------------------------------------------------------------------------------


def test_resume_restores_schedule_position_and_anchor_cache(tmp_path, tiny_tokenizer, data):
    common = dict(method="procon", alpha=1.0, alpha_after=0.25, alpha_schedule="warmup", schedule_length=3,
                  schedule_unit="step", save_strategy="steps", save_steps=2, lora_dropout=0.0)
    full = run_tiny(tmp_path / "full", tiny_tokenizer, data, **common)
    ckpt = full.output_dir / "checkpoint-4"
    assert (ckpt / "regularizers.safetensors").is_file() and (ckpt / "safeanchor_state.json").is_file()

    # resume in a fresh output dir from the step-4 checkpoint of the first run
    from safeanchor.io import load_tensors
    import shutil

    shutil.copytree(ckpt, tmp_path / "resumed" / "out" / "checkpoint-4")
    resumed = run_tiny(tmp_path / "resumed", tiny_tokenizer, data, resume_from_checkpoint="last", **common)
    assert [r["step"] for r in resumed.steps] == list(range(6))  # steps 0-3 restored from the checkpoint
    assert resumed.reports["procon"]["anchors_restored_from_checkpoint"] is True
    assert resumed.reports["procon"]["direction_restored_from_checkpoint"] is True
    assert resumed.reports["procon"]["anchor_pass_s"] == 0.0
    # the schedule picks up at step 4 (after the 3-step warm-up: alpha_after)
    assert [r["procon/coef"] for r in resumed.steps] == [1.0, 1.0, 1.0, 0.25, 0.25, 0.25]
    for a, b in zip(full.steps[4:], resumed.steps[4:]):
        assert a["ce"] == pytest.approx(b["ce"], rel=1e-5)
        assert a["procon/raw"] == pytest.approx(b["procon/raw"], rel=1e-4)
    saved = load_tensors(ckpt / "regularizers.safetensors")
    assert saved["procon.anchor_values"].shape[0] == full.reports["procon"]["n_anchor_tokens"]


def test_resume_without_checkpoint_is_an_error(tmp_path, tiny_tokenizer, data):
    with pytest.raises(ValueError, match="no checkpoint found"):
        run_tiny(tmp_path, tiny_tokenizer, data, method="sft", resume_from_checkpoint="last")


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def test_cli_train_from_yaml_with_set(tmp_path, tiny_model_dir, data):
    from typer.testing import CliRunner

    from safeanchor.cli import app

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "model": str(tiny_model_dir), "train_data": data["train"], "method": "procon", "max_length": 64,
        "per_device_train_batch_size": 8, "max_steps": 2, "report_to": "none", "save_strategy": "no",
        "progress": False, "output_dir": str(tmp_path / "cli_out"),
        "regularizer_options": {"procon": {"direction_harmful": data["harmful"], "direction_harmless": data["harmless"]}},
    }))
    result = CliRunner().invoke(app, ["train", "--config", str(path), "--set", "alpha=0.3"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "cli_out"
    assert (out / "adapter_model.safetensors").is_file()
    assert yaml.safe_load((out / "train_config.yaml").read_text())["alpha"] == 0.3
    steps = json.loads((out / "train_log.json").read_text())["steps"]
    assert [s["procon/coef"] for s in steps] == [0.3, 0.3]
    bad = CliRunner().invoke(app, ["train", "--config", str(path), "--set", "alpah=0.3"])
    assert bad.exit_code == 2 and "unknown config key 'alpah'" in bad.output


# ---------------------------------------------------------------------------------------------
# Drift monitoring
# ---------------------------------------------------------------------------------------------


def test_drift_monitoring_during_training(tmp_path, tiny_tokenizer, data):
    res = run_tiny(tmp_path, tiny_tokenizer, data, method="procon", alpha=0.5, drift_every_steps=3,
                   drift_harmful=data["harmful"], drift_harmless=data["harmless"], drift_samples=6,
                   report_to="tensorboard")
    drift = [h for h in res.log_history if "drift/cos_mean" in h]
    assert [h["step"] for h in drift] == [0, 3, 6]
    # TensorBoard: the drift event file sits in the trainer's own run folder, next to CE & co.
    runs = {p.parent for p in (res.output_dir / "runs").rglob("events.out.tfevents*")}
    assert len(runs) == 1 and len(list(next(iter(runs)).glob("events.out.tfevents*"))) == 2
    assert drift[0]["drift/cos_mean"] == pytest.approx(1.0)  # the original model against itself
    assert all(-1.0 <= h["drift/cos_min"] <= h["drift/cos_mean"] <= 1.0 + 1e-6 for h in drift)
    assert (res.output_dir / "drift_history.json").is_file()


def test_yaml_no_means_the_string_no_for_non_boolean_fields():
    from safeanchor.train.config import ConfigError, load_config

    cfg = load_config(None, ["save_strategy=no", "method=sft"])  # YAML 1.1 reads `no` as False
    assert str(cfg.save_strategy.value if hasattr(cfg.save_strategy, "value") else cfg.save_strategy) == "no"
    with pytest.raises(ConfigError, match="save_strategy"):
        load_config(None, ["save_strategy=yes"])


def test_yaml_exponent_without_dot_is_a_float():
    from safeanchor.train.config import ConfigError, load_config

    cfg = load_config(None, ["learning_rate=2e-3", "alpha=1e-1", "method=procon"])  # YAML 1.1: strings
    assert cfg.learning_rate == 0.002 and cfg.alpha == 0.1
    with pytest.raises(ConfigError, match="learning_rate.*must be a number"):
        load_config(None, ["learning_rate=fast"])


# ---------------------------------------------------------------------------------------------
# Every field checked by its declared type and range; "the same run"; the output folder
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, message", [
    ("safety_seed=abc", r"safety_seed must be an integer in \[0, 4294967295\]; got 'abc'"),
    ("data_seed=abc", r"data_seed must be an integer in \[0, 4294967295\] or null; got 'abc'"),
    ("seed=-1", r"seed must be an integer in \[0, 4294967295\]; got -1"),
    ("adam_beta1=5", r"adam_beta1 must be a number in \[0, 1\); got 5"),
    ("adam_beta2=1", r"adam_beta2 must be a number in \[0, 1\); got 1"),
    ("adam_epsilon=-1e-8", r"adam_epsilon must be a number >= 0"),
    ("weight_decay=-0.1", r"weight_decay must be a number >= 0"),
    ("max_grad_norm=-1", r"max_grad_norm must be a number >= 0"),
    ("label_smoothing_factor=1.5", r"label_smoothing_factor must be a number in \[0, 1\)"),
    ("lr_scheduler_type=bogus", r"lr_scheduler_type must be one of linear, cosine, .*; got 'bogus'"),
    ("optim=bogus", r"optim must be one of adamw_torch, .*; got 'bogus'"),
    ("lora_dropout=1", r"lora_dropout must be a number in \[0, 1\); got 1"),
    ("lora_r=2.5", r"lora_r must be an integer >= 1; got 2.5"),
    ("max_length=4", r"max_length must be an integer >= 8; got 4"),
    ("use_lora=1", r"use_lora must be true or false; got 1 \(int\)"),
    ("progress=0", r"progress must be true or false; got 0 \(int\)"),
    ("dataloader_num_workers=-1", r"dataloader_num_workers must be an integer >= 0"),
    ("optim_args=3", r"optim_args must be a string or null; got 3 \(int\)"),
    ("lora_target_modules=[1, 2]", r"lora_target_modules must be a list of strings or null; got \[1, 2\]"),
    ("train_columns=prompt", r"train_columns must be a mapping record field -> column name"),
    ("train_columns={prompt: 3}", r"train_columns must be a mapping record field -> column name"),
    ("train_columns={prmpt: instruction}", r"train_columns maps unknown record field\(s\) \['prmpt'\]"),
])
def test_every_field_is_checked_by_its_type_and_range(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override, "report_to=none"])


def test_a_bad_value_in_a_file_names_its_line_also_with_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: sft\nadam_beta2: 2\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:2: adam_beta2 must be a number in \[0, 1\); got 2"):
        load_config(path, ["report_to=none"])
    with pytest.raises(ConfigError, match=r"run\.yaml \(with --set overrides\): adam_beta1 must be"):
        load_config(path, ["adam_beta1=3", "report_to=none"])


def test_the_exempt_settings_are_fields_and_the_rest_is_compared():
    from safeanchor.train.config import NON_RESULT_KEYS, config_keys, result_settings, setting_differences

    assert NON_RESULT_KEYS <= set(config_keys())  # no typo: each names a field
    a = load_config(None, ["report_to=none"]).to_yaml_dict()
    for key in ("adam_beta2", "label_smoothing_factor", "data_seed", "lr_scheduler_kwargs", "neftune_noise_alpha",
                "seed", "model", "method", "lora_r", "num_train_epochs", "max_steps", "optim"):
        assert key in result_settings(a), key
    b = {**a, "adam_beta2": 0.5, "logging_steps": 7, "output_dir": "elsewhere", "save_steps": 3}
    assert setting_differences(a, b) == ["adam_beta2: 0.999 -> 0.5"]
    # a record of this format (it holds the data fingerprints) written before the field existed: it had the default
    older = {**{k: v for k, v in a.items() if k != "adam_beta2"}, "data_fingerprints": {}}
    assert setting_differences(older, a) == []
    assert setting_differences(older, b) == ["adam_beta2: 0.999 -> 0.5"]
    # a record of the older format (a fixed subset, no data fingerprints): compared on what it recorded
    subset = {k: a[k] for k in ("model", "method", "seed", "learning_rate")}
    assert setting_differences(subset, b) == []
    assert setting_differences(subset, {**b, "seed": 5}) == ["seed: 42 -> 5"]


def test_overwrite_removes_the_previous_runs_files(tmp_path, tiny_tokenizer, data):
    """A LoRA run replaced by full fine-tuning leaves no adapter behind: loading the folder gives
    the new weights (a stale adapter_config.json would be picked up by load_model)."""
    from safeanchor.models import load_model, model_fingerprint

    run_tiny(tmp_path, tiny_tokenizer, data, method="sft", save_strategy="steps", save_steps=2)
    out = tmp_path / "out"
    assert (out / "adapter_model.safetensors").is_file() and (out / "checkpoint-6").is_dir()
    run_tiny(tmp_path, tiny_tokenizer, data, method="sft", use_lora=False, overwrite_output_dir=True,
             learning_rate=0.05)
    names = {p.name for p in out.iterdir()}
    assert not {n for n in names if n.startswith("adapter_") or n.startswith("checkpoint-")}, names
    assert "model.safetensors" in names and "README.md" not in names  # PEFT's model card went with the adapter
    report = json.loads((out / "train_report.json").read_text())
    assert report["adapter"] == "full" and report["data_fingerprints"]
    model, _ = load_model(str(out), device="cpu")
    assert model_fingerprint(model) == report["trained_fingerprint"]


def test_resume_accepts_other_logging_and_checkpoint_settings(tmp_path, tiny_tokenizer, data):
    common = dict(method="sft", save_strategy="steps", save_steps=2, lora_dropout=0.0)
    full = run_tiny(tmp_path / "full", tiny_tokenizer, data, **common)
    import shutil

    shutil.copytree(full.output_dir / "checkpoint-4", tmp_path / "resumed" / "out" / "checkpoint-4")
    state = json.loads((full.output_dir / "checkpoint-4" / "safeanchor_state.json").read_text())
    assert state["run_config"]["data_fingerprints"][data["train"]]  # the data's sha256 travels with the checkpoint
    resumed = run_tiny(tmp_path / "resumed", tiny_tokenizer, data, resume_from_checkpoint="last",
                       logging_steps=3, save_total_limit=1, report_to="tensorboard", **common)
    assert [r["step"] for r in resumed.steps] == list(range(6))
    assert resumed.steps[-1]["ce"] == pytest.approx(full.steps[-1]["ce"], rel=1e-5)


def test_the_drift_monitor_does_not_change_the_run(tmp_path, tiny_tokenizer, data):
    """Why drift_* may differ on a resume (NON_RESULT_KEYS): measuring moves no RNG, the steps are identical."""
    plain = run_tiny(tmp_path / "a", tiny_tokenizer, data, method="sft")  # LoRA dropout on: RNG in use
    watched = run_tiny(tmp_path / "b", tiny_tokenizer, data, method="sft", drift_every_steps=2,
                       drift_harmful=data["harmful"], drift_harmless=data["harmless"], drift_samples=6)
    assert [r["ce"] for r in watched.steps] == [r["ce"] for r in plain.steps]


OLD_RESULT_KEYS = (  # what a checkpoint's run_config held before every setting was compared (session 7)
    "model", "precision", "train_data", "train_columns", "max_train_samples", "max_length", "padding_side",
    "method", "alpha", "alpha_schedule", "alpha_after", "schedule_length", "schedule_unit", "warmup_placement",
    "regularizer_options", "safety_samples", "safety_harmful", "safety_refusals", "safety_seed", "use_lora",
    "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "learning_rate", "per_device_train_batch_size",
    "gradient_accumulation_steps", "num_train_epochs", "max_steps", "seed", "lr_scheduler_type", "warmup_steps",
    "weight_decay", "optim", "max_grad_norm")


def test_a_checkpoint_of_the_older_format_resumes_on_the_settings_it_recorded(tmp_path, tiny_tokenizer, data):
    """A checkpoint written before (its run_config: a fixed subset, no data fingerprints, no base
    fingerprint) resumes; a difference in a setting it did record is still refused."""
    import shutil

    common = dict(method="sft", save_strategy="steps", save_steps=2, lora_dropout=0.0)
    full = run_tiny(tmp_path / "full", tiny_tokenizer, data, **common)
    ckpt = tmp_path / "resumed" / "out" / "checkpoint-4"
    shutil.copytree(full.output_dir / "checkpoint-4", ckpt)
    state = json.loads((ckpt / "safeanchor_state.json").read_text())
    state["run_config"] = {k: state["run_config"][k] for k in OLD_RESULT_KEYS}
    state.pop("base_fingerprint", None)
    (ckpt / "safeanchor_state.json").write_text(json.dumps(state))
    with pytest.raises(ConfigError, match=r"learning_rate: 0\.01 -> 0\.02"):
        run_tiny(tmp_path / "resumed", tiny_tokenizer, data, resume_from_checkpoint="last", learning_rate=0.02, **common)
    resumed = run_tiny(tmp_path / "resumed", tiny_tokenizer, data, resume_from_checkpoint="last", **common)
    assert resumed.steps[-1]["ce"] == pytest.approx(full.steps[-1]["ce"], rel=1e-5)
