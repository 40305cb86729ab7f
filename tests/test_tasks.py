"""Synthetic downstream tasks: determinism, fixed test sets, disjoint splits, correct answers,
and the answer extraction / exact-match scoring."""

from __future__ import annotations

import dataclasses
import doctest
import re
from collections import Counter

import pytest

from safeanchor.data import tasks
from safeanchor.data.tasks import TASKS, TaskSpec, extract_answer, generate_task, score_exact

LABELS = ("sports", "business", "science", "politics", "entertainment")


def test_registry():
    assert set(TASKS) == {"arithmetic", "arithmetic_steps", "topic"}
    assert all(isinstance(s, TaskSpec) and s.name == k and s.description for k, s in TASKS.items())
    assert TASKS["arithmetic"].labels is None
    assert TASKS["topic"].labels == LABELS
    with pytest.raises(dataclasses.FrozenInstanceError):
        TASKS["topic"].name = "x"


@pytest.mark.parametrize("name", ["arithmetic", "topic"])
def test_default_sizes_and_record_shape(name):
    train, test = generate_task(name, "train"), generate_task(name, "test")
    assert len(train) == 2000 and len(test) == 200
    for split, rows in (("train", train), ("test", test)):
        assert [r["id"] for r in rows[:3]] == [f"{name}-{split}-00000", f"{name}-{split}-00001",
                                               f"{name}-{split}-00002"]
        for r in rows:
            assert set(r) == {"id", "prompt", "response", "answer", "task"}
            assert r["task"] == name and r["response"] == r["answer"] and r["prompt"]
        assert len({r["prompt"] for r in rows}) == len(rows)  # no repeats within a split


@pytest.mark.parametrize("name", ["arithmetic", "topic"])
def test_deterministic_and_prefix_stable(name):
    assert generate_task(name, "train", 300, seed=3) == generate_task(name, "train", 300, seed=3)
    assert generate_task(name, "train", 100, seed=3) == generate_task(name, "train", 300, seed=3)[:100]
    assert generate_task(name, "train", 50, seed=1) != generate_task(name, "train", 50, seed=2)
    test = generate_task(name, "test")
    assert generate_task(name, "test", 37) == test[:37]
    assert generate_task(name, "test", 500)[:200] == test
    assert generate_task(name, "test", seed=9) == test  # the test set ignores the seed


@pytest.mark.parametrize("name", ["arithmetic", "topic"])
@pytest.mark.parametrize("seed", [0, 1])
def test_train_and_test_are_disjoint(name, seed):
    test_prompts = {r["prompt"] for r in generate_task(name, "test", tasks.TEST_POOL_SIZE)}
    train_prompts = {r["prompt"] for r in generate_task(name, "train", seed=seed)}
    assert not test_prompts & train_prompts


def test_first_items_are_pinned():
    # Guards against silent changes to the generators (which would change every reported number).
    a = generate_task("arithmetic", "test", 2)
    assert a[0]["prompt"] == "Ines gets 14 seeds every day for 4 days. How many seeds does Ines get in all?"
    assert a[0]["response"] == "56"
    assert a[1]["prompt"] == ("There are 81 buttons on a table. Hugo puts 65 more buttons on the table. "
                              "How many buttons are on the table now?")
    assert a[1]["response"] == "146"
    t = generate_task("topic", "test", 1)[0]
    assert t["prompt"] == ("Classify the topic of this headline as one of: "
                           "sports, business, science, politics, entertainment.\n"
                           "Headline: Keystone Energy posts record holiday-season profit on strong insurance sales")
    assert t["response"] == "business"


# ---- arithmetic -----------------------------------------------------------------------------

_SOLVERS = [
    (r"has (\d+) \w[\w ]* and gets (\d+) more", lambda a, b: a + b),
    (r"There are (\d+) \w[\w ]* on a table\. \w+ puts (\d+) more", lambda a, b: a + b),
    (r"collected (\d+) \w[\w ]* on Monday and (\d+)", lambda a, b: a + b),
    (r"has (\d+) \w[\w ]* and gives (\d+) to", lambda a, b: a - b),
    (r"A jar holds (\d+) \w[\w ]*\. \w+ takes out (\d+)", lambda a, b: a - b),
    (r"had (\d+) \w[\w ]* but lost (\d+)", lambda a, b: a - b),
    (r"buys (\d+) \w+ of \w[\w ]*\. Each of the \w+ has (\d+)", lambda a, b: a * b),
    (r"There are (\d+) \w+ with (\d+) \w[\w ]* in each\.", lambda a, b: a * b),
    (r"gets (\d+) \w[\w ]* every day for (\d+) days", lambda a, b: a * b),
    (r"has (\d+) \w[\w ]*, buys (\d+) more, and then gives (\d+)", lambda a, b, c: a + b - c),
    (r"already has (\d+) \w[\w ]* and buys (\d+) \w+ with (\d+)", lambda c, a, b: a * b + c),
    (r"fills (\d+) \w+ with (\d+) \w[\w ]* each and then eats or uses (\d+)", lambda a, b, c: a * b - c),
]


def _solve(prompt: str) -> tuple[int, int]:
    hits = [(i, m) for i, (pat, _) in enumerate(_SOLVERS) if (m := re.search(pat, prompt))]
    assert len(hits) == 1, (prompt, [i for i, _ in hits])
    i, m = hits[0]
    return i, _SOLVERS[i][1](*map(int, m.groups()))


def test_arithmetic_answers_are_correct_and_small():
    rows = generate_task("arithmetic", "test") + generate_task("arithmetic", "train", 1000)
    kinds = Counter()
    for r in rows:
        kind, value = _solve(r["prompt"])
        kinds[kind] += 1
        assert r["answer"] == str(value) and r["response"] == str(value)
        assert 0 <= value < 200
        assert all(int(x) < 200 for x in re.findall(r"\d+", r["prompt"]))
    assert set(kinds) == set(range(len(_SOLVERS)))  # every template is used
    assert max(kinds.values()) < 0.2 * len(rows)
    answers = Counter(r["answer"] for r in rows)
    assert len(answers) > 120 and answers.most_common(1)[0][1] < 0.03 * len(rows)


# ---- topic ----------------------------------------------------------------------------------


def test_topic_labels_balanced_and_not_given_away():
    test = generate_task("topic", "test")
    train = generate_task("topic", "train")
    for rows in (test, train):
        counts = Counter(r["answer"] for r in rows)
        assert set(counts) == set(LABELS)
        assert min(counts.values()) >= 0.12 * len(rows)
    label_word = re.compile(r"\b(" + "|".join(LABELS) + r")\b", re.IGNORECASE)
    for r in test + train:
        first, headline = r["prompt"].split("\n")
        assert first == tasks.topic_prompt("x").split("\n")[0]
        assert headline.startswith("Headline: ")
        assert not label_word.search(headline), headline
        assert r["response"] in LABELS


def test_topic_same_headline_never_gets_two_labels():
    rows = generate_task("topic", "train") + generate_task("topic", "test", 1000)
    seen: dict[str, str] = {}
    for r in rows:
        assert seen.setdefault(r["prompt"], r["answer"]) == r["answer"]


# ---- extraction and scoring -----------------------------------------------------------------


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
])
def test_extract_arithmetic(text, expected):
    assert extract_answer("arithmetic", text) == expected


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


@pytest.mark.parametrize("name", ["arithmetic", "topic"])
def test_gold_responses_score_perfectly(name):
    rows = generate_task(name, "test")
    assert all(score_exact(name, r["response"], r["answer"]) for r in rows)
    wrong = rows[1:] + rows[:1]  # answers shifted by one: mostly wrong
    assert sum(score_exact(name, w["response"], r["answer"]) for w, r in zip(wrong, rows)) < 0.5 * len(rows)


# ---- errors ---------------------------------------------------------------------------------


def test_unknown_names_and_splits_raise():
    with pytest.raises(ValueError, match="arithmetic.*topic"):
        generate_task("sentiment", "train")
    with pytest.raises(ValueError, match="train.*test"):
        generate_task("arithmetic", "val")
    with pytest.raises(ValueError, match="arithmetic.*topic"):
        extract_answer("nope", "1")
    with pytest.raises(ValueError, match="arithmetic.*topic"):
        score_exact("nope", "1", "1")
    with pytest.raises(ValueError, match="n must be"):
        generate_task("topic", "test", tasks.TEST_POOL_SIZE + 1)
    with pytest.raises(ValueError, match="n must be"):
        generate_task("topic", "train", -1)
    assert generate_task("topic", "train", 0) == []


def test_module_doctests():
    assert doctest.testmod(tasks).failed == 0


def test_arithmetic_steps_shares_items_and_answers_with_worked_responses():
    for split, n in (("train", 40), ("test", 40)):
        bare, worked = generate_task("arithmetic", split, n), generate_task("arithmetic_steps", split, n)
        assert [r["prompt"] for r in bare] == [r["prompt"] for r in worked]
        assert [r["answer"] for r in bare] == [r["answer"] for r in worked]
        for r in worked:
            assert r["response"].endswith(f"The answer is {r['answer']}.") and "=" in r["response"]
            assert score_exact("arithmetic_steps", r["response"], r["answer"])
            # the calculation shown is right: every "x op y = z" holds
            for a, op, b, z in re.findall(r"(\d+) ([-+x]) (\d+) = (\d+)", r["response"]):
                a, b, z = int(a), int(b), int(z)
                assert {"+": a + b, "-": a - b, "x": a * b}[op] == z, r["response"]
