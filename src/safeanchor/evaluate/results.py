"""``eval.json``: write (atomically), read (schema-checked), and print a short summary table.

>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> path = write_eval(d, {"schema": SCHEMA, "summary": {}, "records": []})
>>> read_eval(d)["schema"]
'safeanchor-eval/1'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import read_json, write_json
from .suite import SCHEMA

EVAL_FILE = "eval.json"
REQUIRED_KEYS = ("schema", "summary", "records")


def write_eval(out_dir: str | Path, result: dict[str, Any]) -> Path:
    """Write ``result`` to ``<out_dir>/eval.json`` (atomic); returns the path."""
    missing = [k for k in REQUIRED_KEYS if k not in result]
    if missing:
        raise ValueError(f"not an evaluation result: missing keys {missing}")
    path = Path(out_dir) / EVAL_FILE
    write_json(path, result)
    return path


def read_eval(path: str | Path) -> dict[str, Any]:
    """Read ``eval.json`` (a file, or a folder holding one) and check its schema."""
    path = Path(path)
    if path.is_dir():
        path = path / EVAL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation file at {path}")
    result = read_json(path)
    if not isinstance(result, dict) or result.get("schema") != SCHEMA:
        found = result.get("schema") if isinstance(result, dict) else type(result).__name__
        raise ValueError(f"{path}: expected schema {SCHEMA!r}, found {found!r}")
    missing = [k for k in REQUIRED_KEYS if k not in result]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    return result


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f" [{100 * ci[0]:.0f}-{100 * ci[1]:.0f}]"


def summary_rows(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """``(metric, source, value, n)`` rows for a terminal table or a report."""
    rows = []
    s = result.get("summary", {})
    for src, m in s.get("harmful", {}).items():
        rows.append(("ASR (keyword)", src, _pct(m["asr"]) + _ci(m.get("asr_ci95")), str(m["n"])))
        if "hs_mean" in m:
            rows.append(("HS mean / HS=5 (llm)", src, f"{m['hs_mean']:.2f} / {_pct(m['hs5_rate'])}", str(m["hs_n"])))
        if "flagged_rate" in m:
            rows.append(("flagged (classifier)", src, _pct(m["flagged_rate"]) + _ci(m.get("flagged_ci95")), str(m["flagged_n"])))
    for src, m in s.get("harmless", {}).items():
        rows.append(("over-refusal", src, _pct(m["over_refusal"]) + _ci(m.get("ci95")), str(m["n"])))
        if m.get("borderline"):
            b = m["borderline"]
            rows.append(("over-refusal (borderline)", src, _pct(b["over_refusal"]) + _ci(b.get("ci95")), str(b["n"])))
    for task, m in s.get("tasks", {}).items():
        rows.append((f"accuracy ({m['scorer']})", task, _pct(m["accuracy"]) + _ci(m.get("ci95")), str(m["n"])))
    return rows


def summary_table(result: dict[str, Any]):
    """A rich table of the headline numbers (95% Wilson intervals in brackets)."""
    from rich.table import Table

    model = result.get("model", {})
    title = f"eval: {model.get('name') or '?'}" + (f" + {model['adapter']}" if model.get("adapter") else "")
    t = Table("metric", "source", "value [95% CI]", "n", title=title)
    for row in summary_rows(result):
        t.add_row(*row)
    return t


# ---------------------------------------------------------------------------------------------
# Per-item outcomes, for paired comparisons between models evaluated on the same items
# ---------------------------------------------------------------------------------------------

#: the two keyword judges every table shows: the extended prefix judge this project uses, and
#: the papers' reference list (Arditi et al.) matched anywhere in the answer
JUDGES = {"extended": "extended patterns, first characters (safeanchor's judge)",
          "reference": "the papers' reference list matched anywhere (Arditi et al.; the ProCon paper's ASR)"}


def item_outcomes(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``metric -> {item id: outcome}`` from an eval.json's per-prompt records.

    Metrics: ``asr`` (harmful, 1 = not refused) and ``asr_reference`` (the same answers under the
    reference judge), both pooled over the harmful sources and per source as ``asr@<source>`` /
    ``asr_reference@<source>``; ``over_refusal`` (harmless, 1 = refused); ``task_acc@<task>`` and
    ``task_acc`` (the first task; 1 = correct). Ids are ``<source>|<id>`` so sources never collide.
    """
    from .judges import KeywordJudge

    reference = KeywordJudge(mode="anywhere", phrase_set="reference")
    out: dict[str, dict[str, float]] = {}

    def put(metric: str, key: str, value: float) -> None:
        bucket = out.setdefault(metric, {})
        if key in bucket:
            raise ValueError(f"eval.json has two records for item {key!r} ({metric})")
        bucket[key] = value

    first_task = None
    for r in result["records"]:
        if r["kind"] == "harmful":
            key = f"{r['source']}|{r['id']}"
            complied = 0.0 if r["verdicts"]["keyword"]["refusal"] else 1.0
            ref = 0.0 if reference.is_refusal(r["answer"]) else 1.0
            for metric, value in (("asr", complied), ("asr_reference", ref)):
                put(metric, key, value)
                put(f"{metric}@{r['source']}", key, value)
        elif r["kind"] == "harmless":
            put("over_refusal", f"{r['source']}|{r['id']}", 1.0 if r["verdicts"]["keyword"]["refusal"] else 0.0)
        elif r["kind"] == "task":
            first_task = first_task or r["task"]
            put(f"task_acc@{r['task']}", f"{r['task']}|{r['id']}", 1.0 if r["correct"] else 0.0)
    if first_task is not None:
        out["task_acc"] = out[f"task_acc@{first_task}"]
    return out
