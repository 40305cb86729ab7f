"""The refusal-decision loss: a BCE on "the first response token opens a refusal" (the alignment stage's).

The decision to refuse is made at the first response token: every refusal text opens with one
of a handful of tokens ("I", "As", "Sorry", ...). For each training example with a target
``refuse`` (1: the prompt must be refused, 0: it must be answered), P(refusal) is the softmax mass
of those opening tokens at the position that predicts the first response token, and the penalty
is the binary cross-entropy of that probability against the target, averaged over the examples of
the batch that count::

    p_i   = Σ_{t ∈ openers} softmax(logits_i[first_i - 1])_t
    R     = mean_i  −[ y_i log p_i + (1 − y_i) log(1 − p_i) ]

The openers are the first response tokens of the examples with target 1, so a user's own refusal
texts define them. An example with target 0 whose own answer opens with an opener is left out
(target −1): its CE already asks for that token. It needs no extra forward pass: the logits of the
training forward are reused.

Targets live in the training set: each example carries ``refuse`` (1 / 0) next to its
``input_ids`` and ``labels``; setup reads them by ``sample_idx``.

>>> import torch
>>> logits = torch.zeros(1, 3, 4)             # uniform over 4 tokens at every position
>>> labels = torch.tensor([[-100, 2, 3]])     # the response starts at position 1
>>> loss, n = decision_loss(logits, labels, torch.tensor([1]), torch.tensor([0]))
>>> round(float(loss), 4), n                  # -log(1/4)
(1.3863, 1)
"""

from __future__ import annotations

from typing import Any

import torch

from ..data import IGNORE_INDEX
from .base import Regularizer, RegularizerSetupError

TARGET_KEY = "refuse"
LEFT_OUT = -1


def decision_loss(logits: torch.Tensor, labels: torch.Tensor, refuse: torch.Tensor,
                  openers: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Binary cross-entropy of "the first response token opens a refusal".

    ``logits`` (batch, seq, vocab) from a forward over prompt + response, ``labels`` with
    ``IGNORE_INDEX`` outside the response (any padding side), ``refuse`` (batch,) with targets 1 /
    0 and -1 for rows left out, ``openers`` a LongTensor of token ids. Returns the mean over the
    rows that count and their number (0 rows: a zero that keeps the graph).
    """
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


def first_response_token(example: dict[str, Any]) -> int:
    """The first response token of an encoded example (labels are IGNORE_INDEX on the prompt)."""
    for tok, lab in zip(example["input_ids"], example["labels"]):
        if lab != IGNORE_INDEX:
            return int(tok)
    raise ValueError("example has no response token")


def decision_targets(examples: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """The targets per example (1 / 0, and -1 for a helpful answer that opens like a refusal)
    and the sorted refusal-opening token ids (the first response tokens of the target-1 examples)."""
    firsts = [first_response_token(ex) for ex in examples]
    targets = [int(ex[TARGET_KEY]) for ex in examples]
    openers = sorted({t for t, y in zip(firsts, targets) if y == 1})
    return [LEFT_OUT if y == 0 and t in openers else y for t, y in zip(firsts, targets)], openers


def refusal_target(record: Any) -> int:
    """A record's target: 1 (refuse) for a safety sample or a record marked ``refuse: true`` or
    ``kind: harmful``, else 0 (answer)."""
    meta = record.meta
    return int(bool(meta.get("refuse")) or bool(meta.get("safety_sample")) or meta.get("kind") == "harmful")


class RefusalDecision(Regularizer):
    """BCE on P(first response token opens a refusal) against each example's ``refuse`` target."""

    name = "refusal_decision"

    def __init__(self) -> None:
        self.targets: torch.Tensor | None = None  # (N,) per sample_idx: 1, 0 or LEFT_OUT
        self.openers: torch.Tensor | None = None  # token ids

    def example_fields(self, record: Any) -> dict[str, Any]:
        return {TARGET_KEY: refusal_target(record)}

    def setup(self, trainer: Any) -> dict[str, Any]:
        dataset = trainer.train_dataset
        examples = getattr(dataset, "examples", None)
        if examples is None or not examples or TARGET_KEY not in examples[0]:
            raise RegularizerSetupError(
                f"refusal_decision needs training examples with a {TARGET_KEY!r} target (1 = refuse, 0 = answer); "
                "the alignment recipe's training set has them")
        targets, openers = decision_targets(examples)
        if not openers:
            raise RegularizerSetupError("refusal_decision needs examples with target 1 (their refusals define the "
                                        "refusal-opening tokens); there are none")
        self.targets = torch.tensor(targets, dtype=torch.long)
        self.openers = torch.tensor(openers, dtype=torch.long)
        tok = getattr(trainer, "processing_class", None)
        return {"refuse": targets.count(1), "help": targets.count(0), "left_out": targets.count(LEFT_OUT),
                "openers": [tok.decode([t]) for t in openers] if tok is not None else openers}

    def __call__(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        if self.targets is None:
            raise RuntimeError("refusal_decision: setup(trainer) must run before the penalty is computed")
        idx = inputs.get("sample_idx")
        if idx is None:
            raise RuntimeError("refusal_decision needs 'sample_idx' in every batch (SFTCollator passes it)")
        refuse = self.targets[idx.cpu()].to(outputs.logits.device)
        loss, _ = decision_loss(outputs.logits, inputs["labels"], refuse, self.openers)
        return loss

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.targets is None else {"targets": self.targets, "openers": self.openers}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "targets" in state:
            self.targets, self.openers = state["targets"].long(), state["openers"].long()


def from_config(config) -> RefusalDecision:
    """Factory for the method table (no options)."""
    options = (getattr(config, "regularizer_options", None) or {}).get("refusal_decision") or {}
    if options:
        raise ValueError(f"refusal_decision takes no options; got {sorted(options)}")
    return RefusalDecision()


__all__ = ["LEFT_OUT", "TARGET_KEY", "RefusalDecision", "decision_loss", "decision_targets", "from_config",
           "refusal_target"]
