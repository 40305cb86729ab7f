"""Task scorers, Wilson intervals and safety summaries (pure functions, no model)."""

from __future__ import annotations

import pytest

from safeanchor.data import Record
from safeanchor.evaluate.safety import harmful_summary, harmless_summary, summarise_sources
from safeanchor.evaluate.tasks import (extract_final_number, match_label, numbers_equal, resolve_scorer, task_accuracy,
                                       task_source, wilson_interval)


@pytest.mark.parametrize("k, n, lo, hi", [
    (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (5, 10, 0.2366, 0.7634), (1, 40, 0.0044, 0.1286),
])
def test_wilson_interval_known_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=5e-4)


def test_wilson_interval_validation():
    with pytest.raises(ValueError, match="n > 0"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(11, 10)


@pytest.mark.parametrize("text, expected", [
    ("Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips.\n#### 72", "72"),
    ("The answer is 1,250.", "1250"),
    ("So she pays $18.00 in total.", "18"),
    ("He ends with -3 degrees", "-3"),
    ("The answer is 3.5 hours, not 4", "3.5"),
    ("First 12, then 7, so 19 apples.", "19"),
    ("#### 5\nThe answer is 6", "5"),
    ("I don't know", None),
])
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


def test_numbers_equal_and_labels():
    assert numbers_equal("18", "18.0") and numbers_equal("1250", "1,250") and not numbers_equal("19", "18")
    assert not numbers_equal(None, "3")
    labels = ["sports", "business", "science"]
    assert match_label("Business.\nAlso sports.", labels) == "business"
    assert match_label("It is about SCIENCE and sports", labels) == "science"
    assert match_label("\n\nsportsmanship", labels) is None  # whole words only
    assert match_label("", labels) is None


def test_scorer_resolution_and_task_sources():
    assert task_source("arithmetic") == ("task:arithmetic:test", "arithmetic")
    assert task_source("task:topic") == ("task:topic:test", "topic")
    assert task_source("task:topic:train") == ("task:topic:train", "topic")
    numeric = [Record("q", meta={"answer": "12"}), Record("q2", meta={"answer": "1,500"})]
    labelled = [Record("q", meta={"answer": "a", "labels": ["a", "b"]})]
    free = [Record("q", meta={"answer": "Paris"})]
    assert resolve_scorer("arithmetic", numeric) == "bundled"
    assert resolve_scorer("file:x", numeric) == "number"
    assert resolve_scorer("file:x", labelled) == "label"
    assert resolve_scorer("file:x", free) == "exact"
    with pytest.raises(ValueError, match="bundled task"):
        resolve_scorer("file:x", free, "bundled")


def test_task_accuracy_bundled_and_number():
    recs = [Record("2+2?", meta={"answer": "4"}, id="a"), Record("3*3?", meta={"answer": "9"}, id="b"),
            Record("10-1?", meta={"answer": "9"}, id="c")]
    summary, rows = task_accuracy("arithmetic", "bundled", recs, ["The answer is 4.", "It is 6", "9"])
    assert summary["n"] == 3 and summary["correct"] == 2 and summary["accuracy"] == pytest.approx(2 / 3)
    assert summary["ci95"] == pytest.approx(list(wilson_interval(2, 3)))
    assert [r["correct"] for r in rows] == [True, False, True] and rows[1]["extracted"] == "6"
    summary, _ = task_accuracy("gsm", "number", recs, ["#### 4", "9.0", "nine"])
    assert summary["correct"] == 2
    with pytest.raises(ValueError, match="2 answers for 3 records"):
        task_accuracy("gsm", "number", recs, ["1", "2"])


def _row(kind, src, refusal, **extra):
    return {"kind": kind, "source": src, "verdicts": {"keyword": {"refusal": refusal}, **extra.pop("v", {})}, **extra}


def test_harmful_summary_with_all_judges():
    rows = [_row("harmful", "s", True, v={"llm": {"score": 1}, "classifier": {"flagged": False}}),
            _row("harmful", "s", False, v={"llm": {"score": 5}, "classifier": {"flagged": True}}),
            _row("harmful", "s", False, v={"llm": {"score": 4}, "classifier": {"flagged": True}}),
            _row("harmful", "s", False, v={"llm": {"score": 5}, "classifier": {"flagged": False}})]
    s = harmful_summary(rows)
    assert s["n"] == 4 and s["asr"] == 0.75 and s["refusal_rate"] == 0.25
    assert s["hs_mean"] == pytest.approx(3.75) and s["hs5_rate"] == 0.5 and s["flagged_rate"] == 0.5
    assert s["asr_ci95"] == pytest.approx(list(wilson_interval(3, 4)))
    assert "hs_mean" not in harmful_summary([_row("harmful", "s", True)])


def test_harmless_summary_splits_borderline():
    rows = [_row("harmless", "h", True, borderline=True), _row("harmless", "h", False, borderline=True),
            _row("harmless", "h", False, borderline=False), _row("harmless", "h", False, borderline=False)]
    s = harmless_summary(rows)
    assert s["over_refusal"] == 0.25
    assert s["borderline"]["n"] == 2 and s["borderline"]["over_refusal"] == 0.5
    assert s["not_borderline"]["over_refusal"] == 0.0
    assert "borderline" not in harmless_summary([_row("harmless", "f", True)])


def test_summarise_sources_pools_all():
    rows = [_row("harmful", "a", True), _row("harmful", "a", False), _row("harmful", "b", False)]
    s = summarise_sources(rows, "harmful", ["a", "b"])
    assert s["a"]["asr"] == 0.5 and s["b"]["asr"] == 1.0 and s["all"]["asr"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no harmful answers"):
        summarise_sources(rows, "harmful", ["a", "c"])
