"""Synthetic downstream tasks: generates the seeded train/test items whose utility safeanchor measures.

Three tasks, each generated from a seed (this module only generates them; they are scored by exact
match on an extracted answer in :mod:`safeanchor.evaluate.tasks`, see ``score_exact`` there):

``arithmetic``
    Short word problems (addition, subtraction, multiplication of small numbers, two-step
    problems); every answer is an integer in ``[0, 200)``. The training response is the bare
    integer, e.g. ``"18"``.
``arithmetic_steps``
    The same problems (same train and test items) with a worked response, e.g.
    ``"34 + 33 = 67, then 67 - 14 = 53.\nThe answer is 53."``: more response tokens for the
    fine-tuning to act on, closer to GSM8K-style data; scored on the final number.
``topic``
    A synthetic news headline (templates + word lists, fictional names) to be classified as one
    of ``sports, business, science, politics, entertainment``. The training response is the bare
    label, e.g. ``"science"``.

A small instruct model answers both in free text zero-shot (so exact match is low), while the
fixed response format and the keyword -> label / template -> operation mappings are learnable in
a few hundred LoRA steps.

The word lists (names, objects, containers, topic labels, headline slot fillers) live in
``data/bundled/task_words.json`` and are read once; the order of every list is part of the task.

Splits: ``test`` is a fixed, prefix-stable sequence (the first ``n`` test items never depend on
``n`` or on ``seed``); ``train`` depends on ``seed`` and never contains a prompt of the test
pool (the first :data:`TEST_POOL_SIZE` test items).

>>> rows = generate_task("arithmetic", "train", n=2)
>>> sorted(rows[0])
['answer', 'id', 'prompt', 'response', 'task']
>>> generate_task("topic", "test", 1)[0]["answer"] in TOPIC_LABELS
True
"""

from __future__ import annotations

import importlib.resources
import json
import random
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Callable

SPLITS = ("train", "test", "val")
DEFAULT_TRAIN_SIZE = 2000
DEFAULT_TEST_SIZE = 200
TEST_POOL_SIZE = 1000  # test items reserved (kept out of every train set); max test n
VAL_SIZE = 200  # the next items of the same held-out stream: the val split, for tuning (also kept out of train)
MAX_TRAIN_SIZE = 20000


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    labels: tuple[str, ...] | None  # None for numeric answers


WORDS_FILE = "task_words.json"  # in data/bundled/


@dataclass(frozen=True)
class _Words:
    topic_labels: tuple[str, ...]
    names: tuple[str, ...]  # arithmetic: first names
    items: tuple[str, ...]  # arithmetic: countable objects
    others: tuple[str, ...]  # arithmetic: who receives a gift
    containers: tuple[str, ...]  # arithmetic: boxes, bags, ...
    people: tuple[str, ...]  # topic: "First Last" names
    surnames: tuple[str, ...]  # topic: the last names of ``people``
    slots: dict[str, tuple[str, ...]]  # topic: template slot -> fillers


@cache
def _words() -> _Words:
    """The generators' word lists, read once from ``data/bundled/task_words.json`` (order kept)."""
    path = importlib.resources.files(__package__) / "bundled" / WORDS_FILE
    raw = json.loads(path.read_text(encoding="utf-8"))
    arith, topic = raw["arithmetic"], raw["topic"]
    people = tuple(topic["people"])
    return _Words(
        topic_labels=tuple(raw["topic_labels"]),
        names=tuple(arith["names"]), items=tuple(arith["items"]), others=tuple(arith["others"]),
        containers=tuple(arith["containers"]),
        people=people, surnames=tuple(p.split()[1] for p in people),
        slots={k: tuple(v) for k, v in topic["slots"].items()},
    )


TOPIC_LABELS: tuple[str, ...] = _words().topic_labels

TASKS: dict[str, TaskSpec] = {
    "arithmetic": TaskSpec(
        "arithmetic",
        "Short arithmetic word problems (add, subtract, multiply, two-step); the answer is one "
        "integer below 200 and the target response is that integer alone.",
        None,
    ),
    "arithmetic_steps": TaskSpec(
        "arithmetic_steps",
        "The arithmetic problems (same items, same test set) with a worked target response: the "
        "calculation, then 'The answer is N.' (GSM8K-style; scored on the final number).",
        None,
    ),
    "topic": TaskSpec(
        "topic",
        "Classify a synthetic news headline as one of: " + ", ".join(TOPIC_LABELS)
        + "; the target response is the label alone.",
        TOPIC_LABELS,
    ),
}

# --------------------------------------------------------------------------------------------
# arithmetic
# --------------------------------------------------------------------------------------------



def _arith_add(rng: random.Random) -> tuple[str, int, str]:
    w = _words()
    name, item = rng.choice(w.names), rng.choice(w.items)
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    t = rng.randrange(3)
    if t == 0:
        q = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
    elif t == 1:
        q = (f"There are {a} {item} on a table. {name} puts {b} more {item} on the table. "
             f"How many {item} are on the table now?")
    else:
        q = f"{name} collected {a} {item} on Monday and {b} {item} on Tuesday. How many {item} is that in total?"
    return q, a + b, f"{a} + {b} = {a + b}."


def _arith_sub(rng: random.Random) -> tuple[str, int, str]:
    w = _words()
    name, item, other = rng.choice(w.names), rng.choice(w.items), rng.choice(w.others)
    a = rng.randint(10, 150)
    b = rng.randint(1, a - 1)
    t = rng.randrange(3)
    if t == 0:
        q = f"{name} has {a} {item} and gives {b} to {other}. How many {item} does {name} have now?"
    elif t == 1:
        q = f"A jar holds {a} {item}. {name} takes out {b} of them. How many {item} are left in the jar?"
    else:
        q = f"{name} had {a} {item} but lost {b}. How many {item} does {name} have left?"
    return q, a - b, f"{a} - {b} = {a - b}."


def _arith_mul(rng: random.Random) -> tuple[str, int, str]:
    w = _words()
    name, item, box = rng.choice(w.names), rng.choice(w.items), rng.choice(w.containers)
    a, b = rng.randint(2, 12), rng.randint(2, 15)
    t = rng.randrange(3)
    if t == 0:
        q = f"{name} buys {a} {box} of {item}. Each of the {box} has {b} {item}. How many {item} does {name} buy?"
    elif t == 1:
        q = f"There are {a} {box} with {b} {item} in each. How many {item} are there altogether?"
    else:
        q = f"{name} gets {b} {item} every day for {a} days. How many {item} does {name} get in all?"
    return q, a * b, f"{a} x {b} = {a * b}."


def _arith_two_step(rng: random.Random) -> tuple[str, int, str]:
    w = _words()
    name, item = rng.choice(w.names), rng.choice(w.items)
    other, box = rng.choice(w.others), rng.choice(w.containers)
    t = rng.randrange(3)
    if t == 0:
        a, b = rng.randint(5, 90), rng.randint(2, 60)
        c = rng.randint(1, a + b - 1)
        q = (f"{name} has {a} {item}, buys {b} more, and then gives {c} to {other}. "
             f"How many {item} does {name} have now?")
        return q, a + b - c, f"{a} + {b} = {a + b}, then {a + b} - {c} = {a + b - c}."
    if t == 1:
        a, b = rng.randint(2, 9), rng.randint(2, 12)
        c = rng.randint(1, 199 - a * b)
        q = (f"{name} already has {c} {item} and buys {a} {box} with {b} {item} in each. "
             f"How many {item} does {name} have now?")
        return q, a * b + c, f"{a} x {b} = {a * b}, then {a * b} + {c} = {a * b + c}."
    a, b = rng.randint(2, 9), rng.randint(2, 12)
    c = rng.randint(1, a * b - 1)
    q = (f"{name} fills {a} {box} with {b} {item} each and then eats or uses {c} of them. "
         f"How many {item} are left?")
    return q, a * b - c, f"{a} x {b} = {a * b}, then {a * b} - {c} = {a * b - c}."


_ARITH_KINDS = (_arith_add, _arith_sub, _arith_mul, _arith_two_step)


def _make_arithmetic(rng: random.Random) -> tuple[str, str, str]:
    question, value, work = rng.choice(_ARITH_KINDS)(rng)
    if not 0 <= value < 200:  # pragma: no cover - the number ranges above rule this out
        raise AssertionError(f"arithmetic answer out of range: {question!r} -> {value}")
    return question, str(value), f"{work}\nThe answer is {value}."


# --------------------------------------------------------------------------------------------
# topic
# --------------------------------------------------------------------------------------------

_TOPIC_TEMPLATES: dict[str, tuple[str, ...]] = {
    "sports": (
        "{team} {beat} {team2} in {match}",
        "{person} sets new {sport} record at {venue}",
        "{team} sign {person} on a {years}-year deal",
        "Injury rules {position} {person} out of {match}",
        "{person} wins {sport} gold after {drama}",
    ),
    "business": (
        "{company} shares {move} after {report}",
        "{company} to cut {jobs} jobs as {pressure}",
        "{company} agrees to buy {company2} in {amount} deal",
        "{company} posts record {period} profit on strong {product} sales",
        "Startup {startup} raises {amount} to expand {service}",
    ),
    "science": (
        "Researchers at {institute} discover {thing} in {place}",
        "{institute} study links {factor} to {outcome}",
        "{telescope} spots {object} {distance}",
        "Scientists at {institute} decode genome of {organism}, revealing clues to {trait}",
        "Physicists at {institute} measure {quantity} with record precision using {instrument}",
        "{probe} sends back first {imagery} of {body}",
    ),
    "politics": (
        "{title} {surname} wins {election} by a narrow margin",
        "{chamber} passes {bill} bill on {issue} after {debate}",
        "{party} unveils plan to reform {issue} ahead of {election}",
        "{title} {surname} resigns amid {scandal}",
        "{title} {surname} and {title2} {surname2} clash over {issue} in {debate}",
    ),
    "entertainment": (
        "{film}, starring {person}, tops the weekend box office {boxnote}",
        "Singer {person} announces {tour} {tourwhen}",
        "{network} renews {show} for a {ordinal} season after {showreason}",
        "{person} to star in {film} sequel directed by {person2}",
        "{film} sweeps {awards} with {wins} wins",
        "{band} drop {album} ahead of {release}",
    ),
}

_SLOT = re.compile(r"\{(\w+)\}")


def _fill(template: str, rng: random.Random) -> str:
    w = _words()
    chosen: dict[str, str] = {}

    def pick(m: re.Match) -> str:
        slot = m.group(1)
        base = slot.rstrip("2")
        if base == "person":
            value = rng.choice([p for p in w.people if p != chosen.get("person")])
        elif base == "surname":
            value = rng.choice([s for s in w.surnames if s != chosen.get("surname")])
        elif slot == "years":
            value = str(rng.randint(2, 5))
        elif slot == "wins":
            value = str(rng.randint(3, 9))
        else:
            options = w.slots[base]
            if slot != base:  # a second slot of the same kind: pick a different value
                options = tuple(o for o in options if o != chosen.get(base))
            value = rng.choice(options)
        chosen[slot] = value
        return value

    text = _SLOT.sub(pick, template)
    return text[0].upper() + text[1:]


def topic_prompt(headline: str) -> str:
    return (f"Classify the topic of this headline as one of: {', '.join(TOPIC_LABELS)}.\n"
            f"Headline: {headline}")


def _make_topic(rng: random.Random) -> tuple[str, str, str]:
    label = rng.choice(TOPIC_LABELS)
    headline = _fill(rng.choice(_TOPIC_TEMPLATES[label]), rng)
    return topic_prompt(headline), label, label


# task -> (item maker, task whose items it shares, response: "answer" or the worked "solution")
_MAKERS: dict[str, Callable[[random.Random], tuple[str, str, str]]] = {
    "arithmetic": _make_arithmetic,
    "topic": _make_topic,
}
_ITEMS_OF = {"arithmetic_steps": "arithmetic"}

# --------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available tasks: {', '.join(TASKS)}")


def _stream(name: str, rng: random.Random, n: int,
            exclude: frozenset[str] = frozenset()) -> list[tuple[str, str, str]]:
    """The first ``n`` distinct (prompt, answer, solution) items drawn from ``rng``, skipping ``exclude``."""
    make = _MAKERS[name]
    seen: set[str] = set()
    out: list[tuple[str, str, str]] = []
    misses = 0
    while len(out) < n:
        prompt, answer, solution = make(rng)
        if prompt in seen or prompt in exclude:
            misses += 1
            if misses > 50 * n + 1000:  # pragma: no cover - the generators are far from exhausted
                raise RuntimeError(f"task {name!r}: could not draw {n} distinct items")
            continue
        seen.add(prompt)
        out.append((prompt, answer, solution))
    return out


@lru_cache(maxsize=None)
def _test_pool(name: str) -> tuple[tuple[str, str, str], ...]:
    # one stream: its first TEST_POOL_SIZE items are the test pool (prefix-stable), the next VAL_SIZE the val split
    return tuple(_stream(name, random.Random(f"safeanchor-task:{name}:test"), TEST_POOL_SIZE + VAL_SIZE))


def generate_task(name: str, split: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """Generate ``n`` records of task ``name`` for ``split`` (``train``, ``test`` or ``val``).

    Records: ``{"id", "prompt", "response", "answer", "task"}``; ``response`` is the exact target
    text (equal to ``answer``). ``n`` defaults to 2000 (train) / 200 (test). The test set is
    fixed: it ignores ``seed`` and is prefix-stable in ``n`` (at most 1000 items); ``val`` is a fixed
    set of 200 disjoint from it and from every train set (for tuning). Train items
    depend on ``seed``, are prefix-stable in ``n`` and never repeat a prompt of the test pool.
    """
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for task {name!r}; splits: {', '.join(SPLITS)}")
    limit = {"test": TEST_POOL_SIZE, "val": VAL_SIZE}.get(split, MAX_TRAIN_SIZE)
    if n is None:
        n = DEFAULT_TEST_SIZE if split in ("test", "val") else DEFAULT_TRAIN_SIZE
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= limit:
        raise ValueError(f"n must be an integer in [0, {limit}] for the {split} split, got {n!r}")
    items_of = _ITEMS_OF.get(name, name)
    pool = _test_pool(items_of)
    if split == "test":
        items = list(pool[:n])
    elif split == "val":  # the items after the test pool in the same stream: disjoint from test and train
        items = list(pool[TEST_POOL_SIZE:][:n])
    else:
        exclude = frozenset(p for p, _, _ in pool)
        items = _stream(items_of, random.Random(f"safeanchor-task:{items_of}:train:{seed}"), n, exclude)
    worked = name != items_of
    return [{"id": f"{name}-{split}-{i:05d}", "prompt": p, "response": sol if worked else a, "answer": a, "task": name}
            for i, (p, a, sol) in enumerate(items)]


__all__ = ["TASKS", "TaskSpec", "TOPIC_LABELS", "generate_task", "topic_prompt",
           "DEFAULT_TRAIN_SIZE", "DEFAULT_TEST_SIZE", "TEST_POOL_SIZE"]
