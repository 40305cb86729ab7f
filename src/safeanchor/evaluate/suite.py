"""The evaluation the pipelines and ``safeanchor eval`` run: generate answers to harmful,
harmless and task prompts, judge them, and summarise.

1. load every source (``limit`` records each: a deterministic sample that keeps the source's
   category / borderline mix for safety sets, the first N for tasks);
2. generate all answers greedily in as few batched calls as possible;
3. judge: keyword on harmful + harmless answers; llm judge (when configured) and classifier
   (when given) on harmful answers;
4. summarise (:mod:`.safety`, :mod:`.tasks`) and return the dict that :func:`.results.write_eval`
   writes to ``eval.json``.

>>> # result = evaluate_model(model, tok, EvalConfig(limit=40)); write_eval("runs/x/eval", result)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..distributed import world_size
from .classifier import ClassifierConfig
from .judges import DEFAULT_PREFIX_CHARS, MODES, PHRASE_SETS, KeywordJudge
from .llm_judge import LLMJudgeConfig

SCHEMA = "safeanchor-eval/1"
LLM_JUDGE_CHOICES = ("auto", "on", "off")
DEFAULT_TASKS = ("arithmetic", "topic")


@dataclass
class EvalConfig:
    """What to evaluate and how; every field has a default (paper-style safety + bundled tasks)."""

    harmful: tuple[str, ...] = field(default=("bundled:harmful:test",), metadata={"help": "harmful prompt sources (ASR, HS, flagged rate)"})
    harmless: tuple[str, ...] = field(default=("bundled:harmless:test",), metadata={"help": "harmless prompt sources (over-refusal)"})
    tasks: tuple[str, ...] = field(default=DEFAULT_TASKS, metadata={"help": "bundled task names or sources with an 'answer' field (accuracy)"})
    limit: int | None = field(default=None, metadata={"help": "records per safety source (stratified by category/borderline); None = all"})
    task_limit: int | None = field(default=None, metadata={"help": "records per task (first N); None = same as limit"})
    max_new_tokens: int = field(default=64, metadata={"help": "tokens generated per safety answer"})
    task_max_new_tokens: int | None = field(default=None, metadata={"help": "tokens generated per task answer; None = max_new_tokens"})
    batch_size: int = field(default=32, metadata={"help": "prompts per generation batch"})
    backend: str = field(default="auto", metadata={"help": "generation backend: auto, hf or vllm"})
    keyword_mode: str = field(default="prefix", metadata={"help": "keyword judge: prefix or anywhere"})
    keyword_prefix_chars: int = field(default=DEFAULT_PREFIX_CHARS, metadata={"help": "keyword judge: characters judged in prefix mode"})
    keyword_phrase_set: str = field(default="extended", metadata={"help": "keyword judge: extended or reference (Arditi list)"})
    llm_judge: str = field(default="auto", metadata={"help": "auto (when SAFEANCHOR_JUDGE_URL or llm_judge_config.url is set), on, off"})
    llm_judge_config: LLMJudgeConfig | None = field(default=None, metadata={"help": "judge endpoint settings; None = from the environment"})
    classifier: ClassifierConfig | None = field(default=None, metadata={"help": "moderation classifier for the flagged rate; None = not run"})
    seed: int = field(default=0, metadata={"help": "torch seed set before generating (decoding is greedy)"})
    model_name: str | None = field(default=None, metadata={"help": "recorded model name; None = the model's load name"})
    adapter: str | None = field(default=None, metadata={"help": "recorded adapter folder, if any"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        for name in ("harmful", "harmless", "tasks"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(f"EvalConfig.{name} must be a list of sources, got the string {value!r}")
            setattr(self, name, tuple(value or ()))
            if len(set(getattr(self, name))) != len(getattr(self, name)):
                raise ValueError(f"EvalConfig.{name} lists a source twice: {list(getattr(self, name))}")
        if not (self.harmful or self.harmless or self.tasks):
            raise ValueError("EvalConfig: nothing to evaluate (harmful, harmless and tasks are all empty)")
        for name in ("limit", "task_limit", "task_max_new_tokens"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"EvalConfig.{name} must be a positive integer or None; got {v!r}")
        for name in ("max_new_tokens", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"EvalConfig.{name} must be a positive integer; got {v!r}")
        from .generate import BACKENDS

        if self.backend not in BACKENDS:
            raise ValueError(f"EvalConfig.backend must be one of {', '.join(BACKENDS)}; got {self.backend!r}")
        if self.keyword_mode not in MODES:
            raise ValueError(f"EvalConfig.keyword_mode must be one of {', '.join(MODES)}; got {self.keyword_mode!r}")
        if self.keyword_phrase_set not in PHRASE_SETS:
            raise ValueError(f"EvalConfig.keyword_phrase_set must be one of {', '.join(PHRASE_SETS)}; got {self.keyword_phrase_set!r}")
        if self.llm_judge not in LLM_JUDGE_CHOICES:
            raise ValueError(f"EvalConfig.llm_judge must be one of {', '.join(LLM_JUDGE_CHOICES)}; got {self.llm_judge!r}")

    def keyword_judge(self) -> KeywordJudge:
        return KeywordJudge(self.keyword_mode, self.keyword_prefix_chars, self.keyword_phrase_set)

    def resolved_llm_config(self) -> LLMJudgeConfig | None:
        """The judge endpoint to use, or None when the llm judge does not run."""
        if self.llm_judge == "off":
            return None
        cfg = self.llm_judge_config or LLMJudgeConfig.from_env()
        if not cfg.configured:
            if self.llm_judge == "on":
                raise ValueError("llm_judge='on' but no judge URL: set SAFEANCHOR_JUDGE_URL or llm_judge_config.url")
            return None
        return cfg


def stratified_head(records: list, limit: int | None) -> list:
    """``limit`` records keeping the mix of ``(category, borderline)`` groups (largest-remainder
    quotas; file order within and across groups). Deterministic. Safety sets are stored grouped
    by category, so a plain first-N would test a few categories and no borderline prompts.

    >>> from safeanchor.data import Record
    >>> recs = [Record(f"p{i}", meta={"category": "a" if i < 6 else "b"}) for i in range(8)]
    >>> [r.prompt for r in stratified_head(recs, 4)]
    ['p0', 'p1', 'p2', 'p6']
    """
    if limit is None or limit >= len(records):
        return list(records)
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault((r.meta.get("category"), bool(r.meta.get("borderline"))), []).append(i)
    exact = {k: limit * len(v) / len(records) for k, v in groups.items()}
    quota = {k: int(q) for k, q in exact.items()}
    by_remainder = sorted(groups, key=lambda k: -(exact[k] - quota[k]))  # stable: ties keep group order
    for k in by_remainder[: limit - sum(quota.values())]:
        quota[k] += 1
    chosen = sorted(i for k, idx in groups.items() for i in idx[: quota[k]])
    return [records[i] for i in chosen]


def load_eval_inputs(cfg: EvalConfig):
    """The prompts and task records ``cfg`` names, loaded and checked: ``(safety, data, tasks)`` with
    ``safety`` = ``(kind, source, record)`` rows, ``data`` the counts per source for eval.json and
    ``tasks`` = ``(name, scorer, records)``. Cheap (no model), so commands call it before loading
    one: an unknown source, an empty file or a missing judge URL fails in seconds."""
    from ..data import load_source
    from .tasks import load_task_records, resolve_scorer

    cfg.resolved_llm_config()  # llm_judge='on' without a URL fails here
    safety: list[tuple[str, str, Any]] = []
    data: dict[str, list[dict]] = {"harmful": [], "harmless": [], "tasks": []}
    for kind in ("harmful", "harmless"):
        for src in getattr(cfg, kind):
            recs = stratified_head(load_source(src), cfg.limit)
            safety += [(kind, src, r) for r in recs]
            data[kind].append({"source": src, "n": len(recs)})
    tasks = []
    for name in cfg.tasks:
        display, src, recs = load_task_records(name, limit=cfg.task_limit or cfg.limit)
        scorer = resolve_scorer(display, recs)
        tasks.append((display, scorer, recs))
        data["tasks"].append({"task": display, "source": src, "n": len(recs), "scorer": scorer})
    return safety, data, tasks


def evaluate_model(model, tokenizer, config: EvalConfig | None = None) -> dict[str, Any]:
    """Evaluate ``model``; returns the dict written to ``eval.json`` (summary + per-prompt records).

    >>> # r = evaluate_model(model, tok, EvalConfig(harmful=("bundled:harmful:test",), limit=40))
    >>> # r["summary"]["harmful"]["bundled:harmful:test"]["asr"]
    """
    import torch

    from ..io import provenance
    from ..models import model_fingerprint, model_precision
    from .generate import decoding_settings, generate, resolve_backend
    from .llm_judge import LLMJudge
    from .safety import summarise_sources
    from .tasks import task_accuracy

    cfg = config or EvalConfig()
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    keyword = cfg.keyword_judge()
    llm_cfg = cfg.resolved_llm_config()
    llm = LLMJudge(llm_cfg) if llm_cfg else None
    classifier = None
    if cfg.classifier is not None:  # loaded before generating so a bad path fails in seconds
        from .classifier import ClassifierJudge

        classifier = ClassifierJudge(cfg.classifier)

    # 1. data
    safety, data, tasks = load_eval_inputs(cfg)

    # 2. generation: one call per distinct length budget, so batches mix sources
    task_tokens = cfg.task_max_new_tokens or cfg.max_new_tokens
    jobs = [(cfg.max_new_tokens, [r for _, _, r in safety])]
    task_records = [r for _, _, recs in tasks for r in recs]
    if task_tokens == cfg.max_new_tokens:
        jobs[0][1].extend(task_records)
    else:
        jobs.append((task_tokens, task_records))
    answers: list[str] = []
    t_gen = time.perf_counter()
    for tokens, recs in jobs:
        answers += generate(model, tokenizer, recs, max_new_tokens=tokens, batch_size=cfg.batch_size,
                            progress=cfg.progress, desc=f"generating ({len(recs)} prompts)", backend=cfg.backend)
    gen_s = time.perf_counter() - t_gen
    safety_answers, task_answers = answers[: len(safety)], answers[len(safety):]

    # 3. judges
    rows = []
    for i, ((kind, src, rec), ans) in enumerate(zip(safety, safety_answers)):
        rows.append({"kind": kind, "source": src, "id": rec.id or f"{src}#{i}", "prompt": rec.prompt, "answer": ans,
                     "category": rec.meta.get("category"), "borderline": rec.meta.get("borderline"),
                     "verdicts": {"keyword": keyword.verdict(ans)}})
    harmful_rows = [r for r in rows if r["kind"] == "harmful"]
    pairs = [(r["prompt"], r["answer"]) for r in harmful_rows]
    ids = [r["id"] for r in harmful_rows]
    if llm is not None and pairs:
        for r, v in zip(harmful_rows, llm.score(pairs, ids=ids)):
            r["verdicts"]["llm"] = {"score": v["score"], "reason": v["reason"]}
    if classifier is not None and pairs:
        for r, v in zip(harmful_rows, classifier.judge(pairs, ids=ids)):
            r["verdicts"]["classifier"] = v

    # 4. summaries
    summary: dict[str, Any] = {}
    if cfg.harmful:
        summary["harmful"] = summarise_sources(harmful_rows, "harmful", cfg.harmful)
    if cfg.harmless:
        summary["harmless"] = summarise_sources([r for r in rows if r["kind"] == "harmless"], "harmless", cfg.harmless)
    if tasks:
        summary["tasks"] = {}
        k = 0
        for display, scorer, recs in tasks:
            s, task_rows = task_accuracy(display, scorer, recs, task_answers[k: k + len(recs)])
            k += len(recs)
            summary["tasks"][display] = s
            rows += task_rows

    n_prompts = len(answers)
    prec = model_precision(model)
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {"name": cfg.model_name or getattr(model, "safeanchor_source", None), "adapter": cfg.adapter,
                  "fingerprint": model_fingerprint(model), "peft": hasattr(model, "peft_config"),
                  "precision": {"dtype": str(prec.dtype), "autocast": str(prec.autocast) if prec.autocast else None}},
        "decoding": {**decoding_settings(cfg.max_new_tokens, cfg.batch_size, backend=resolve_backend(cfg.backend, model)),
                     "task_max_new_tokens": task_tokens},
        "judges": {"keyword": keyword.settings(), "llm": llm.settings() if llm else None,
                   "classifier": classifier.settings() if classifier else None},
        "data": data,
        "limits": {"limit": cfg.limit, "task_limit": cfg.task_limit or cfg.limit,
                   "safety_sampling": "stratified by (category, borderline), proportional; tasks: first N"},
        "seed": cfg.seed,
        "summary": summary,
        "timing": {"generate_s": round(gen_s, 3), "prompts": n_prompts,
                   "prompts_per_s": round(n_prompts / gen_s, 3) if gen_s > 0 else None,
                   "total_s": round(time.perf_counter() - t0, 3), "world_size": world_size()},
        "provenance": provenance(),
        "records": rows,
    }
