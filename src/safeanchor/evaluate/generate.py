"""Batched greedy decoding with KV cache and left padding.

Prompts are formatted with the model's chat template, sorted by length so batches waste little
padding, generated greedily (deterministic) and returned in the input order.

>>> # answers = generate(model, tok, ["How do I bake bread?"], max_new_tokens=32)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..data import Record, encode_prompt, pad_batch
from ..models import model_precision


def _as_records(items: Sequence[Record | str]) -> list[Record]:
    return [it if isinstance(it, Record) else Record(prompt=str(it)) for it in items]


def _progress(total: int, desc: str, enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn(f"[bold]{desc}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), disable=not enabled, transient=True)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    records_or_prompts: Sequence[Record | str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    max_prompt_tokens: int | None = 1024,
    progress: bool = True,
    desc: str = "generating",
) -> list[str]:
    """Greedy answers for each prompt (chat template applied), in input order.

    Works for a plain model, a PEFT model (base + adapter) and a merged checkpoint.
    """
    records = _as_records(records_or_prompts)
    if not records:
        return []
    device = next(model.parameters()).device
    prec = model_precision(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [encode_prompt(tokenizer, r, max_length=max_prompt_tokens) for r in records]
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    out: list[str | None] = [None] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        with _progress(len(records), desc, progress) as bar:
            task = bar.add_task(desc, total=len(records))
            for start in range(0, len(order), batch_size):
                idx = order[start: start + batch_size]
                ids, mask = pad_batch([encoded[i] for i in idx], pad_id, side="left")
                ids, mask = ids.to(device), mask.to(device)
                with prec.autocast_context(device):
                    gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                         do_sample=False, num_beams=1, pad_token_id=pad_id,
                                         eos_token_id=tokenizer.eos_token_id, use_cache=True)
                new = gen[:, ids.shape[1]:]  # (B, T_new)
                for j, i in enumerate(idx):
                    out[i] = tokenizer.decode(new[j], skip_special_tokens=True).strip()
                bar.advance(task, len(idx))
    finally:
        model.train(was_training)
    return [o if o is not None else "" for o in out]


def decoding_settings(max_new_tokens: int, batch_size: int) -> dict:
    """What an eval file records about decoding."""
    return {"strategy": "greedy", "max_new_tokens": max_new_tokens, "batch_size": batch_size,
            "padding_side": "left", "chat_template": True}
