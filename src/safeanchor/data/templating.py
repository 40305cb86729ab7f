"""Chat templating, response-only loss masks and padding.

Every prompt goes through ``tokenizer.apply_chat_template`` -- no hand-written templates.
A training example's loss covers only the response tokens (the tokens the template adds after
the prompt's generation header, including the end-of-turn token, so the model learns to stop).

>>> # ids = encode_pair(tok, Record("2+2?", "4"), max_length=128)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .records import DataError, Record

IGNORE_INDEX = -100


def prompt_ids(tokenizer, record: Record) -> list[int]:
    """Token ids of the chat-formatted prompt, ending with the assistant generation header."""
    return list(tokenizer.apply_chat_template(record.messages(with_response=False),
                                              add_generation_prompt=True, tokenize=True,
                                              return_dict=False))


def prompt_text(tokenizer, record: Record) -> str:
    return tokenizer.apply_chat_template(record.messages(with_response=False),
                                         add_generation_prompt=True, tokenize=False)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on prompt tokens
    prompt_len: int  # number of prompt tokens (response starts at this index)
    truncated: bool


def encode_pair(tokenizer, record: Record, *, max_length: int, min_response_tokens: int = 16,
                where: str = "record") -> Encoded:
    """Tokenise a prompt -> response pair with a response-only loss mask.

    Truncation never silently drops the response: the response tail is cut first (down to
    ``min_response_tokens``), then the prompt loses tokens from its left; if even that cannot fit
    at least one response token, it is an error.
    """
    if record.response is None:
        raise DataError(f"{where}: field 'response' is missing (training needs prompt -> response pairs)")
    p_ids = prompt_ids(tokenizer, record)
    full = list(tokenizer.apply_chat_template(record.messages(), tokenize=True, return_dict=False))
    if full[: len(p_ids)] != p_ids:
        raise DataError(
            f"{where}: the chat template renders the prompt differently with and without the response; "
            "cannot locate the response tokens"
        )
    r_ids = full[len(p_ids):]
    if not r_ids:
        raise DataError(f"{where}: field 'response' produced no tokens")
    truncated = False
    if len(p_ids) + len(r_ids) > max_length:
        truncated = True
        keep_r = max(min(len(r_ids), min_response_tokens), max_length - len(p_ids))
        r_ids = r_ids[:keep_r]
        overflow = len(p_ids) + len(r_ids) - max_length
        if overflow > 0:
            if overflow >= len(p_ids):
                raise DataError(f"{where}: max_length={max_length} is too small for this prompt and response")
            p_ids = p_ids[overflow:]
    ids = p_ids + r_ids
    labels = [IGNORE_INDEX] * len(p_ids) + r_ids
    return Encoded(ids, labels, len(p_ids), truncated)


def encode_prompt(tokenizer, record: Record, *, max_length: int | None = None) -> list[int]:
    """Prompt ids for generation or activation capture (left-truncated if too long)."""
    ids = prompt_ids(tokenizer, record)
    if max_length is not None and len(ids) > max_length:
        ids = ids[-max_length:]
    return ids


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, *, side: str = "right",
              value_for_labels: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ``seqs`` to the longest; returns ``(ids (B, T), attention_mask (B, T))``."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "right":
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        else:
            ids[i, T - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, T - len(s):] = 1
    return ids, mask


class SFTCollator:
    """Pads encoded examples into a batch for ``Trainer``.

    Each feature: ``input_ids``, ``labels``, ``sample_idx`` (stable index of the example in the
    training set: ProCon's cached anchors are keyed by it, so shuffling and padding side do not
    matter). Output adds ``attention_mask`` and ``response_mask`` (labels != IGNORE_INDEX, i.e.
    the tokens whose hidden states ProCon constrains).
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right"):
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids, attn = pad_batch([f["input_ids"] for f in features], self.pad_token_id, side=self.padding_side)
        labels, _ = pad_batch([f["labels"] for f in features], IGNORE_INDEX, side=self.padding_side)
        batch = {"input_ids": ids, "attention_mask": attn, "labels": labels}
        if "sample_idx" in features[0]:
            batch["sample_idx"] = torch.tensor([int(f["sample_idx"]) for f in features], dtype=torch.long)
        return batch
