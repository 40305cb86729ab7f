"""The main job: start model -> r-direction -> fine-tune with each method -> evaluate -> drift -> report.

``safeanchor demo`` and ``safeanchor bench`` are two presets of :class:`ExperimentConfig`; both
run :func:`run_experiment`, which is a recipe of numbered stages, each writing its artifacts to
``<out>/<NN_stage>/...`` and skipped when already done (so an interrupted run resumes):

1. ``01_start``      the safety-aligned starting model (``embedded:smollm2-135m-safe``, built once)
2. ``02_direction``  the starting model's r-direction (all layers, last prompt token)
3. ``03_data``       training sets per scenario (task data; attack: + harmful->compliant pairs)
4. ``04_train/<run>`` one fine-tuning run per (method, scenario, seed)
5. ``05_eval/<run>``  ASR, over-refusal, task accuracy (eval.json with per-prompt records)
6. ``06_drift/<run>`` per-layer cosine of the r-direction vs the start (``drift: false`` skips it)

Runs go seed-major (train, eval, drift), so an interrupted bench already holds whole seeds of
every method; ``jobs=N`` runs N of them at once in worker processes (each with its share of the CPU
threads, or its own GPU when there are N).
7. ``results.json`` + ``report/`` (report.md, report.html, PNGs)

>>> cfg = ExperimentConfig.preset("quick")        # doctest: +SKIP
>>> run_experiment(cfg, "runs/quick")             # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from ..configfile import ConfigError, check_keys, check_annotated, located, located_error, read_mapping
from ..io import read_json, write_json
from ..methods import get_method, method_names
from .attack_data import attack_pairs
from .results import collect_results
from .stages import Stages

console = Console()

SCENARIOS = ("benign", "attack")
SAFE_START = "embedded:smollm2-135m-safe"

# ExperimentConfig keys that one mapping replaced, each with what to write instead
RENAMED_KEYS = {
    "procon_alpha": "method_options: {procon: {alpha: ...}, procon_safe: {alpha: ...}}",
    "procon_alpha_strong": "method_options: {procon_wu: {alpha: ...}, procon_wu_safe: {alpha: ...}}",
    "procon_warmup": "method_options: {procon_wu: {schedule_length: ...}}",
    "procon_warmup_safe": "method_options: {procon_wu_safe: {schedule_length: ...}}",
    "procon_warmup_unit": "method_options: {procon_wu: {schedule_unit: step}, procon_wu_safe: {schedule_unit: step}}",
    "asft_lambda": "method_options: {asft: {alpha: ...}}",
    "safe_lora_tau": "method_options: {safe_lora: {alpha: ...}}",
}


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def _refuse_duplicates(name: str, values: list) -> None:
    """A list entry given twice would be run (or counted) twice: a seed counted twice narrows the spread."""
    seen, twice = set(), []
    for v in values:
        key = repr(v)
        if key in seen and v not in twice:
            twice.append(v)
        seen.add(key)
    if twice:
        raise ConfigError(f"{name}: {', '.join(map(repr, twice))} listed more than once; list each once")


@dataclass
class ExperimentConfig:
    """One experiment: which model, task, methods, scenarios, seeds and sizes. Load from YAML
    with :meth:`from_yaml` (unknown keys are errors) or take a preset (``demo``, ``bench``, ``quick``).
    Methods and their coefficients come from the method table (:mod:`safeanchor.methods`)."""

    model: str = _f(SAFE_START, "safety-aligned starting model")
    unaligned_model: str = _f("embedded:smollm2-135m-instruct",
                              "the unaligned counterpart (AsFT/Safe LoRA alignment direction; attack answers)")
    task: str = _f("arithmetic_steps", "bundled downstream task (arithmetic_steps, arithmetic, topic)")
    methods: list = _f(["start", "sft", "procon_wu_safe"], "methods to run, from the method table (safeanchor.methods)")
    method_options: dict = _f({}, "per-method training overrides, e.g. {procon_wu_safe: {alpha: 2, schedule_length: 1}} "
                                  "(keys of the training config; alpha is each method's coefficient: ProCon α, AsFT λ, "
                                  "Safe LoRA τ; defaults in the method table)")
    variants: dict = _f({}, "named variants of a method, to compare settings in one experiment: "
                            "{name: {method: procon_wu_safe, alpha: 1, regularizer_options: {procon: {...}}}}; a variant "
                            "name can then be listed in methods")
    scenarios: list = _f(["benign"], "benign (task data only) and/or attack (task data + harmful->compliant pairs)")
    seeds: list = _f([0], "training seeds")
    train_samples: int = _f(192, "task training examples")
    attack_samples: int = _f(24, "harmful -> compliant pairs mixed in for the attack scenario")
    safety_samples: int = _f(32, "harmful -> refusal samples for *_safe methods (paper: ~1,000 of ~17k)")
    epochs: float = _f(2.0, "training epochs of the standard run (n); a method with the paper's warm-up "
                            "(procon_wu*) trains its m warm-up epochs before them, and sft_long as many")
    batch_size: int = _f(8, "per-device batch size")
    learning_rate: float = _f(2e-3, "LoRA learning rate (at 5e-4 plain SFT left the 135M model's ASR unchanged: 13.2% -> 15.4%)")
    lora_r: int = _f(8, "LoRA rank (paper 8)")
    lora_alpha: int = _f(16, "LoRA alpha (paper 16)")
    max_length: int = _f(256, "max tokens per training example")
    direction_samples: int = _f(128, "prompts per side to extract the r-direction (reference: 128)")
    eval_harmful: list = _f(["bundled:harmful:test"], "held-out harmful prompt sources (ASR)")
    eval_harmless: str = _f("bundled:harmless:test", "harmless prompts (over-refusal)")
    eval_limit: int | None = _f(None, "cap per prompt source (None = all)")
    task_eval_samples: int = _f(200, "task test items")
    task_split: str = _f("test", "split of the task's evaluation items: test (the fixed 200-item test set) or val "
                                 "(a disjoint fixed set, for tuning)")
    max_new_tokens: int = _f(32, "new tokens per safety answer (a refusal shows in the first ~12)")
    task_max_new_tokens: int = _f(40, "new tokens per task answer (a worked arithmetic_steps answer is ~25)")
    gen_batch_size: int = _f(32, "generation batch size")
    precision: str = _f("auto", "auto, fp32, bf16, fp16")
    drift: bool = _f(True, "measure each run's r-direction drift (06_drift; ~17 s a run on a 2-core CPU)")

    def __post_init__(self) -> None:
        from ..methods import get_method
        from ..train.config import config_keys

        if not self.methods:
            raise ConfigError(f"methods: name at least one method; known: {', '.join(method_names())}")
        keys = config_keys()
        if not isinstance(self.variants, dict):
            raise ConfigError(f"variants must be a mapping name -> {{method: ..., options}}; got {self.variants!r}")
        for name, spec in self.variants.items():
            if name in method_names():
                raise ConfigError(f"variants.{name}: the name of a method of the table; choose another name")
            if not isinstance(spec, dict) or "method" not in spec:
                raise ConfigError(f"variants.{name} must be a mapping with a method and its options; got {spec!r}")
            try:
                if not get_method(spec["method"]).trains:
                    raise ValueError(f"method {spec['method']!r} trains nothing")
            except ValueError as e:
                raise ConfigError(f"variants.{name}.method: {e}") from None
            check_keys({k: v for k, v in spec.items() if k != "method"}, keys, where=f"variants.{name}")
        for m in self.methods:
            try:
                self.method_of(m)
            except ValueError as e:
                raise ConfigError(f"methods: {e}") from None
        if not isinstance(self.method_options, dict):
            raise ConfigError(f"method_options must be a mapping method -> options; got {self.method_options!r}")
        for m, opts in self.method_options.items():
            try:
                method = self.method_of(m)
            except ValueError as e:
                raise ConfigError(f"method_options.{m}: {e}") from None
            if not method.trains:
                raise ConfigError(f"method_options.{m}: method {m!r} trains nothing; it takes no options")
            if not isinstance(opts, dict):
                raise ConfigError(f"method_options.{m} must be a mapping of training config keys; got {opts!r}")
            try:
                check_keys(opts, keys, where=f"method_options.{m}")
            except ConfigError as e:
                raise ConfigError(str(e)) from None
        check_annotated(self)
        for name in ("epochs", "learning_rate"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0; got {getattr(self, name)!r}")
        for name in ("lora_r", "lora_alpha", "gen_batch_size", "task_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1; got {getattr(self, name)!r}")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ConfigError(f"eval_limit must be null (all) or >= 1; got {self.eval_limit!r}")
        if self.task_split not in ("test", "val"):
            raise ConfigError(f"task_split must be test or val; got {self.task_split!r}")
        if self.safety_samples < 1 and any(self.method_of(m).safety_data for m in self.methods):
            raise ConfigError("safety_samples must be >= 1: a method mixes in safety data")
        bad = [s for s in self.scenarios if s not in SCENARIOS]
        if bad or not self.scenarios:
            raise ConfigError(f"scenarios: unknown {bad}; allowed: {', '.join(SCENARIOS)}")
        if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds):
            raise ConfigError(f"seeds must be a non-empty list of integers; got {self.seeds!r}")
        from ..train.config import PRECISIONS, SEED_MAX

        bad = [s for s in self.seeds if not 0 <= s <= SEED_MAX]
        if bad:
            raise ConfigError(f"seeds must be integers in [0, {SEED_MAX}]; got {bad}")
        if not isinstance(self.eval_harmful, (list, tuple)) or not all(isinstance(x, str) and x.strip()
                                                                       for x in self.eval_harmful):
            raise ConfigError(f"eval_harmful must be a list of data sources; got {self.eval_harmful!r}")
        for name in ("methods", "scenarios", "seeds", "eval_harmful"):
            _refuse_duplicates(name, getattr(self, name))
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        from ..data.tasks import TASKS

        if self.task not in TASKS:
            raise ConfigError(f"task: unknown task {self.task!r}; bundled tasks: {', '.join(TASKS)}")
        for name in ("train_samples", "batch_size", "direction_samples", "task_eval_samples", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1; got {getattr(self, name)}")
        if "attack" in self.scenarios and self.attack_samples < 1:
            raise ConfigError("attack_samples must be >= 1 when the attack scenario is on")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ExperimentConfig":
        presets: dict[str, dict[str, Any]] = {
            # the demo: the four models of the question (start, SFT, SFT + safety data, ProCon_wu_safe),
            # benign, seed 0, with drift; 64 task examples x 2 epochs at batch 4 (SFT: 32 optimizer steps;
            # core bench: 24 at batch 8), 16 safety samples, the whole 200-item task test set
            "demo": {"methods": ["start", "sft", "sft_safe", "procon_wu_safe"], "train_samples": 64,
                     "safety_samples": 16, "batch_size": 4, "max_new_tokens": 24, "gen_batch_size": 100},
            "bench": {"methods": method_names(bench=True), "scenarios": ["benign", "attack"], "train_samples": 160},
            "quick": {"methods": ["start", "sft", "procon_wu_safe"], "scenarios": ["benign"],
                      "train_samples": 64, "epochs": 1.0, "safety_samples": 16, "eval_limit": 16,
                      "task_eval_samples": 32, "direction_samples": 32, "max_new_tokens": 32},
        }
        if name not in presets:
            raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(presets)}")
        return cls(**{**presets[name], **overrides})

    @classmethod
    def from_yaml(cls, path: str | Path, base: "ExperimentConfig | None" = None) -> "ExperimentConfig":
        """Read a bench YAML (keys of this class, plus ``preset``); errors are ConfigError naming file, line, key."""
        data, lines = read_mapping(path)
        preset = data.pop("preset", None)
        check_keys(data, [f.name for f in dataclasses.fields(cls)], where=str(path), lines=lines,
                   renamed=RENAMED_KEYS)
        try:
            if preset:
                cfg = cls.preset(preset, **data)
            else:
                start = dataclasses.asdict(base) if base else {}
                cfg = cls(**{**start, **data})
        except (TypeError, ValueError) as e:
            raise ConfigError(located_error(str(e), str(path), lines)) from None
        cfg.source = (str(path), lines)  # the checks before the first stage name the key's line
        return cfg

    #: ``(file, key -> line)`` when read by :meth:`from_yaml`; unannotated, so not a field (not in to_dict)
    source = None

    def where(self, key: str) -> str:
        """``file:line: `` of ``key`` for a message (empty for a config built in Python)."""
        if self.source is None:
            return ""
        return located(self.source[0], key, self.source[1]) + ": "

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def method_of(self, name: str):
        """The method-table row behind a method or variant name."""
        if name in self.variants:
            return get_method(self.variants[name]["method"])
        return get_method(name)

    def options_of(self, name: str) -> dict[str, Any]:
        """A method's or variant's training options: the variant's own, then ``method_options``."""
        own = {k: v for k, v in (self.variants.get(name) or {}).items() if k != "method"}
        return {**own, **dict(self.method_options.get(name) or {})}


# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    method: str
    scenario: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-{self.scenario}-s{self.seed}"


def planned_runs(cfg: ExperimentConfig) -> list[Run]:
    """Every (method, scenario, seed) to train; the untrained start model is evaluated once."""
    return [Run(method, scenario, seed) for seed in cfg.seeds for scenario in cfg.scenarios
            for method in cfg.methods if cfg.method_of(method).trains]


# Seconds on a 2-core AVX2 CPU for SmolLM2-135M (stage.json timings of `safeanchor demo` on a fresh
# cache and of configs/bench/core_budget.yaml, session 10; a machine with AVX-512 ran training 2.2x and
# generation 1.8x faster, benchmarks/bench_precision.py): the alignment build (incl. the GGUF conversion), direction
# extraction, the attack-data stage, one training example's forward + backward (arithmetic_steps,
# ~85 tokens), the fixed cost of a training run (model load, trainer), and for generation: one
# prompt's prefill, one decoding step's fixed cost and one row's cost in it; then one drift
# measurement, and the throughput gain of two 1-thread runs at once over one 2-thread run
# (--jobs 2; inferred over core_budget, not measured side by side: BENCHMARKS.md). Only used for the estimate printed up front; other models/machines scale it.
# A method's own fixed cost (ProCon's anchor pass) is its table row's ``setup_seconds``.
_EST = {"align": 1140.0, "direction": 22.0, "attack_data": 25.0, "sample": 0.62, "run_setup": 10.0,
        "prompt": 0.11, "gen_step": 0.08, "gen_row": 0.004, "eval_setup": 5.0, "drift": 17.0,
        "jobs_gain": 1.2}


def _generation_seconds(n: int, new_tokens: int, batch: int) -> float:
    steps = -(-n // batch) * new_tokens
    return n * _EST["prompt"] + steps * _EST["gen_step"] + n * new_tokens * _EST["gen_row"]


def estimate_seconds(cfg: ExperimentConfig, *, start_built: bool, jobs: int = 1) -> float:
    """The printed estimate of a whole experiment on a 2-core CPU (see ``_EST``), in seconds."""
    runs = planned_runs(cfg)
    per_run = 0.0
    for r in runs:
        method = cfg.method_of(r.method)
        n = cfg.train_samples + (cfg.attack_samples if r.scenario == "attack" else 0)
        if method.safety_data:
            n += cfg.safety_samples
        steps = -(-n // cfg.batch_size) * run_epochs(cfg, r.method)
        per_run += steps * cfg.batch_size * _EST["sample"] + _EST["run_setup"] + method.setup_seconds
    cap = cfg.eval_limit or 10**9
    n_safety = min(cap, 91) * len(cfg.eval_harmful) + min(cap, 84)  # bundled test sizes; others similar
    eval_s = (_EST["eval_setup"] + _generation_seconds(n_safety, cfg.max_new_tokens, cfg.gen_batch_size)
              + _generation_seconds(cfg.task_eval_samples, cfg.task_max_new_tokens, cfg.gen_batch_size))
    per_run += len(runs) * (eval_s + (_EST["drift"] if cfg.drift else 0))
    if jobs > 1 and len(runs) > 1:
        per_run /= _EST["jobs_gain"]
    return ((0 if start_built else _EST["align"]) + _EST["direction"]
            + (_EST["attack_data"] if "attack" in cfg.scenarios else 0) + eval_s + per_run)


def saved_config(cfg_file: Path) -> dict[str, Any]:
    """An experiment's saved ``experiment.json``; a field added to :class:`ExperimentConfig` after
    it was written takes its default (the behaviour that run had)."""
    defaults = {}
    for f in dataclasses.fields(ExperimentConfig):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            defaults[f.name] = f.default_factory()  # type: ignore[misc]
    return {**defaults, **read_json(cfg_file)}


def extension_refused(saved: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Why ``new`` cannot continue the experiment ``saved`` (None: it can). Adding methods (or
    variants) is allowed, every finished run keeps its meaning; any other change is not."""
    others = sorted(k for k in set(saved) | set(new)
                    if k not in ("methods", "variants", "method_options") and saved.get(k) != new.get(k))
    if others:
        return f"{', '.join(others)} differ"
    if not set(saved["methods"]) <= set(new["methods"]):
        return f"methods {sorted(set(saved['methods']) - set(new['methods']))} would be dropped"
    for key in ("variants", "method_options"):
        changed = [m for m in saved["methods"] if (saved.get(key) or {}).get(m) != (new.get(key) or {}).get(m)]
        if changed:
            return f"{key} of {changed} differ"
    return None


def report_finished(cfg: ExperimentConfig, out: str | Path, *, kind: str = "bench") -> dict[str, Any]:
    """Results and report from the runs of ``out`` that are finished (trained and evaluated),
    without running anything: an interrupted or still running bench reports its whole seeds.
    ``results.json`` then says ``partial`` with the runs done and planned."""
    out = Path(out)
    cfg_file = out / "experiment.json"
    if not cfg_file.is_file():
        raise ValueError(f"{out} holds no experiment (no experiment.json)")
    saved = saved_config(cfg_file)
    if saved != cfg.to_dict():
        raise ValueError(f"{out} holds a run with a different configuration ({cfg_file}: "
                         f"{extension_refused(saved, cfg.to_dict()) or 'methods differ'})")
    stages = Stages(out, quiet=True)
    for name in ("01_start", "05_eval/start"):
        if not stages.done(name):
            raise ValueError(f"{out}: stage {name} is not finished; nothing to report yet")
    planned = planned_runs(cfg)
    done = [r for r in planned if stages.done(f"04_train/{r.name}") and stages.done(f"05_eval/{r.name}")
            and (not cfg.drift or stages.done(f"06_drift/{r.name}"))]
    if not done:
        raise ValueError(f"{out}: no run is trained and evaluated yet")
    results = collect_results(cfg, out, done, stages.summary("01_start"), kind=kind)
    if len(done) < len(planned):
        results["partial"] = {"runs_done": len(done), "runs_planned": len(planned),
                              "missing": [r.name for r in planned if r not in done]}
    write_json(out / "results.json", results)
    from ..report.summary import write_report

    write_report(results, out / "report")
    return results


def run_experiment(cfg: ExperimentConfig, out: str | Path, *, kind: str = "bench", jobs: int = 1) -> dict[str, Any]:
    """Run (or resume) the whole experiment into ``out``; returns the results dict (also
    written to ``out/results.json``) and writes ``out/report/``.

    ``jobs``: how many runs (train + eval + drift of one method, scenario and seed) go at once, each
    in its own worker process. On a CPU the threads are shared out (``torch.get_num_threads() //
    jobs`` each; on 2 cores: 1.075x on two short runs, ~1.2x inferred over a long bench, see
    BENCHMARKS.md); with at least ``jobs`` GPUs each worker gets its own. Every run's result is its
    own; the thread count can change the last bits of float sums, so each stage records it."""
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1; got {jobs!r}")
    from ..models import EMBEDDED_PREFIX, embedded_dir, is_built
    from .safety_alignment import is_current

    out = Path(out)
    cfg_file = out / "experiment.json"
    saved = saved_config(cfg_file) if cfg_file.exists() else None
    added: list[str] = []
    if saved is not None and saved != cfg.to_dict():
        why = extension_refused(saved, cfg.to_dict())
        if why:
            raise ValueError(f"{out} holds a run with a different configuration ({cfg_file}: {why}); "
                             "use another --out or delete it")
        added = [m for m in cfg.methods if m not in saved["methods"]]
    runs = planned_runs(cfg)
    # before any work (and before the folder is made): every run's training config, every input
    check_training_configs(cfg, runs)
    check_inputs(cfg)
    stages = Stages(out)
    check_same_start(cfg, out, stages, runs)
    if added:
        console.print(f"extending {out} with methods {added} (its finished runs are kept)")
    out.mkdir(parents=True, exist_ok=True)
    write_json(cfg_file, cfg.to_dict())
    start_dir = embedded_dir(cfg.model[len(EMBEDDED_PREFIX):]) if cfg.model.startswith(EMBEDDED_PREFIX) else None
    start_built = start_dir is None or (is_built(start_dir) and (cfg.model != SAFE_START or is_current(start_dir)))
    est = estimate_seconds(cfg, start_built=start_built, jobs=jobs)
    console.print(f"[bold]safeanchor {kind}[/bold]: {len(runs)} fine-tuning run(s) "
                  f"({', '.join(cfg.methods)} × {', '.join(cfg.scenarios)} × seeds {cfg.seeds}) on {cfg.model}")
    console.print(f"estimated time on a 2-core AVX2 CPU: ~{est / 60:.0f} min"
                  + ("" if start_built else " (includes the one-time safety-alignment stage)")
                  + f"; output: {out}")
    t_start = time.perf_counter()

    start = stages.run("01_start", lambda d: _stage_start(cfg, d))
    stages.run("02_direction", lambda d: _stage_direction(cfg, d))
    data = stages.run("03_data", lambda d: _stage_data(cfg, d))
    stages.run("05_eval/start", lambda d: _stage_eval(cfg, None, d))
    # seed-major: an interrupted bench has whole seeds of every method to compare
    todo = [r for r in runs if any(not stages.done(s) for s in _run_stage_names(cfg, r))]
    if jobs == 1 or len(todo) <= 1:
        for run in runs:
            _run_stages(cfg, out, data, run, stages)
    else:
        _run_parallel(cfg, out, data, todo, jobs)

    results = collect_results(cfg, out, runs, start, kind=kind)
    write_json(out / "results.json", results)
    from ..report.summary import write_report

    paths = write_report(results, out / "report")
    console.print(f"[bold green]done[/bold green] in {(time.perf_counter() - t_start) / 60:.1f} min "
                  f"(estimate was {est / 60:.0f} min). Report: {paths['html']}")
    return results


def _run_stage_names(cfg: ExperimentConfig, run: Run) -> list[str]:
    return [f"04_train/{run.name}", f"05_eval/{run.name}"] + ([f"06_drift/{run.name}"] if cfg.drift else [])


def _run_stages(cfg: ExperimentConfig, out: Path, data: dict[str, Any], run: Run, stages: Stages) -> None:
    """One run's stages: train, evaluate, and (``drift: true``) the drift measurement."""
    adapter = out / "04_train" / run.name
    stages.run(f"04_train/{run.name}", lambda d: _stage_train(cfg, run, out, data, d))
    stages.run(f"05_eval/{run.name}", lambda d: _stage_eval(cfg, adapter, d))
    if cfg.drift:
        stages.run(f"06_drift/{run.name}", lambda d: _stage_drift(cfg, out, adapter, d))


def _worker_init(threads: int, devices: Any) -> None:
    import os

    import torch

    if devices is not None:  # one GPU per worker, taken from the shared queue before CUDA starts
        os.environ["CUDA_VISIBLE_DEVICES"] = str(devices.get())
    torch.set_num_threads(threads)


def _worker_run(cfg: ExperimentConfig, out: Path, data: dict[str, Any], run: Run) -> str:
    _run_stages(cfg, out, data, run, Stages(out))
    return run.name


def _run_parallel(cfg: ExperimentConfig, out: Path, data: dict[str, Any], runs: list[Run], jobs: int) -> None:
    """Runs ``runs`` in ``jobs`` worker processes (spawned: no state is inherited), in order; the
    first failure cancels the runs not yet started and is raised after the others finish."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    import torch

    ctx = mp.get_context("spawn")
    devices = None
    if torch.cuda.is_available() and torch.cuda.device_count() >= jobs:
        devices = ctx.Manager().Queue()
        for i in range(jobs):
            devices.put(i)
        threads = torch.get_num_threads()
    elif torch.cuda.is_available():
        raise ValueError(f"jobs {jobs} needs {jobs} GPUs; {torch.cuda.device_count()} visible")
    else:
        threads = max(1, torch.get_num_threads() // jobs)
    console.print(f"{len(runs)} run(s) to do, {jobs} at a time "
                  + ("(one GPU each)" if devices is not None else f"({threads} CPU thread(s) each)"))
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init,
                             initargs=(threads, devices)) as pool:
        futures = [pool.submit(_worker_run, cfg, out, data, run) for run in runs]
        wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f.done() and f.exception() is not None]
        if failed:
            for f in futures:
                f.cancel()
            wait(futures)
            raise failed[0].exception()


def stages_left(cfg: ExperimentConfig, stages: Stages, runs: list[Run]) -> list[str]:
    """The stages of the plan not finished yet."""
    names = ["01_start", "02_direction", "03_data", "05_eval/start"]
    for run in runs:
        names += _run_stage_names(cfg, run)
    return [n for n in names if not stages.done(n)]


def check_same_start(cfg: ExperimentConfig, out: Path, stages: Stages, runs: list[Run]) -> None:
    """Continuing an experiment (runs left to do) needs the start model and the evaluation files it
    began with: the same name may hold other weights now (a rebuilt or replaced model), and new
    runs trained from those would be compared with old ones. The start model is loaded and its
    fingerprint compared with ``01_start``'s record; so are the local prompt files' sha256."""
    if not stages.done("01_start") or not stages_left(cfg, stages, runs):
        return
    from ..models import model_fingerprint, same_base, weights_fingerprints

    recorded = stages.summary("01_start")
    was, files_was = recorded.get("fingerprint"), recorded.get("inputs")
    if files_was is not None:
        files_now = _input_fingerprints(cfg)
        changed = [src for src in sorted(set(files_was) & set(files_now)) if files_was[src] != files_now[src]]
        if changed:
            raise ValueError(f"{out} was started with other contents of {', '.join(changed)} (sha256 recorded in "
                             f"{out / '01_start' / 'stage.json'}); its finished runs were evaluated on those, so the "
                             "experiment cannot be continued with the files as they are now: use a new --out (or "
                             "restore the files)")
    if was is None:
        return
    if cfg.model == SAFE_START:
        from .safety_alignment import ensure_safe_start_model

        ensure_safe_start_model(console=console)
    model, _ = _load(cfg)
    now, now_all = model_fingerprint(model), weights_fingerprints(model)
    del model
    if recorded.get("weights_fingerprints") and now_all:  # precision-independent: a decisive answer
        if same_base(recorded["weights_fingerprints"], now_all) is not False:
            return
        raise ValueError(f"{out} was started from {cfg.model} with weights fingerprint {was} (01_start), but "
                         f"{cfg.model} holds other weights now (rebuilt or replaced). Its finished runs were trained "
                         "and evaluated from the old ones, so the experiment cannot be continued with these: use a "
                         "new --out (or restore the old weights)")
    if now != was:  # an experiment started before precision-independent fingerprints were recorded
        raise ValueError(f"{out} was started from {cfg.model} with weights fingerprint {was} (01_start), but "
                         f"{cfg.model} loads with fingerprint {now} now (precision {cfg.precision}): the same name "
                         "holds other weights (rebuilt or replaced), or the same weights in another precision (auto: "
                         "bf16 on a GPU, fp32 on a CPU; set precision: fp32 in the bench config to load them as a "
                         "CPU did). Its finished runs were trained and evaluated from the old ones, so the "
                         "experiment cannot be continued with these: use a new --out (or restore the old weights)")


def _input_fingerprints(cfg: ExperimentConfig) -> dict[str, str]:
    """sha256 of the local files among the evaluation prompt sources (``file:...``, a bare path)."""
    from ..train.config import data_fingerprints

    return data_fingerprints({"sources": [*cfg.eval_harmful, cfg.eval_harmless]})


def _load(cfg: ExperimentConfig, adapter: Path | None = None, *, merge: bool = True):
    from ..models import load_model, merge_adapter

    model, tok = load_model(cfg.model, precision=cfg.precision, adapter=str(adapter) if adapter else None)
    if adapter is not None and merge:
        # merged weights generate faster than base + unmerged LoRA; provenance keeps the adapter path
        model = merge_adapter(model)
    return model, tok


def _stage_start(cfg: ExperimentConfig, d: Path) -> dict[str, Any]:
    """The start model: ``embedded:smollm2-135m-safe`` is built here (once, with its own progress
    and time estimate) when the cache has no build of the current recipe; loading never trains."""
    from ..models import EMBEDDED_PREFIX, build_info, embedded_dir, model_fingerprint, weights_fingerprints

    if cfg.model == SAFE_START:
        from .safety_alignment import ensure_safe_start_model

        ensure_safe_start_model(console=console)
    model, _ = _load(cfg)
    info: dict[str, Any] = {"model": cfg.model, "fingerprint": model_fingerprint(model),
                            "weights_fingerprints": weights_fingerprints(model),  # in any precision
                            "inputs": _input_fingerprints(cfg)}  # what an extension of the experiment must find again
    if cfg.model.startswith(EMBEDDED_PREFIX):
        built = build_info(embedded_dir(cfg.model[len(EMBEDDED_PREFIX):]))
        if built is not None:
            info["alignment"] = built
    return info


def _stage_direction(cfg: ExperimentConfig, d: Path) -> dict[str, Any]:
    from ..direction.extract import ExtractConfig, extract_direction

    model, tok = _load(cfg)
    rd = extract_direction(model, tok, ExtractConfig(limit=cfg.direction_samples))
    rd.save_pretrained(d)
    return {"n_layers": rd.n_layers, "hidden_size": rd.hidden_size, "data": rd.info["data"]}


def _stage_data(cfg: ExperimentConfig, d: Path) -> dict[str, Any]:
    """Training sets per scenario, as JSONL files of prompt -> response records."""
    from ..data import load_source, write_jsonl

    task = load_source(f"task:{cfg.task}:train", require_response=True, limit=cfg.train_samples)
    rows = [r.to_dict() for r in task]
    files = {}
    write_jsonl(d / "benign.jsonl", rows)
    files["benign"] = {"file": "benign.jsonl", "n": len(rows), "task": cfg.task}
    if "attack" in cfg.scenarios:
        attack = attack_pairs(cfg)
        write_jsonl(d / "attack_pairs.jsonl", attack)
        write_jsonl(d / "attack.jsonl", rows + attack)
        files["attack"] = {"file": "attack.jsonl", "n": len(rows) + len(attack), "harmful_pairs": len(attack),
                           "task": cfg.task}
    return {"files": files}


def train_overrides(cfg: ExperimentConfig, method_name: str) -> dict[str, Any]:
    """The training-config keys of one method in this experiment: the method, the options its
    component takes from the experiment's model pair (AsFT, Safe LoRA), then ``method_options``."""
    method = cfg.method_of(method_name)
    pair = {"aligned_model": cfg.model, "unaligned_model": cfg.unaligned_model}
    user = cfg.options_of(method_name)
    options = {k: dict(v or {}) for k, v in (user.pop("regularizer_options", None) or {}).items()}
    if method.model_pair_options:
        options[method.component] = {**{k: pair[k] for k in method.model_pair_options},
                                     **options.get(method.component, {})}
    return {"method": method.name, **({"regularizer_options": options} if options else {}), **user}


def warmup_epochs(cfg: ExperimentConfig, method_name: str) -> float:
    """The epochs a method's warm-up adds before the standard run (the paper's ProCon_wu: m), 0 if none."""
    method = cfg.method_of(method_name)
    if method.epochs_like:
        return warmup_epochs(cfg, method.epochs_like)
    opts = {**dict(method.schedule), **cfg.options_of(method_name)}
    if (method.coefficient is None or opts.get("alpha_schedule") != "warmup"
            or opts.get("warmup_placement", "inside") != "before" or opts.get("schedule_unit", "epoch") != "epoch"):
        return 0.0
    return float(opts.get("schedule_length") or 0.0)


def run_epochs(cfg: ExperimentConfig, method_name: str) -> float:
    """Epochs of one method's run: the experiment's ``epochs`` (n, the standard run) plus its warm-up (m)."""
    return cfg.epochs + warmup_epochs(cfg, method_name)


# The training-config keys an experiment sets from its own keys (the rest come from the method)
TRAINING_KEYS_FROM_EXPERIMENT = {
    "model": "model", "precision": "precision", "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size", "learning_rate": "learning_rate", "lora_r": "lora_r",
    "lora_alpha": "lora_alpha", "max_length": "max_length", "seed": "seeds", "safety_samples": "safety_samples",
}


def run_training_settings(cfg: ExperimentConfig, run: Run, data_file: str | Path, output_dir: str | Path) -> dict[str, Any]:
    """The training config of one run, as a mapping for ``config_from_dict``: the experiment's
    values, then the method's (:func:`train_overrides`). The one recipe, for the run and for the
    check before any work."""
    return {
        "model": cfg.model, "precision": cfg.precision, "train_data": [f"file:{data_file}"],
        "output_dir": str(output_dir), "num_train_epochs": run_epochs(cfg, run.method),
        "per_device_train_batch_size": cfg.batch_size, "learning_rate": cfg.learning_rate, "lora_r": cfg.lora_r,
        "lora_alpha": cfg.lora_alpha, "max_length": cfg.max_length, "seed": run.seed,
        "safety_samples": cfg.safety_samples, "save_strategy": "no", "report_to": ["tensorboard"],
        "lr_scheduler_type": "linear", "warmup_steps": 0,
        **train_overrides(cfg, run.method),
    }


def check_training_configs(cfg: ExperimentConfig, runs: list[Run]) -> None:
    """Build the training config of every planned run with the experiment's real values (a
    stand-in data file and folder), so a bad value fails before the first stage, naming where it
    comes from: the experiment's key (and its line), the method's options, or the method table."""
    from ..configfile import ConfigError
    from ..train import config_from_dict

    checked = set()
    for run in runs:
        if (run.method, run.seed) in checked:
            continue
        checked.add((run.method, run.seed))
        settings = run_training_settings(cfg, run, "<the scenario's data>", "<the run's folder>")
        try:
            config_from_dict(settings, where=f"method {run.method}")
        except ConfigError as e:
            key = getattr(e, "key", None) or ""
            detail = getattr(e, "detail", None) or str(e)
            own = set(cfg.options_of(run.method))
            if key in own or (key not in TRAINING_KEYS_FROM_EXPERIMENT and "regularizer_options" in own):
                origin = "variants" if run.method in cfg.variants and run.method not in cfg.method_options else \
                    "method_options"
                raise ConfigError(f"{cfg.where(origin)}method {run.method}: {detail} (from {origin}.{run.method})") \
                    from None
            if key in TRAINING_KEYS_FROM_EXPERIMENT:
                exp_key = TRAINING_KEYS_FROM_EXPERIMENT[key]
                raise ConfigError(f"{cfg.where(exp_key)}method {run.method}: {detail} (from the experiment's {exp_key}"
                                  f"{f', seed {run.seed}' if exp_key == 'seeds' else ''})") from None
            raise ConfigError(f"{cfg.where('methods')}method {run.method}: {detail} (from method_options.{run.method} "
                              "or the method table)") from None


def check_inputs(cfg: ExperimentConfig) -> None:
    """Load what the data and evaluation stages will read -- the task's training and evaluation
    items, every harmful and harmless prompt source -- so an unknown source, a missing file or an
    unknown task fails before the first stage, naming the experiment key (and its line)."""
    from ..data import DataError, load_source
    from ..evaluate.suite import load_eval_inputs

    def check(key: str, fn) -> None:
        try:
            fn()
        except (DataError, ValueError) as e:
            raise ConfigError(f"{cfg.where(key)}{key}: {e}") from None

    check("task", lambda: load_source(f"task:{cfg.task}:train", require_response=True, limit=cfg.train_samples))
    check("task_split", lambda: load_eval_inputs(_eval_config(cfg, None, harmful=(), harmless=())))
    for source in cfg.eval_harmful:
        check("eval_harmful", lambda s=source: load_eval_inputs(_eval_config(cfg, None, harmful=(s,), harmless=(),
                                                                             tasks=())))
    check("eval_harmless", lambda: load_eval_inputs(_eval_config(cfg, None, harmful=(), tasks=())))


def _eval_config(cfg: ExperimentConfig, adapter: Path | None, **only: Any):
    """The evaluation of one model in this experiment (``only``: a part of it, for :func:`check_inputs`)."""
    from ..evaluate.suite import EvalConfig

    task = cfg.task if cfg.task_split == "test" else f"task:{cfg.task}:{cfg.task_split}"
    kw: dict[str, Any] = dict(harmful=tuple(cfg.eval_harmful), harmless=(cfg.eval_harmless,), tasks=(task,),
                              limit=cfg.eval_limit, task_limit=cfg.task_eval_samples, max_new_tokens=cfg.max_new_tokens,
                              task_max_new_tokens=cfg.task_max_new_tokens, batch_size=cfg.gen_batch_size,
                              model_name=cfg.model, adapter=str(adapter) if adapter else None, llm_judge="auto")
    kw.update(only)
    return EvalConfig(**kw)


def _stage_train(cfg: ExperimentConfig, run: Run, out: Path, data: dict[str, Any], d: Path) -> dict[str, Any]:
    from ..train import config_from_dict, train

    data_file = out / "03_data" / data["files"][run.scenario]["file"]
    tcfg = config_from_dict(run_training_settings(cfg, run, data_file, d), where=f"method {run.method}")
    result = train(tcfg)
    return {"method": run.method, "scenario": run.scenario, "seed": run.seed,
            "train_s": round(result.runtime_s, 1), "steps": len(result.steps), "alpha": tcfg.alpha,
            "threads": _threads(), **(result.post_hoc or {})}


def _stage_eval(cfg: ExperimentConfig, adapter: Path | None, d: Path) -> dict[str, Any]:
    from ..evaluate.results import write_eval
    from ..evaluate.suite import evaluate_model

    model, tok = _load(cfg, adapter)
    result = evaluate_model(model, tok, _eval_config(cfg, adapter))
    write_eval(d, result)
    return {"summary": result["summary"], "timing": result["timing"], "threads": _threads()}


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _stage_drift(cfg: ExperimentConfig, out: Path, adapter: Path, d: Path) -> dict[str, Any]:
    from ..direction.artifact import RefusalDirection
    from ..direction.drift import drift_report, write_drift

    ref = RefusalDirection.from_pretrained(out / "02_direction")
    model, tok = _load(cfg, adapter)
    # a layer without a direction (block 0 at a template token: every prompt has the same input)
    # has an undefined cosine: None, listed in undefined_layers and left out of the means
    report = drift_report(ref, model, tok, reference_path=out / "02_direction", model_name=cfg.model,
                          adapter=adapter)
    write_drift(d, report)
    return {"cos": report["cos"], "cos_mean": report["cos_mean"], "cos_min": report["cos_min"]}
