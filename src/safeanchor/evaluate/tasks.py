"""Task accuracy: the one home of answer scoring (every scorer) and a 95% Wilson interval.

Scorers (:mod:`safeanchor.data.tasks` only generates the bundled tasks; all scoring is here):

* ``bundled`` -- the synthetic tasks of :mod:`safeanchor.data.tasks` (``arithmetic``,
  ``arithmetic_steps``, ``topic``), scored by :func:`score_exact` / :func:`extract_answer`. This
  is the scorer behind every reported task accuracy of those tasks, and it keeps its own rules
  where they differ from ``number`` / ``label`` below: a decimal keeps its written form
  (``"12.50"`` stays ``"12.50"``, so it never equals ``"12.5"``; ``"18.0"`` becomes ``"18"``),
  prediction and gold are compared as strings, "answer would be / will be N" is not an answer
  phrase, and the labels are tried in the task's label order (the match is lowercased).
* ``number`` -- GSM8K style: the number after the last ``####``, else after the last
  "answer is" (or ":", "=", "would be", "will be"), else the last number in the text; ``$``,
  thousands separators and a trailing ``.0`` are ignored; compared numerically (``"12.50"``
  equals ``"12.5"``).
* ``label`` -- classification: the first allowed label that appears as a whole word in the
  first non-empty line (case-insensitive).
* ``exact`` -- the whole answer, case- and whitespace-normalised.

A task is named either by a bundled task name (``arithmetic`` -> ``task:arithmetic:test``) or by
any data source whose records carry an ``answer`` field (and ``labels`` for ``label``).

>>> extract_final_number("She pays $1,250.00 in total.\\n#### 1,250")
'1250'
>>> match_label("Sports, clearly.", ["business", "sports"])
'sports'
>>> score_exact("arithmetic", "So the answer is 1,234.", "1234")
True
>>> extract_answer("topic", "I think it's sports news")
'sports'
>>> [round(x, 3) for x in wilson_interval(8, 10)]
[0.49, 0.943]
"""

from __future__ import annotations

import math
import re
from functools import cache
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


# ---- bundled tasks: the scorer of safeanchor.data.tasks' items (its rules are kept as they were) ----

_TASK_NUM = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_TASK_HASH = re.compile(r"####\s*\$?\s*(" + _TASK_NUM + ")")
_TASK_SAID = re.compile(r"answer\s*(?:is|:|=)\s*:?\s*\$?\s*(" + _TASK_NUM + ")", re.IGNORECASE)
_TASK_ANY = re.compile(r"(?<![\w.])" + _TASK_NUM)


def _task_labels(name: str) -> tuple[str, ...] | None:
    """The bundled task's labels (``None``: numeric answer); ValueError for an unknown task."""
    from ..data.tasks import TASKS

    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available tasks: {', '.join(TASKS)}")
    return TASKS[name].labels


def _task_number(raw: str) -> str:
    s = raw.replace(",", "")
    if "." in s:
        whole, frac = s.split(".", 1)
        if frac.strip("0"):
            return s  # a genuine decimal: kept as written (never equals an integer answer)
        s = whole
    try:
        return str(int(s))
    except ValueError:  # pragma: no cover - the regexes only match numbers
        return s


@cache
def _task_label_re(labels: tuple[str, ...]) -> re.Pattern:
    return re.compile(r"\b(" + "|".join(map(re.escape, labels)) + r")\b", re.IGNORECASE)


def extract_answer(name: str, text: str) -> str | None:
    """The answer a model's free-text output commits to for bundled task ``name``, or ``None``.

    Numeric tasks: the number after the last ``#### N``, else after the last "answer is N"
    (also "answer: N", "answer = N"), else the last number in the text; thousands separators are
    removed and ``18.0`` becomes ``18``, but a genuine decimal keeps its written form (``12.50``).
    ``topic``: the earliest allowed label appearing as a whole word (case-insensitive) in the
    first non-empty line, lowercased; at one position the labels are tried in the task's order.
    """
    labels = _task_labels(name)
    if text is None:
        return None
    if labels is None:
        for pattern in (_TASK_HASH, _TASK_SAID):
            hits = pattern.findall(text)
            if hits:
                return _task_number(hits[-1])
        hits = _TASK_ANY.findall(text)
        return _task_number(hits[-1]) if hits else None
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    m = _task_label_re(labels).search(lines[0])
    return m.group(1).lower() if m else None


def score_exact(name: str, prediction_text: str, answer: str) -> bool:
    """Exact string match of :func:`extract_answer` on the prediction against the gold ``answer``."""
    pred = extract_answer(name, prediction_text)
    if pred is None:
        return False
    gold = answer.strip()
    numeric = _task_labels(name) is None
    gold = _task_number(gold) if numeric and re.fullmatch(_TASK_NUM, gold) else gold.lower()
    return pred == gold


# ---- the other scorers and their dispatch ----------------------------------------------------


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
