"""Task accuracy: exact-match scorers and a 95% Wilson interval.

Scorers:

* ``bundled`` -- the synthetic tasks of :mod:`safeanchor.data.tasks` (``arithmetic``, ``topic``),
  scored by their own ``score_exact`` (the task author's answer extraction).
* ``number`` -- GSM8K style: the number after the last ``####``, else after the last
  "answer is", else the last number in the text; ``$``, thousands separators and a trailing
  ``.0`` are ignored; compared numerically.
* ``label`` -- classification: the first allowed label that appears as a whole word in the
  first non-empty line (case-insensitive).
* ``exact`` -- the whole answer, case- and whitespace-normalised.

A task is named either by a bundled task name (``arithmetic`` -> ``task:arithmetic:test``) or by
any data source whose records carry an ``answer`` field (and ``labels`` for ``label``).

>>> extract_final_number("She pays $1,250.00 in total.\\n#### 1,250")
'1250'
>>> match_label("Sports, clearly.", ["business", "sports"])
'sports'
>>> [round(x, 3) for x in wilson_interval(8, 10)]
[0.49, 0.943]
"""

from __future__ import annotations

import math
import re
from typing import Sequence

from ..data import Record, load_source

SCORERS = ("auto", "bundled", "number", "label", "exact")
Z95 = 1.959963984540054

_NUM = r"-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_HASH = re.compile(r"####\s*(" + _NUM + ")")
_SAID = re.compile(r"answer\s*(?:is|:|=|would be|will be)\s*:?\s*(" + _NUM + ")", re.IGNORECASE)
_ANY = re.compile(r"(?<![\w.])" + _NUM)


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (95% by default).

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0/n and n/n.

    >>> wilson_interval(0, 10)[0]
    0.0
    """
    if n <= 0:
        raise ValueError(f"wilson_interval needs n > 0, got n={n}")
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _canonical_number(raw: str) -> str:
    s = raw.replace("$", "").replace(",", "").replace(" ", "")
    value = float(s)
    return str(int(value)) if value.is_integer() else repr(value)


def extract_final_number(text: str) -> str | None:
    """The final numeric answer of a free-text solution, canonicalised, or None.

    >>> extract_final_number("3 boxes of 4 is 12, so the answer is 12.")
    '12'
    >>> extract_final_number("no numbers here") is None
    True
    """
    if not text:
        return None
    for pattern in (_HASH, _SAID):
        hits = pattern.findall(text)
        if hits:
            return _canonical_number(hits[-1])
    hits = _ANY.findall(text)
    return _canonical_number(hits[-1]) if hits else None


def numbers_equal(pred: str | None, gold: str) -> bool:
    """Numeric equality of canonical strings (a relative tolerance absorbs float formatting)."""
    if pred is None:
        return False
    try:
        a, b = float(pred), float(_canonical_number(gold))
    except ValueError:
        return False
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def match_label(text: str, labels: Sequence[str]) -> str | None:
    """The earliest allowed label (whole word, case-insensitive) in the first non-empty line."""
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    if not lines or not labels:
        return None
    m = re.search(r"\b(" + "|".join(re.escape(lb) for lb in sorted(labels, key=len, reverse=True)) + r")\b",
                  lines[0], re.IGNORECASE)
    if not m:
        return None
    return next(lb for lb in labels if lb.lower() == m.group(1).lower())


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .!")


def task_source(name: str) -> tuple[str, str]:
    """``(source, display name)``: bundled task names map to their test split.

    >>> task_source("arithmetic")
    ('task:arithmetic:test', 'arithmetic')
    >>> task_source("file:gsm.jsonl")
    ('file:gsm.jsonl', 'file:gsm.jsonl')
    """
    from ..data.tasks import TASKS

    if name in TASKS:
        return f"task:{name}:test", name
    if name.startswith("task:") and name.split(":")[1] in TASKS:
        parts = name.split(":")
        return (name if len(parts) > 2 else f"{name}:test"), parts[1]
    return name, name


def resolve_scorer(task: str, records: Sequence[Record], scorer: str = "auto") -> str:
    """Pick the scorer for a task's records (``auto``: bundled task > labels > number > exact)."""
    from ..data.tasks import TASKS

    if scorer not in SCORERS:
        raise ValueError(f"scorer must be one of {', '.join(SCORERS)}; got {scorer!r}")
    if scorer != "auto":
        if scorer == "bundled" and task not in TASKS:
            raise ValueError(f"scorer 'bundled' needs a bundled task ({', '.join(TASKS)}); got {task!r}")
        return scorer
    if task in TASKS:
        return "bundled"
    if all(r.meta.get("labels") for r in records):
        return "label"
    if all(re.fullmatch(_NUM, str(r.meta.get("answer", "")).strip()) for r in records):
        return "number"
    return "exact"


def score_answer(scorer: str, task: str, text: str, record: Record) -> tuple[bool, str | None]:
    """``(correct, extracted answer)`` for one model answer."""
    gold = _gold(record, task)
    if scorer == "bundled":
        from ..data.tasks import extract_answer, score_exact

        return score_exact(task, text, gold), extract_answer(task, text)
    if scorer == "number":
        pred = extract_final_number(text)
        return numbers_equal(pred, gold), pred
    if scorer == "label":
        pred = match_label(text, list(record.meta["labels"]))
        return pred is not None and pred.lower() == gold.strip().lower(), pred
    return _norm(text) == _norm(gold), _norm(text)


def _gold(record: Record, task: str) -> str:
    answer = record.meta.get("answer", record.response)
    if answer is None:
        raise ValueError(f"task {task}: record {record.id or '?'} has no 'answer' (or 'response') to score against")
    return str(answer)


def load_task_records(name: str, limit: int | None = None) -> tuple[str, str, list[Record]]:
    """``(display name, source, records)`` for a task name or source."""
    source, display = task_source(name)
    records = load_source(source, limit=limit)
    for r in records:
        _gold(r, display)
    return display, source, records


def task_accuracy(task: str, scorer: str, records: Sequence[Record], answers: Sequence[str]) -> tuple[dict, list[dict]]:
    """Summary (accuracy with a 95% Wilson interval) and per-item rows for one task."""
    if len(records) != len(answers):
        raise ValueError(f"task {task}: {len(answers)} answers for {len(records)} records")
    rows = []
    for i, (rec, ans) in enumerate(zip(records, answers)):
        ok, pred = score_answer(scorer, task, ans, rec)
        rows.append({"kind": "task", "task": task, "id": rec.id or f"{task}#{i}", "prompt": rec.prompt,
                     "answer": ans, "gold": _gold(rec, task), "extracted": pred, "correct": ok})
    k, n = sum(r["correct"] for r in rows), len(rows)
    lo, hi = wilson_interval(k, n)
    return {"n": n, "correct": k, "accuracy": k / n, "ci95": [lo, hi], "scorer": scorer}, rows
