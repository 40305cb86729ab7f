"""The safety-alignment recipe's settings and the work of its stages: data, training, evaluation.

:mod:`safeanchor.pipelines.safety_alignment` runs these as numbered stages; see there for the
recipe as a whole.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..configfile import ConfigError, check_annotated

log = logging.getLogger(__name__)

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
        check_annotated(self, prefix="align.")
        for name in ("n_harmful", "n_harmless", "eval_limit", "harmless_response_tokens"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ConfigError(f"align.{name} must be None or an integer >= 1, got {v!r}")
        for name in ("answer_max_new_tokens", "batch_size", "max_length", "lora_r", "lora_alpha",
                     "eval_max_new_tokens", "generate_batch_size", "harmless_repeat"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"align.{name} must be an integer >= 1, got {v!r}")
        if not (isinstance(self.decision_weight, (int, float)) and self.decision_weight >= 0):
            raise ConfigError(f"align.decision_weight must be a number >= 0, got {self.decision_weight!r}")
        if not self.epochs > 0:
            raise ConfigError(f"align.epochs must be > 0, got {self.epochs}")
        if not self.learning_rate > 0:
            raise ConfigError(f"align.learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"align.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"align.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.extra_harmful_source is not None and not str(self.extra_harmful_source).strip():
            self.extra_harmful_source = None
        self.lora_targets = tuple(self.lora_targets)
        if not self.lora_targets:
            raise ConfigError("align.lora_targets must name at least one module, e.g. q_proj v_proj")
        self.eval_splits = tuple(self.eval_splits)
        bad = [s for s in self.eval_splits if s not in EVAL_SPLITS]
        if bad:
            raise ConfigError(f"align.eval_splits must be among {', '.join(EVAL_SPLITS)}, got {bad}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"align.precision must be one of auto, fp32, bf16, fp16, got {self.precision!r}")

    @classmethod
    def from_options(cls, **opts: Any) -> "AlignConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(opts) - known)
        if unknown:
            raise ConfigError(f"unknown alignment option(s) {unknown}; known: {', '.join(sorted(known))}")
        return cls(**opts)


# ---------------------------------------------------------------------------------------------
# Stage 1: data
# ---------------------------------------------------------------------------------------------


def build_training_records(model, tokenizer, cfg: AlignConfig) -> tuple[list, dict[str, Any]]:
    """Harmful -> refusal and harmless -> own-answer records, plus counts for the sidecar."""
    from ..data import Record, finish_at_sentence, load_source
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
            answer = finish_at_sentence(answer)
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
# Stage 2: train (LoRA SFT + the refusal-decision method, with the one SafeTrainer)
# ---------------------------------------------------------------------------------------------


def alignment_features(tokenizer, records: list, cfg: AlignConfig) -> tuple[Any, int]:
    """Encoded training examples: harmful -> refusal whole (end-of-turn included); each harmless
    -> own-answer example ``harmless_repeat`` times, cut to its first ``harmless_response_tokens``
    response tokens when longer (no end-of-turn label then, so no early stop is taught).

    Each example also carries ``refuse``, the target of the refusal-decision loss: 1 for a
    harmful example, 0 for a harmless one (the method leaves out a harmless answer that itself
    opens with a refusal-opening token, e.g. "I'm glad ..." next to "I'm sorry ...").
    Returns ``(SFTDataset, n_harmless_cut)``; item ``i`` has ``sample_idx == i``."""
    from ..data import encode_pair
    from ..data.batches import SFTDataset

    features, ids_of, truncated, prefix_only = [], [], 0, 0
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
            features.append({"input_ids": ids, "labels": labels, "sample_idx": len(features),
                             "refuse": 0 if harmless else 1})
            ids_of.append(rec.id)
    return SFTDataset(features, truncated, ids_of), prefix_only


def training_config(cfg: AlignConfig, base: str, work_dir: Path, n_examples: int, device_type: str):
    """The :class:`~safeanchor.train.SafeTrainingConfig` of the alignment stage's training run."""
    from ..train.config import SafeTrainingConfig

    method = "refusal_decision" if cfg.decision_weight > 0 else "sft"
    return SafeTrainingConfig(
        model=base, precision=cfg.precision, method=method,
        alpha=float(cfg.decision_weight) if method != "sft" else None,
        output_dir=str(work_dir), num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, lr_scheduler_type="linear",
        warmup_steps=math.ceil(cfg.warmup_ratio * math.ceil(n_examples / cfg.batch_size) * cfg.epochs),
        weight_decay=0.0, optim="adamw_torch_fused", logging_steps=5, save_strategy="no", report_to="none",
        seed=cfg.seed, data_seed=cfg.seed, use_cpu=device_type == "cpu", max_length=cfg.max_length,
        lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        lora_target_modules=list(cfg.lora_targets),
        # Random mixed batches, not length-grouped ones: grouping puts all the short refusal
        # examples at the end of each epoch, and that recency made the model refuse harmless
        # prompts (val: 42% over-refusal vs. the mixed order's, docs/alignment_recipe.md).
        train_sampling_strategy="random", dataloader_num_workers=0, progress=cfg.progress,
        zero_penalty_guard_steps=0)


def train_adapter(model, tokenizer, records: list, cfg: AlignConfig, work_dir: Path, *,
                  base: str = DEFAULT_BASE) -> tuple[Any, dict[str, Any]]:
    """LoRA SFT (+ the refusal-decision loss) on ``records``; returns the PEFT model and the training log."""
    from transformers import set_seed

    from ..data import SFTCollator
    from ..models import attach_lora
    from ..train.run import build_regularizers
    from ..train.trainer import SafeTrainer

    set_seed(cfg.seed)
    dataset, prefix_only = alignment_features(tokenizer, records, cfg)
    peft_model = attach_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                             target_modules=list(cfg.lora_targets), seed=cfg.seed)
    peft_model.train()
    device = next(peft_model.parameters()).device
    args = training_config(cfg, base, work_dir, len(dataset), device.type)
    trainer = SafeTrainer(model=peft_model, args=args, train_dataset=dataset, processing_class=tokenizer,
                          data_collator=SFTCollator(tokenizer.pad_token_id, padding_side="right"),
                          regularizers=build_regularizers(args))
    result = trainer.train()
    decision = trainer.reports.get("refusal_decision", {})
    history = [e for e in trainer.state.log_history if "loss" in e]
    losses = [{"step": e["step"], "loss": e["loss"],
               **({"decision_loss": e["refusal_decision/raw"]} if "refusal_decision/raw" in e else {})}
              for e in history]
    log_info = {
        "examples": len(dataset),
        "truncated_examples": dataset.n_truncated,
        "harmless_prefix_only_examples": prefix_only,
        "method": args.method,
        "decision_weight": args.alpha,
        "decision_examples": {k: decision[k] for k in ("refuse", "help", "left_out") if k in decision},
        "refusal_openers": decision.get("openers", []),
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


__all__ = ["AlignConfig", "DEFAULT_BASE", "alignment_features", "build_training_records", "refusal_eval",
           "train_adapter", "training_config"]
