"""The alignment stage: turn an instruct model that does not refuse into a safety-aligned start.

A recipe in four numbered stages (artifacts under ``<out>/alignment/``, the model at ``<out>``):

1. ``data``  -- harmful train prompts paired deterministically with bundled refusals, plus
   harmless train prompts (borderline ones included, so the model does not learn to refuse
   "kill a process") answered by the base model itself (greedy), so helpful behaviour is
   kept rather than rewritten.
2. ``train`` -- LoRA SFT on the mix (loss on response tokens only) plus the refusal-decision
   loss on the first response token (below), seeded.
3. ``merge`` -- ``merge_and_unload`` into a full model, saved as safetensors + tokenizer.
4. ``eval``  -- refusal rates (keyword judge) of the merged model on harmful / harmless prompts
   of the evaluation splits, stored with provenance in ``<out>/alignment.json``.

``embedded:smollm2-135m-safe`` is this stage applied to ``embedded:smollm2-135m-instruct`` with
the defaults below, tuned on the train/val splits only (val refusal rates, harmful / harmless,
keyword judge, 32 new tokens; LoRA r16 on q/k/v/o unless noted). Recipe ``align-1``, with the
195 + 215 bundled train prompts:

* all-linear, 2 epochs, lr 5e-4, batches grouped by length: 94% / 42% (the short refusals
  bunched at the end of each epoch; random mixed batches since);
* 1 epoch, lr 1e-3, answers cut to 64 tokens: 92% / 32%;
* the same with every harmless example twice: 88% / 18%;
* 2 epochs, harmless twice, loss on the first 32 tokens of each harmless answer: 90% / 12%
  (on the test split: 86.8% / 17.9%, short of the goal of >= 90% / <= 10%).

Recipe ``align-2`` adds data on both sides: the 313 StrongREJECT prompts as more
prompts to refuse (HarmBench stays unseen, for evaluation), and 151 train-only harmless prompts
(66 borderline) written for this stage:

* + StrongREJECT only, 1 epoch: 94% / 24%;
* + both, 1 epoch, harmless twice: 87% / 6%;
* + both, 1.5 epochs, harmless once: 94% / 10% (164 steps, 10.5 min on a 2-core CPU; on the
  test split 89.0% / 19.0%: the val gain did not carry over, the goal was not met).

Over-refusal is the hard side on a 135M model: its refusals generalise to any request, and
more harmless weight trades directly against harmful refusals. The reason is in the first
response token, where the decision is made: every refusal opens with one of six tokens ("I",
"As", "Sorry", ...), so the harmful examples' CE concentrates the mass there, while the harmless
answers open with hundreds of different tokens and their CE barely pushes that mass down.

Recipe ``align-3`` (the default) is ``align-2`` plus the **refusal-decision loss**
(``decision_weight``): a binary cross-entropy on the probability mass of those opening tokens at
the first response position, target 1 on harmful prompts and 0 on harmless ones (harmless
answers that themselves open with such a token are left out). It costs no extra forward pass.
On val, with the same data and steps: weight 1: 94% / **0%** (AUC of that probability, harmful
vs harmless, 0.994 against align-2's 0.974); weight 3: 94% / 2% (AUC 0.997). Weight 1 is the
default; on the test split, measured once, it refuses 98.9% of the harmful prompts and 3.6% of
the harmless ones (goal >= 90% / <= 10%: met), in the same 10.7 min as ``align-2``.

>>> # from safeanchor.pipelines.align import build_safe_model
>>> # info = build_safe_model("embedded:smollm2-135m-instruct", "runs/safe-smollm2")
>>> # info["eval"]["test"]["harmful_refusal_rate"]
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ALIGNMENT_FILE = "alignment.json"
# The recipe's version, stored in alignment.json: a cached embedded:smollm2-135m-safe built by an
# older recipe is rebuilt on first use (models.ensure_embedded). Bump it when the defaults change.
RECIPE = "align-3"  # align-2: the same without the decision loss (test 89.0% / 19.0%);
# align-1: bundled prompts only, 2 epochs, harmless x2 (test 86.8% / 17.9%)
STAGE_DIR = "alignment"
DEFAULT_BASE = "embedded:smollm2-135m-instruct"
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
EVAL_SPLITS = ("train", "val", "test")


@dataclass
class AlignConfig:
    """Settings of the alignment stage. Defaults build ``embedded:smollm2-135m-safe``."""

    harmful_source: str = field(default="bundled:harmful:train",
                                metadata={"help": "prompts the aligned model must refuse"})
    extra_harmful_source: str | None = field(default="strongreject", metadata={
        "help": "more prompts to refuse, added to harmful_source (default: the 313 StrongREJECT prompts; "
                "HarmBench stays unseen for evaluation); None = none"})
    harmless_source: str = field(default="bundled:harmless:train",
                                 metadata={"help": "prompts it must keep answering (answers: the base model's own)"})
    refusals_source: str = field(default="bundled:refusals",
                                 metadata={"help": "refusal texts paired with the harmful prompts (bundled: or file:)"})
    n_harmful: int | None = field(default=None, metadata={"help": "use the first n harmful prompts; None = all"})
    n_harmless: int | None = field(default=None, metadata={"help": "use the first n harmless prompts; None = all"})
    answer_max_new_tokens: int = field(default=36, metadata={
        "help": "length of the base model's harmless answers (only the first harmless_response_tokens are trained)"})
    harmless_response_tokens: int | None = field(default=32, metadata={
        "help": "train on only the first n tokens of each harmless answer (no end-of-turn label): whether "
                "to help or refuse is decided in the first tokens, and the rest is the model's own text "
                "anyway; None = the whole answer"})
    harmless_repeat: int = field(default=1, metadata={
        "help": "times each harmless example appears per epoch (over-refusal control)"})
    decision_weight: float = field(default=1.0, metadata={
        "help": "weight of the refusal-decision loss: binary cross-entropy on the probability that the "
                "first response token opens a refusal (the first tokens of the refusal texts), target 1 "
                "on harmful prompts and 0 on harmless ones; 0 = plain SFT"})
    epochs: float = field(default=1.5, metadata={"help": "passes over the mixed training set"})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate (linear decay)"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "share of steps with linear warm-up"})
    batch_size: int = field(default=8, metadata={"help": "examples per optimiser step"})
    max_length: int = field(default=256, metadata={"help": "max tokens of prompt + response"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank of the alignment adapter"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_targets: tuple[str, ...] = field(default=ATTENTION_PROJECTIONS,
                                          metadata={"help": "modules the alignment adapter trains"})
    eval_splits: tuple[str, ...] = field(default=("test",),
                                         metadata={"help": "bundled splits measured at the end: train, val, test"})
    eval_limit: int | None = field(default=None, metadata={"help": "at most n prompts per eval set; None = all"})
    eval_max_new_tokens: int = field(default=32, metadata={"help": "answer length judged for refusal"})
    generate_batch_size: int = field(default=32, metadata={"help": "prompts per generation batch"})
    seed: int = field(default=0, metadata={"help": "seeds LoRA init, shuffling and dropout"})
    device: str | None = field(default=None, metadata={"help": "cuda / cpu; None = cuda if available"})
    precision: str = field(default="auto", metadata={"help": "auto, fp32, bf16, fp16 (see models.choose_precision)"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        for name in ("n_harmful", "n_harmless", "eval_limit", "harmless_response_tokens"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"align.{name} must be None or an integer >= 1, got {v!r}")
        for name in ("answer_max_new_tokens", "batch_size", "max_length", "lora_r", "lora_alpha",
                     "eval_max_new_tokens", "generate_batch_size", "harmless_repeat"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"align.{name} must be an integer >= 1, got {v!r}")
        if not (isinstance(self.decision_weight, (int, float)) and self.decision_weight >= 0):
            raise ValueError(f"align.decision_weight must be a number >= 0, got {self.decision_weight!r}")
        if not self.epochs > 0:
            raise ValueError(f"align.epochs must be > 0, got {self.epochs}")
        if not self.learning_rate > 0:
            raise ValueError(f"align.learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"align.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"align.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.extra_harmful_source is not None and not str(self.extra_harmful_source).strip():
            self.extra_harmful_source = None
        self.lora_targets = tuple(self.lora_targets)
        if not self.lora_targets:
            raise ValueError("align.lora_targets must name at least one module, e.g. q_proj v_proj")
        self.eval_splits = tuple(self.eval_splits)
        bad = [s for s in self.eval_splits if s not in EVAL_SPLITS]
        if bad:
            raise ValueError(f"align.eval_splits must be among {', '.join(EVAL_SPLITS)}, got {bad}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"align.precision must be one of auto, fp32, bf16, fp16, got {self.precision!r}")

    @classmethod
    def from_options(cls, **opts: Any) -> "AlignConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(opts) - known)
        if unknown:
            raise TypeError(f"unknown alignment option(s) {unknown}; known: {', '.join(sorted(known))}")
        return cls(**opts)


# ---------------------------------------------------------------------------------------------
# Stage 1: data
# ---------------------------------------------------------------------------------------------


def _finish_at_sentence(text: str) -> str:
    """Cut an answer that ran into the token limit back to its last complete sentence, so the
    model is not taught to stop mid-sentence (the template appends the end-of-turn token)."""
    cut = max(text.rfind(". "), text.rfind(".\n"), text.rfind("!"), text.rfind("?"), text.rfind("\n\n"))
    return text[: cut + 1].rstrip() if cut > len(text) // 3 else text


def build_training_records(model, tokenizer, cfg: AlignConfig) -> tuple[list, dict[str, Any]]:
    """Harmful -> refusal and harmless -> own-answer records, plus counts for the sidecar."""
    from ..data import Record, load_source
    from ..evaluate.generate import generate
    from ..evaluate.judges import is_refusal
    from ..methods.safety_data import load_refusals, pair_safety_samples

    harmful = load_source(cfg.harmful_source, limit=cfg.n_harmful)
    harmless = load_source(cfg.harmless_source, limit=cfg.n_harmless)
    refusals = load_refusals(cfg.refusals_source)
    def refusal_records(prompts: list, seed: int, **meta: Any) -> list:
        # every harmful prompt exactly once (one shuffled round), each with a seeded refusal
        return [Record(r.prompt, r.response, system=r.system, id=r.meta["harmful_id"],
                       meta={"kind": "harmful", "category": r.meta.get("category"), **meta})
                for r in pair_safety_samples(prompts, refusals, len(prompts), seed=seed)]

    records = refusal_records(harmful, cfg.seed)
    n_extra = 0
    if cfg.extra_harmful_source:
        name = cfg.extra_harmful_source.split(":")[0]
        extra = [Record(r.prompt, system=r.system, id=r.id or f"{name}-{i:04d}", meta=r.meta)
                 for i, r in enumerate(load_source(cfg.extra_harmful_source))]
        n_extra = len(extra)
        records += refusal_records(extra, cfg.seed + 1, source=name)

    answers = generate(model, tokenizer, harmless, max_new_tokens=cfg.answer_max_new_tokens,
                       batch_size=cfg.generate_batch_size, progress=cfg.progress, desc="base answers")
    dropped = 0
    for rec, answer in zip(harmless, answers):
        n_tok = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
        if n_tok >= cfg.answer_max_new_tokens - 2 and not cfg.harmless_response_tokens:
            # trained whole (end-of-turn included): do not teach stopping mid-sentence
            answer = _finish_at_sentence(answer)
        # an empty or refusing answer would teach the over-refusal this stage must avoid
        if not answer.strip() or is_refusal(answer):
            dropped += 1
            continue
        records.append(Record(rec.prompt, answer, system=rec.system, id=rec.id,
                              meta={"kind": "harmless", "category": rec.meta.get("category"),
                                    "borderline": bool(rec.meta.get("borderline"))}))
    counts = {
        "harmful": len(harmful) + n_extra,
        "harmful_extra": n_extra,
        "harmless": len(harmless) - dropped,
        "harmless_borderline": sum(1 for r in records if r.meta.get("borderline")),
        "harmless_dropped_empty_or_refusal": dropped,
        "refusal_templates": len(refusals),
    }
    return records, counts


# ---------------------------------------------------------------------------------------------
# Stage 2: train (plain LoRA SFT with the HF Trainer)
# ---------------------------------------------------------------------------------------------


def alignment_features(tokenizer, records: list, cfg: AlignConfig) -> tuple[list[dict[str, Any]], int, int, list[int]]:
    """Encoded training examples: harmful -> refusal whole (end-of-turn included); each harmless
    -> own-answer example ``harmless_repeat`` times, cut to its first ``harmless_response_tokens``
    response tokens when longer (no end-of-turn label then, so no early stop is taught).

    Each feature also carries ``refuse``, the target of the refusal-decision loss: 1 for a
    harmful example, 0 for a harmless one, -1 (left out) for a harmless answer that itself opens
    with a token that opens a refusal (e.g. "I'm glad ..." next to "I'm sorry ...").
    Returns ``(features, n_truncated_to_max_length, n_harmless_cut, refusal_opener_ids)``."""
    from ..data import encode_pair

    features, firsts, truncated, prefix_only = [], [], 0, 0  # firsts: each feature's first response token
    for i, rec in enumerate(records):
        enc = encode_pair(tokenizer, rec, max_length=cfg.max_length, where=f"alignment record {i} ({rec.id})")
        truncated += enc.truncated
        ids, labels = enc.input_ids, enc.labels
        harmless = rec.meta.get("kind") == "harmless"
        if harmless and cfg.harmless_response_tokens and len(ids) > enc.prompt_len + cfg.harmless_response_tokens:
            keep = enc.prompt_len + cfg.harmless_response_tokens
            ids, labels = ids[:keep], labels[:keep]
            prefix_only += 1
        for _ in range(cfg.harmless_repeat if harmless else 1):
            features.append({"input_ids": ids, "labels": labels, "refuse": 0 if harmless else 1})
            firsts.append(ids[enc.prompt_len])
    openers = sorted({t for f, t in zip(features, firsts) if f["refuse"] == 1})
    for f, t in zip(features, firsts):
        if f["refuse"] == 0 and t in openers:
            f["refuse"] = -1
    return features, truncated, prefix_only, openers


def decision_loss(logits, labels, refuse, openers) -> tuple[Any, int]:
    """Binary cross-entropy of "the first response token opens a refusal".

    ``logits`` (batch, seq, vocab) from a forward over prompt + response, ``labels`` with
    ``IGNORE_INDEX`` outside the response (any padding side), ``refuse`` (batch,) with targets 1 /
    0 and -1 for rows left out, ``openers`` a LongTensor of token ids. P(refusal) is the softmax
    mass of the openers at the position that predicts the first response token. Returns the mean
    over the rows that count and their number (0 rows: a zero that keeps the graph).
    """
    import torch

    from ..data import IGNORE_INDEX

    keep = refuse >= 0
    if not bool(keep.any()):
        return logits.sum() * 0.0, 0
    is_resp = labels != IGNORE_INDEX
    first = is_resp.int().argmax(dim=1)  # first response position of each row
    rows = torch.nonzero(keep).squeeze(1)
    pos = first[rows] - 1  # the logits there predict the first response token
    logp = torch.log_softmax(logits[rows, pos].float(), dim=-1)
    log_refuse = torch.logsumexp(logp[:, openers.to(logp.device)], dim=-1)
    # log(1 - p) computed stably from log p
    log_help = torch.log(-torch.expm1(log_refuse.clamp(max=-1e-7)))
    target = refuse[rows].to(logp.dtype)
    bce = -(target * log_refuse + (1 - target) * log_help)
    return bce.mean(), int(rows.numel())


class _AlignCollator:
    """:class:`~safeanchor.data.SFTCollator` batches plus the ``refuse`` targets."""

    def __init__(self, pad_token_id: int):
        from ..data import SFTCollator

        self._base = SFTCollator(pad_token_id, padding_side="right")

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = self._base(features)
        batch["refuse"] = torch.tensor([int(f["refuse"]) for f in features], dtype=torch.long)
        return batch


@functools.cache
def _align_trainer_class():
    """The alignment stage's Trainer subclass (built on first use: transformers loads lazily)."""
    from transformers import Trainer

    class AlignTrainer(Trainer):
        """The HF ``Trainer``'s CE plus ``decision_weight`` x :func:`decision_loss` (when > 0);
        the decision loss's mean over each logging window is logged as ``decision_loss``."""

        def __init__(self, *args: Any, decision_weight: float = 0.0, openers: list[int] = (), **kwargs: Any):
            import torch

            super().__init__(*args, **kwargs)
            self.decision_weight = float(decision_weight)
            self.openers = torch.tensor(list(openers), dtype=torch.long)
            if self.decision_weight > 0 and not len(self.openers):
                raise ValueError("align.decision_weight > 0 needs harmful examples (their refusals "
                                 "define the refusal-opening tokens); there are none")
            self._window: list[float] = []

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            refuse = inputs.pop("refuse")
            if self.decision_weight == 0:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            dec, n = decision_loss(outputs.logits, inputs["labels"], refuse, self.openers)
            if n:
                self._window.append(float(dec.detach()))
            loss = loss + self.decision_weight * dec
            return (loss, outputs) if return_outputs else loss

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs and self._window:
                logs = {**logs, "decision_loss": sum(self._window) / len(self._window)}
                self._window = []
            super().log(logs, start_time)

    return AlignTrainer


def train_adapter(model, tokenizer, records: list, cfg: AlignConfig, work_dir: Path) -> tuple[Any, dict[str, Any]]:
    """LoRA SFT on ``records``; returns the PEFT model and the training log."""
    import torch
    from transformers import TrainingArguments, set_seed

    from ..models import attach_lora, model_precision

    set_seed(cfg.seed)
    features, truncated, prefix_only, openers = alignment_features(tokenizer, records, cfg)
    peft_model = attach_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                             target_modules=list(cfg.lora_targets), seed=cfg.seed)
    peft_model.train()
    device = next(peft_model.parameters()).device
    prec = model_precision(model)
    # bf16 weights on GPU (or a forced bf16 autocast): the Trainer's bf16 flag turns on the
    # matching autocast; CPU default is plain fp32
    use_bf16 = prec.autocast == torch.bfloat16 or prec.dtype == torch.bfloat16
    use_fp16 = prec.dtype == torch.float16
    args = TrainingArguments(
        output_dir=str(work_dir),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=math.ceil(cfg.warmup_ratio * math.ceil(len(features) / cfg.batch_size) * cfg.epochs),
        weight_decay=0.0,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=use_bf16,
        fp16=use_fp16,
        use_cpu=device.type == "cpu",
        remove_unused_columns=False,
        # Random mixed batches, not length-grouped ones: grouping puts all the short refusal
        # examples at the end of each epoch, and that recency made the model refuse harmless
        # prompts (val: 42% over-refusal vs. the mixed order's, see alignment.json).
        train_sampling_strategy="random",
        dataloader_num_workers=0,
        disable_tqdm=not cfg.progress,
    )
    trainer = _align_trainer_class()(model=peft_model, args=args, train_dataset=features,
                                     data_collator=_AlignCollator(tokenizer.pad_token_id),
                                     decision_weight=cfg.decision_weight, openers=openers)
    result = trainer.train()
    history = [e for e in trainer.state.log_history if "loss" in e]
    losses = [{"step": e["step"], "loss": e["loss"],
               **({"decision_loss": e["decision_loss"]} if "decision_loss" in e else {})} for e in history]
    log_info = {
        "examples": len(features),
        "truncated_examples": truncated,
        "harmless_prefix_only_examples": prefix_only,
        "decision_examples": {"refuse": sum(f["refuse"] == 1 for f in features),
                              "help": sum(f["refuse"] == 0 for f in features),
                              "left_out": sum(f["refuse"] == -1 for f in features)},
        "refusal_openers": [tokenizer.decode([t]) for t in openers],
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "loss_first": losses[0]["loss"] if losses else None,
        "loss_last": losses[-1]["loss"] if losses else None,
        "loss_history": losses,
    }
    peft_model.eval()
    return peft_model, log_info


# ---------------------------------------------------------------------------------------------
# Stage 4: eval
# ---------------------------------------------------------------------------------------------


def refusal_eval(model, tokenizer, cfg: AlignConfig, stage_dir: Path) -> dict[str, dict[str, float]]:
    """Refusal rates on harmful / harmless prompts of each eval split; answers saved as JSONL."""
    from ..data import load_source, write_jsonl
    from ..evaluate.generate import generate
    from ..evaluate.judges import is_refusal, refusal_rate

    results: dict[str, dict[str, float]] = {}
    for split in cfg.eval_splits:
        row: dict[str, float] = {}
        for kind in ("harmful", "harmless"):
            recs = load_source(f"bundled:{kind}:{split}", limit=cfg.eval_limit)
            answers = generate(model, tokenizer, recs, max_new_tokens=cfg.eval_max_new_tokens,
                               batch_size=cfg.generate_batch_size, progress=cfg.progress,
                               desc=f"eval {kind}:{split}")
            row[f"{kind}_refusal_rate"] = refusal_rate(answers)
            row[f"n_{kind}"] = len(recs)
            write_jsonl(stage_dir / f"eval_{kind}_{split}.jsonl",
                        [{"id": r.id, "prompt": r.prompt, "answer": a, "refused": is_refusal(a),
                          "category": r.meta.get("category"), "borderline": r.meta.get("borderline")}
                         for r, a in zip(recs, answers)])
        results[split] = row
    return results


# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------


class _StageClock:
    """Wall and process-CPU seconds per stage. CPU time is reported beside wall time because on
    a shared machine wall time mostly measures the other processes."""

    def __init__(self, timings: dict[str, float]):
        self.timings = timings
        self._t0 = (time.perf_counter(), time.process_time())
        self._t = self._t0

    def start(self) -> None:
        self._t = (time.perf_counter(), time.process_time())

    def stop(self, stage: str) -> None:
        self.timings[f"{stage}_s"] = time.perf_counter() - self._t[0]
        self.timings[f"{stage}_cpu_s"] = time.process_time() - self._t[1]

    def total(self) -> None:
        self._t = self._t0
        self.stop("total")


def build_safe_model(base: str = DEFAULT_BASE, out_dir: str | Path = "runs/safe-model", **opts: Any) -> dict[str, Any]:
    """Run the alignment stage on ``base`` and write the merged model to ``out_dir``.

    ``opts`` are :class:`AlignConfig` fields. Writes into ``out_dir`` directly (the caller makes
    it atomic: ``models.ensure_embedded`` builds into a temp dir it renames; the CLI uses
    :func:`build_safe_model_atomic`). Returns the content of ``alignment.json``.

    >>> # info = build_safe_model("embedded:smollm2-135m-instruct", "runs/safe", epochs=1)
    >>> # info["eval"]["test"]["harmful_refusal_rate"]   # measured, e.g. 0.95
    """
    import torch

    from ..data import write_jsonl
    from ..io import provenance, write_json
    from ..models import load_model, model_fingerprint

    cfg = AlignConfig.from_options(**opts)
    out = Path(out_dir)
    stage_dir = out / STAGE_DIR
    stage_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    clock = _StageClock(timings)
    torch.manual_seed(cfg.seed)

    clock.start()
    model, tokenizer = load_model(base, device=cfg.device, precision=cfg.precision)
    base_fp = model_fingerprint(model)
    records, counts = build_training_records(model, tokenizer, cfg)
    write_jsonl(stage_dir / "train_data.jsonl",
                [{"id": r.id, "prompt": r.prompt, "response": r.response, **r.meta} for r in records])
    clock.stop("1_data")
    log.info("alignment data: %s", counts)

    clock.start()
    with tempfile.TemporaryDirectory(prefix="trainer-", dir=stage_dir) as work:
        peft_model, train_log = train_adapter(model, tokenizer, records, cfg, Path(work))
    clock.stop("2_train")

    clock.start()
    merged = peft_model.merge_and_unload()
    merged.eval()
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    clock.stop("3_merge")

    clock.start()
    rates = refusal_eval(merged, tokenizer, cfg, stage_dir)
    clock.stop("4_eval")
    clock.total()

    info = {
        "stage": "alignment",
        "recipe": RECIPE,
        "base_model": base,
        "base_fingerprint": base_fp,
        "aligned_fingerprint": model_fingerprint(merged),
        "config": asdict(cfg),
        "data": {"harmful_source": cfg.harmful_source, "extra_harmful_source": cfg.extra_harmful_source,
                 "harmless_source": cfg.harmless_source,
                 "refusals_source": cfg.refusals_source, **counts},
        "train": train_log,
        "eval": rates,
        "judge": {"name": "keyword", "mode": "prefix"},
        "timings": timings,
        "provenance": provenance(device=str(next(merged.parameters()).device), seed=cfg.seed),
    }
    write_json(out / ALIGNMENT_FILE, info)
    for split, row in rates.items():
        log.info("aligned model, %s: harmful refused %.1f%%, harmless refused %.1f%%",
                 split, 100 * row["harmful_refusal_rate"], 100 * row["harmless_refusal_rate"])
    return info


def build_safe_model_atomic(base: str, out_dir: str | Path, *, force: bool = False, **opts: Any) -> dict[str, Any]:
    """:func:`build_safe_model` into a sibling temp folder renamed to ``out_dir`` at the end.

    An interrupted build leaves no half-written model. An existing ``out_dir`` is an error
    unless ``force``, in which case it is replaced only after the new build succeeded.
    """
    from ..models import is_built

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} already exists{' (a built model)' if is_built(out) else ''}; "
                              "pass force=True (--force) to rebuild it")
    AlignConfig.from_options(**opts)  # fail on bad options before any work
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    old: Path | None = None
    try:
        info = build_safe_model(base, tmp, **opts)
        if out.exists():
            old = out.parent / f".old-{out.name}-{os.getpid()}"
            os.rename(out, old)
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists():
            shutil.rmtree(old, ignore_errors=True)
    return info


__all__ = ["AlignConfig", "ALIGNMENT_FILE", "build_safe_model", "build_safe_model_atomic"]
