"""The main job: start model -> r-direction -> fine-tune with each method -> evaluate -> drift -> report.

``safeanchor demo`` and ``safeanchor bench`` are two presets of :class:`ExperimentConfig`; both
run :func:`run_experiment`, which is a recipe of numbered stages, each writing its artifacts to
``<out>/<NN_stage>/...`` and skipped when already done (so an interrupted run resumes):

1. ``01_start``      the safety-aligned starting model (``embedded:smollm2-135m-safe``, built once)
2. ``02_direction``  the starting model's r-direction (all layers, last prompt token)
3. ``03_data``       training sets per scenario (task data; attack: + harmful->compliant pairs)
4. ``04_train/<run>`` one fine-tuning run per (method, scenario, seed)
5. ``05_eval/<run>``  ASR, over-refusal, task accuracy (eval.json with per-prompt records)
6. ``06_drift/<run>`` per-layer cosine of the r-direction vs the start
7. ``results.json`` + ``report/`` (report.md, report.html, PNGs)

>>> cfg = ExperimentConfig.preset("quick")        # doctest: +SKIP
>>> run_experiment(cfg, "runs/quick")             # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from ..io import read_json, write_json

console = Console()

# ---------------------------------------------------------------------------------------------
# Methods of the matrix: name -> training overrides (+ an optional post-hoc step)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    name: str
    paper_name: str
    train: dict[str, Any] | None  # SafeTrainingConfig overrides; None = no training (the start model)
    post_hoc: str | None = None  # "safe_lora"


def method_specs(cfg: "ExperimentConfig") -> dict[str, MethodSpec]:
    """The methods the papers compare, at this experiment's settings."""
    asft_opts = {"asft": {"aligned_model": cfg.model, "unaligned_model": cfg.unaligned_model}}
    wu = {"alpha": cfg.procon_alpha_strong, "alpha_schedule": "warmup", "alpha_after": 0.0,
          "schedule_unit": cfg.procon_warmup_unit}
    s = {"alpha": cfg.procon_alpha, "alpha_schedule": "constant"}
    specs = [
        MethodSpec("start", "vanilla (aligned start)", None),
        MethodSpec("sft", "plain IFT", {"method": "sft"}),
        MethodSpec("sft_safety", "IFT + safety data", {"method": "safety_data"}),
        MethodSpec("safe_lora", "Safe LoRA", {"method": "sft"}, post_hoc="safe_lora"),
        MethodSpec("asft", "AsFT", {"method": "asft", "alpha": cfg.asft_lambda, "regularizer_options": asft_opts}),
        MethodSpec("procon_s", "ProCon_s", {"method": "procon", **s}),
        MethodSpec("procon_wu", "ProCon_wu", {"method": "procon", **wu, "schedule_length": cfg.procon_warmup}),
        MethodSpec("procon_s_safe", "ProCon_s_safe", {"method": "procon_safe", **s}),
        MethodSpec("procon_wu_safe", "ProCon_wu_safe",
                   {"method": "procon_safe", **wu, "schedule_length": cfg.procon_warmup_safe}),
    ]
    return {m.name: m for m in specs}


METHOD_NAMES = ("start", "sft", "sft_safety", "safe_lora", "asft", "procon_s", "procon_wu",
                "procon_s_safe", "procon_wu_safe")
SCENARIOS = ("benign", "attack")


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class ExperimentConfig:
    """One experiment: which model, task, methods, scenarios, seeds and sizes. Load from YAML
    with :meth:`from_yaml` (unknown keys are errors) or take a preset (``demo``, ``bench``, ``quick``)."""

    model: str = _f("embedded:smollm2-135m-safe", "safety-aligned starting model")
    unaligned_model: str = _f("embedded:smollm2-135m-instruct",
                              "the unaligned counterpart (AsFT/Safe LoRA alignment direction; attack answers)")
    task: str = _f("arithmetic", "bundled downstream task (arithmetic, topic)")
    methods: list = _f(["start", "sft", "procon_wu_safe"], f"methods to run, from {', '.join(METHOD_NAMES)}")
    scenarios: list = _f(["benign"], "benign (task data only) and/or attack (task data + harmful->compliant pairs)")
    seeds: list = _f([0], "training seeds")
    train_samples: int = _f(480, "task training examples")
    attack_samples: int = _f(24, "harmful -> compliant pairs mixed in for the attack scenario")
    safety_samples: int = _f(96, "harmful -> refusal samples for *_safe / sft_safety (paper: ~1,000 of ~17k)")
    epochs: float = _f(2.0, "training epochs")
    batch_size: int = _f(8, "per-device batch size")
    learning_rate: float = _f(5e-4, "LoRA learning rate")
    lora_r: int = _f(8, "LoRA rank (paper 8)")
    lora_alpha: int = _f(16, "LoRA alpha (paper 16)")
    max_length: int = _f(256, "max tokens per training example")
    procon_alpha: float = _f(0.1, "ProCon_s coefficient (paper 0.1-0.2)")
    procon_alpha_strong: float = _f(1.0, "ProCon_wu warm-up coefficient (paper 1-2)")
    procon_warmup: float = _f(1.0, "ProCon_wu warm-up length (paper ~4 of 10 epochs)")
    procon_warmup_safe: float = _f(0.5, "ProCon_wu_safe warm-up length (paper: halved with safety data)")
    procon_warmup_unit: str = _f("epoch", "unit of the warm-up lengths: epoch or step")
    asft_lambda: float = _f(1.0, "AsFT coefficient (reference scripts: 1)")
    safe_lora_tau: float = _f(0.5, "Safe LoRA threshold")
    direction_samples: int = _f(128, "prompts per side to extract the r-direction (reference: 128)")
    eval_harmful: list = _f(["bundled:harmful:test"], "held-out harmful prompt sources (ASR)")
    eval_harmless: str = _f("bundled:harmless:test", "harmless prompts (over-refusal)")
    eval_limit: int | None = _f(None, "cap per prompt source (None = all)")
    task_eval_samples: int = _f(200, "task test items")
    max_new_tokens: int = _f(64, "new tokens per safety answer")
    task_max_new_tokens: int = _f(16, "new tokens per task answer")
    gen_batch_size: int = _f(32, "generation batch size")
    precision: str = _f("auto", "auto, fp32, bf16, fp16")

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHOD_NAMES]
        if bad or not self.methods:
            raise ValueError(f"methods: unknown {bad}; allowed: {', '.join(METHOD_NAMES)}")
        bad = [s for s in self.scenarios if s not in SCENARIOS]
        if bad or not self.scenarios:
            raise ValueError(f"scenarios: unknown {bad}; allowed: {', '.join(SCENARIOS)}")
        if not self.seeds or not all(isinstance(s, int) for s in self.seeds):
            raise ValueError(f"seeds must be a non-empty list of integers; got {self.seeds!r}")
        if self.procon_warmup_unit not in ("epoch", "step"):
            raise ValueError(f"procon_warmup_unit must be epoch or step; got {self.procon_warmup_unit!r}")
        for name in ("train_samples", "batch_size", "direction_samples", "task_eval_samples", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if "attack" in self.scenarios and self.attack_samples < 1:
            raise ValueError("attack_samples must be >= 1 when the attack scenario is on")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ExperimentConfig":
        presets: dict[str, dict[str, Any]] = {
            "demo": {},
            "bench": {"methods": list(METHOD_NAMES), "scenarios": ["benign", "attack"]},
            "quick": {"methods": ["start", "sft", "procon_wu_safe"], "scenarios": ["benign"],
                      "train_samples": 64, "epochs": 1.0, "safety_samples": 16, "eval_limit": 16,
                      "task_eval_samples": 32, "direction_samples": 32, "max_new_tokens": 32},
        }
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; presets: {', '.join(presets)}")
        return cls(**{**presets[name], **overrides})

    @classmethod
    def from_yaml(cls, path: str | Path, base: "ExperimentConfig | None" = None) -> "ExperimentConfig":
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ValueError(f"{where}: malformed YAML ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of config keys")
        preset = data.pop("preset", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown config key(s) {unknown}; known keys: {', '.join(sorted(known))}")
        if preset:
            return cls.preset(preset, **data)
        start = dataclasses.asdict(base) if base else {}
        return cls(**{**start, **data})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------


class Stages:
    """Runs named stages once: a stage's directory is written under a temp name and renamed when
    the stage finishes, with a ``stage.json`` holding its summary, so a rerun skips it."""

    def __init__(self, out: Path):
        self.out = out
        self.timings: dict[str, float] = {}

    def done(self, name: str) -> bool:
        return (self.out / name / "stage.json").is_file()

    def run(self, name: str, fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        final = self.out / name
        if self.done(name):
            console.print(f"[dim]✓ {name} (done earlier, skipped)[/dim]")
            return read_json(final / "stage.json")
        tmp = final.parent / f".{final.name}.partial"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        console.rule(f"[bold]{name}")
        t0 = time.perf_counter()
        summary = fn(tmp)
        summary = {**summary, "seconds": round(time.perf_counter() - t0, 1)}
        write_json(tmp / "stage.json", summary)
        if final.exists():  # an unfinished earlier attempt without stage.json
            shutil.rmtree(final)
        tmp.rename(final)
        self.timings[name] = summary["seconds"]
        console.print(f"[green]✓ {name}[/green] in {summary['seconds']:.0f}s")
        return summary
