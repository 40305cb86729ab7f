"""Synthetic task generation (data/): determinism, fixed test sets, splits, answers, word lists, no scoring."""

from __future__ import annotations

import ast
import dataclasses
import doctest
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from safeanchor.data import tasks
from safeanchor.data.tasks import TASKS, TaskSpec, generate_task
from safeanchor.evaluate.tasks import score_exact  # the one scorer; data/ only generates

DATA_DIR = Path(tasks.__file__).resolve().parent
WORDS_JSON = DATA_DIR / "bundled" / tasks.WORDS_FILE

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


# ---- the generated items score perfectly under the one scorer (evaluate.tasks.score_exact) ---


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
    with pytest.raises(ValueError, match="train.*test.*val"):
        generate_task("arithmetic", "dev")
    with pytest.raises(ValueError, match="n must be"):
        generate_task("arithmetic", "val", tasks.VAL_SIZE + 1)
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


# ---- word lists (data/bundled/task_words.json) ------------------------------------------------


def test_items_are_pinned_byte_for_byte():
    # sha256 of the first 1000 test and 500 train (seed 0) items, as produced before the word
    # lists moved out of the code into task_words.json: any change of a word or of its order shows.
    pins = {"arithmetic": "dec778627f7fc6f1efc3f201f16e4c61dcc570e5ea2d55a0e11716d793f515f8",
            "arithmetic_steps": "2f1494d6f06717c8be0e8242c34d3dd7737adce5435c649bb19420f70ba0880e",
            # topic: re-pinned when the val split (the 200 held-out items after the test pool) was kept out of
            # train sets too; some topic train items had been those prompts (the arithmetic ones had not)
            "topic": "ad09c3bc912486a12a3e9c78e067c6fecae4c5ca7d14c989a73f8ae83a87e25e"}
    for name, pin in pins.items():
        rows = generate_task(name, "test", 1000) + generate_task(name, "train", 500, seed=0)
        assert hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest() == pin, name


def test_word_lists_come_from_the_bundled_json_once():
    raw = json.loads(WORDS_JSON.read_text(encoding="utf-8"))
    WORDS_JSON.read_bytes().decode("ascii")  # plain ASCII, like the other bundled files
    w = tasks._words()
    assert tasks._words() is w  # read once (functools.cache)
    assert tasks.TOPIC_LABELS == tuple(raw["topic_labels"]) == LABELS == TASKS["topic"].labels
    assert w.names == tuple(raw["arithmetic"]["names"]) and w.items == tuple(raw["arithmetic"]["items"])
    assert w.others == tuple(raw["arithmetic"]["others"]) and w.containers == tuple(raw["arithmetic"]["containers"])
    assert w.people == tuple(raw["topic"]["people"]) and w.surnames == tuple(p.split()[1] for p in w.people)
    assert w.slots == {k: tuple(v) for k, v in raw["topic"]["slots"].items()}
    lists = [w.names, w.items, w.others, w.containers, w.people, w.surnames, *w.slots.values()]
    assert all(lst and len(set(lst)) == len(lst) for lst in lists)  # non-empty, no repeats
    # every slot of every headline template has fillers (or is one of the slots drawn in code)
    slots = {m.rstrip("2") for ts in tasks._TOPIC_TEMPLATES.values() for t in ts for m in re.findall(r"\{(\w+)\}", t)}
    assert slots - {"person", "surname", "years", "wins"} == set(w.slots)


def test_no_word_list_left_in_the_code():
    # (headline templates, with their "{slot}"s, stay in the code; so do __all__ and the split names)
    tree = ast.parse((DATA_DIR / "tasks.py").read_text(encoding="utf-8"))
    exported = {id(n.value) for n in tree.body if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id in ("__all__", "SPLITS") for t in n.targets)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and id(node) not in exported:
            words = [e.value for e in node.elts
                     if isinstance(e, ast.Constant) and isinstance(e.value, str) and "{" not in e.value]
            assert len(words) < 3, f"line {node.lineno}: a hard-coded word list {words[:3]}..."


# ---- data/ generates, it never scores ---------------------------------------------------------

_SCORING = re.compile(r"score|extract_answer|normali[sz]e_number|match_label|final_number|numbers_equal", re.I)


def test_nothing_in_data_scores():
    assert not {"score_exact", "extract_answer", "_normalise_number", "_LABEL_RE"} & set(vars(tasks))
    assert not [n for n in tasks.__all__ if _SCORING.search(n)]
    for path in sorted(DATA_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert not _SCORING.search(node.name), f"{path.name}:{node.lineno}: {node.name} scores answers"
            if isinstance(node, ast.ImportFrom):  # data/ is below evaluate/: no import of it
                module = node.module or ""
                absolute = node.level == 0 and module.startswith("safeanchor.evaluate")
                relative = node.level >= 2 and module.split(".")[0] == "evaluate"
                assert not (absolute or relative), f"{path.name}:{node.lineno} imports evaluate"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("safeanchor.evaluate") for a in node.names), path.name


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_val_split_is_fixed_and_disjoint_from_test_and_train(name):
    val = generate_task(name, "val")
    assert len(val) == tasks.VAL_SIZE and val == generate_task(name, "val")
    val_prompts = {r["prompt"] for r in val}
    assert not val_prompts & {r["prompt"] for r in generate_task(name, "test", tasks.TEST_POOL_SIZE)}
    assert not val_prompts & {r["prompt"] for r in generate_task(name, "train", 2000, seed=0)}
