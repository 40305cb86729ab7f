"""The training batch format every method shares: encoded examples and the model inputs of a batch.

A training example is ``{input_ids, labels, sample_idx}``: ``labels`` is ``-100`` on the prompt
(the loss covers only the response, see :func:`safeanchor.data.encode_pair`), and ``sample_idx``
is the example's stable index in the training set, which keys per-sample state such as ProCon's
cached anchors (so shuffling and padding do not matter).

>>> # ds = SFTDataset.from_records(tok, records, max_length=512)
>>> # ds[0].keys() == {"input_ids", "labels", "sample_idx"}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .records import Record
from .templating import IGNORE_INDEX, encode_pair


@dataclass
class SFTDataset(torch.utils.data.Dataset):
    """Encoded training examples; item ``i`` has ``sample_idx == i``."""

    examples: list[dict[str, Any]]
    n_truncated: int = 0
    record_ids: list[str | None] = field(default_factory=list)

    @classmethod
    def from_records(cls, tokenizer, records: Sequence[Record], *, max_length: int) -> "SFTDataset":
        """Tokenise prompt -> response pairs with the chat template and a response-only mask.

        >>> # SFTDataset.from_records(tok, [Record("2+2?", "4")], max_length=64)[0]["sample_idx"]
        >>> # 0
        """
        examples, truncated = [], 0
        for i, rec in enumerate(records):
            enc = encode_pair(tokenizer, rec, max_length=max_length, where=f"training record {i + 1} (id={rec.id})")
            truncated += enc.truncated
            examples.append({"input_ids": enc.input_ids, "labels": enc.labels, "sample_idx": i})
        return cls(examples, truncated, [r.id for r in records])

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.examples[i]

    def response_counts(self) -> list[int]:
        """Number of response (loss) tokens of each example, in ``sample_idx`` order."""
        return [sum(1 for t in ex["labels"] if t != IGNORE_INDEX) for ex in self.examples]

    def summary(self) -> dict[str, Any]:
        lengths = [len(ex["input_ids"]) for ex in self.examples]
        counts = self.response_counts()
        return {
            "n_examples": len(self.examples),
            "n_truncated": self.n_truncated,
            "tokens": sum(lengths),
            "response_tokens": sum(counts),
            "max_length_seen": max(lengths) if lengths else 0,
            "mean_length": sum(lengths) / len(lengths) if lengths else 0.0,
        }


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore padding: ``(B, T)`` with the first real token of each row at 0.

    Without them a left-padded row would see its tokens at shifted positions (HF counts from the
    first column), so the same example would have different hidden states on either padding side.

    >>> position_ids_from_mask(torch.tensor([[0, 1, 1], [1, 1, 0]])).tolist()
    [[0, 0, 1], [0, 1, 1]]
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def forward_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model inputs of a collated batch: ids, mask and padding-independent positions.

    ``labels`` and ``sample_idx`` are left out (the model must never see ``sample_idx``).
    """
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "position_ids": position_ids_from_mask(batch["attention_mask"]),
    }


__all__ = ["SFTDataset", "forward_inputs", "position_ids_from_mask"]
