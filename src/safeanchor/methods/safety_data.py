"""Safety data ("broadened data", IFT_safe): harmful instruction -> refusal pairs mixed into training.

Bianchi et al. ("Safety-tuned LLaMAs") and ProCon's ``*_safe`` variants add ~1,000 such samples
to the fine-tuning set; the loss (and ProCon's constraint) applies to them like to any other
sample. Pairing is deterministic for a seed: harmful prompts are drawn in shuffled rounds (every
prompt once before any repeats), each with a seeded choice of refusal.

>>> # recs = safety_records(200, seed=0)   # bundled harmful train prompts x bundled refusals
>>> # recs[0].response.startswith("I")  -> True
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

from ..data import DataError, Record, load_source

SAFETY_META = "safety_sample"


def load_refusals(source: str = "bundled:refusals") -> list[str]:
    """Refusal texts from ``bundled:<name>`` or ``file:<path>`` JSONL rows with a ``response`` field.

    Refusal sets have no prompt, so they do not go through :func:`load_source`.

    >>> len(load_refusals()) > 10
    True
    """
    kind, _, rest = source.partition(":")
    if kind == "bundled":
        from ..data.sources import bundled_dir

        path = bundled_dir() / f"{rest}.jsonl"
    elif kind == "file":
        path = Path(rest)
    else:
        raise DataError(f"refusal source must be bundled:<name> or file:<path.jsonl>; got {source!r}")
    if not path.is_file():
        raise DataError(f"{source}: file not found ({path})")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            text = row.get("response") if isinstance(row, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{path}:{lineno}: field 'response' is missing or empty")
            out.append(text)
    if not out:
        raise DataError(f"{source}: no refusals")
    return out


def pair_safety_samples(prompts: Sequence[Record], refusals: Sequence[str], n: int, *, seed: int = 0) -> list[Record]:
    """``n`` harmful-prompt -> refusal records, deterministic for ``seed``.

    >>> recs = pair_safety_samples([Record("bad 1"), Record("bad 2")], ["No.", "I can't."], 3, seed=0)
    >>> [r.prompt for r in recs].count("bad 1") in (1, 2)
    True
    """
    if n < 1:
        raise ValueError(f"safety_samples must be >= 1, got {n}")
    if not prompts or not refusals:
        raise DataError("safety data needs at least one harmful prompt and one refusal")
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < n:  # shuffled rounds: no prompt repeats before all were used
        round_ = list(range(len(prompts)))
        rng.shuffle(round_)
        order.extend(round_)
    out = []
    for k, i in enumerate(order[:n]):
        src = prompts[i]
        j = rng.randrange(len(refusals))
        out.append(Record(prompt=src.prompt, response=refusals[j], system=src.system, id=f"safety-{k:05d}",
                          meta={SAFETY_META: True, "harmful_id": src.id, "refusal_index": j,
                                "category": src.meta.get("category")}))
    return out


def safety_records(n: int, *, harmful: str = "bundled:harmful:train", refusals: str = "bundled:refusals",
                   seed: int = 0) -> list[Record]:
    """``n`` safety samples from the named harmful-prompt and refusal sources.

    >>> len(safety_records(8, seed=1))
    8
    """
    return pair_safety_samples(load_source(harmful), load_refusals(refusals), n, seed=seed)


__all__ = ["SAFETY_META", "load_refusals", "pair_safety_samples", "safety_records"]
