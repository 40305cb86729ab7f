"""Task scorers (all of them, bundled tasks included), Wilson intervals and safety summaries (no model)."""

from __future__ import annotations

import doctest

import pytest

from safeanchor.data import Record
from safeanchor.data.tasks import TOPIC_LABELS, generate_task
from safeanchor.evaluate import tasks as eval_tasks
from safeanchor.evaluate.safety import harmful_summary, harmless_summary, summarise_sources
from safeanchor.evaluate.tasks import (extract_answer, extract_final_number, load_task_records, match_label, numbers_equal,
                                       resolve_scorer, score_answer, score_exact, task_accuracy, task_source,
                                       wilson_interval)


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


# ---- the bundled-task scorer (extract_answer / score_exact; moved here from data/tasks.py) -----


@pytest.mark.parametrize("text, expected", [
    ("18", "18"),
    ("The answer is 1,234.", "1234"),
    ("First 12 + 5 = 17, then 17 - 3 = 14.\n#### 14", "14"),
    ("#### 14\nBut also 99 other things", "14"),
    ("The answer is 7. Check: 3 + 4 = 7 and we had 9 apples.", "7"),
    ("Answer: $45", "45"),
    ("She has 3, then 5 more, so 8 in total.", "8"),
    ("It comes to 18.0 stickers", "18"),
    ("about 2.5", "2.5"),
    ("It went down to -3", "-3"),
    ("1,200 marbles", "1200"),
    ("I don't know.", None),
    ("", None),
    (None, None),
])
def test_extract_arithmetic(text, expected):
    assert extract_answer("arithmetic", text) == expected
    assert extract_answer("arithmetic_steps", text) == expected


@pytest.mark.parametrize("text, expected", [
    ("sports", "sports"),
    ("I think it's sports news", "sports"),
    ("Business.", "business"),
    ("\n\n  SCIENCE\n", "science"),
    ("Topic: Politics", "politics"),
    ("It could be science or politics", "science"),  # the earliest label wins
    ("The headline is about a film.\nentertainment", None),  # only the first line counts
    ("sportsmanship", None),  # whole words only
    ("sport", None),
    ("", None),
])
def test_extract_topic(text, expected):
    assert extract_answer("topic", text) == expected


@pytest.mark.parametrize("name, prediction, answer, ok", [
    ("arithmetic", "18", "18", True),
    ("arithmetic", " 18\n", "18", True),
    ("arithmetic", "The answer is 18.", "18", True),
    ("arithmetic", "18 stickers, plus the 2 she kept", "18", False),  # last number is 2
    ("arithmetic", "19", "18", False),
    ("arithmetic", "", "18", False),
    ("arithmetic", "The answer is 1,234.", "1234", True),
    ("topic", "sports", "sports", True),
    ("topic", "I think it's sports news", "sports", True),
    ("topic", "Sports", "sports", True),
    ("topic", "business\nsports", "sports", False),
    ("topic", "It could be science or politics", "politics", False),
    ("topic", "This headline is about a company merger.", "business", False),
])
def test_score_exact(name, prediction, answer, ok):
    assert score_exact(name, prediction, answer) is ok


def test_unknown_bundled_task_raises():
    with pytest.raises(ValueError, match="arithmetic.*topic"):
        extract_answer("nope", "1")
    with pytest.raises(ValueError, match="arithmetic.*topic"):
        score_exact("nope", "1", "1")


# The two scorers that used to exist (data/tasks.py's score_exact for the bundled tasks, this
# module's number / label scorers for other sources) disagreed on these inputs. There is one
# scoring module now; each scorer keeps the behaviour it had, because the bundled one is what
# every reported task accuracy of the bundled tasks (the demo's included) was computed with:
#   text, gold, bundled: (extracted, correct), number: (extracted, correct)
DISAGREEMENTS = [
    ("12.50", "12.5", ("12.50", False), ("12.5", True)),  # bundled keeps a decimal as written
    ("The answer is 12.50", "12.5", ("12.50", False), ("12.5", True)),
    ("The answer would be 12, not 15.", "12", ("15", False), ("12", True)),  # "would be" is no answer phrase there
    ("The answer will be 12, or 15 at most", "12", ("15", False), ("12", True)),
    ("It is 12.00000000001", "12", ("12.00000000001", False), ("12.00000000001", True)),  # strings vs isclose
]


@pytest.mark.parametrize("text, gold, bundled, number", DISAGREEMENTS)
def test_the_one_scorer_on_the_cases_the_two_disagreed(text, gold, bundled, number):
    rec = Record("q", meta={"answer": gold})
    assert (extract_answer("arithmetic", text), score_exact("arithmetic", text, gold)) == bundled
    ok, pred = score_answer("bundled", "arithmetic", text, rec)
    assert (pred, ok) == bundled
    ok, pred = score_answer("number", "file:x.jsonl", text, rec)
    assert (pred, ok) == number
    # what each scorer does with a decimal and an integer answer where they agree
    assert score_exact("arithmetic", "18.0", "18") and numbers_equal(extract_final_number("18.0"), "18")


def test_label_order_bundled_vs_label_scorer():
    # bundled: the labels are tried in the task's order and the match is lowercased; label:
    # the longest label first, and the label is returned as listed. On overlapping labels they differ:
    assert eval_tasks._task_label_re(("science", "science fiction")).search("Science fiction, I think").group(1) == "Science"
    assert match_label("Science fiction, I think", ["science", "science fiction"]) == "science fiction"
    # the bundled topic labels never overlap, so there the two agree, whatever the order
    assert not any(a != b and b.lower().startswith(a.lower()) for a in TOPIC_LABELS for b in TOPIC_LABELS)
    texts = ["Sports", "It is about SCIENCE and sports", "politics? business!", "\n entertainment\nsports", "sport", ""]
    for t in texts:
        assert extract_answer("topic", t) == match_label(t, list(TOPIC_LABELS))


@pytest.mark.parametrize("name", ["arithmetic", "arithmetic_steps", "topic"])
def test_bundled_scorer_is_the_one_task_accuracy_uses(name):
    # the path evaluate/suite.py takes: task name -> records of its test split -> scorer -> accuracy
    display, source, recs = load_task_records(name, limit=50)
    assert (display, source) == (name, f"task:{name}:test")
    assert resolve_scorer(display, recs) == "bundled"
    rows = generate_task(name, "test", 50)
    assert [r.prompt for r in recs] == [r["prompt"] for r in rows]
    summary, out = task_accuracy(name, "bundled", recs, [r["response"] for r in rows])
    assert summary["correct"] == 50
    assert [o["extracted"] for o in out] == [extract_answer(name, r["response"]) for r in rows]


def test_module_doctests():
    assert doctest.testmod(eval_tasks).failed == 0


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
