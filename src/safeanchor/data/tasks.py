"""Synthetic downstream tasks: the "useful" fine-tuning data whose utility safeanchor measures.

Two tasks, both generated from a seed, both scored by exact match on an extracted answer:

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

Splits: ``test`` is a fixed, prefix-stable sequence (the first ``n`` test items never depend on
``n`` or on ``seed``); ``train`` depends on ``seed`` and never contains a prompt of the test
pool (the first :data:`TEST_POOL_SIZE` test items).

>>> rows = generate_task("arithmetic", "train", n=2)
>>> sorted(rows[0])
['answer', 'id', 'prompt', 'response', 'task']
>>> score_exact("arithmetic", "So the answer is 1,234.", "1234")
True
>>> extract_answer("topic", "I think it's sports news")
'sports'
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

SPLITS = ("train", "test")
DEFAULT_TRAIN_SIZE = 2000
DEFAULT_TEST_SIZE = 200
TEST_POOL_SIZE = 1000  # test items reserved (kept out of every train set); max test n
MAX_TRAIN_SIZE = 20000


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    labels: tuple[str, ...] | None  # None for numeric answers


TOPIC_LABELS = ("sports", "business", "science", "politics", "entertainment")

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

_NAMES = (
    "Maya", "Leo", "Aisha", "Ben", "Chen", "Dara", "Elif", "Finn", "Grace", "Hugo", "Ines", "Jamal",
    "Kofi", "Lena", "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera",
    "Wes", "Yuki", "Zoe", "Ravi", "Sofia", "Tomas",
)
_ITEMS = (
    "stickers", "marbles", "apples", "pencils", "cookies", "books", "cards", "coins", "stamps",
    "balloons", "shells", "crayons", "oranges", "buttons", "beads", "eggs", "toy cars", "seeds",
    "cupcakes", "postcards",
)
_OTHERS = ("a friend", "a classmate", "a neighbor", "a cousin", "the teacher", "a teammate")
_CONTAINERS = ("boxes", "bags", "jars", "packs", "baskets", "trays")


def _arith_add(rng: random.Random) -> tuple[str, int, str]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
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
    name, item, other = rng.choice(_NAMES), rng.choice(_ITEMS), rng.choice(_OTHERS)
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
    name, item, box = rng.choice(_NAMES), rng.choice(_ITEMS), rng.choice(_CONTAINERS)
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
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    other, box = rng.choice(_OTHERS), rng.choice(_CONTAINERS)
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

_PEOPLE = (
    "Lena Ortiz", "Marcus Bell", "Priya Nair", "Tomas Novak", "Aiko Tanaka", "Daniel Mensah",
    "Sofia Rossi", "Omar Haddad", "Grace Liu", "Jonas Berg", "Chloe Martin", "Ravi Patel",
    "Elena Petrova", "Kwame Asante", "Hannah Weber", "Luis Moreno",
)
_SURNAMES = tuple(p.split()[1] for p in _PEOPLE)

_W = {
    # sports
    "team": ("Riverside Hawks", "Northbridge United", "Lakeside Rovers", "Eastport Falcons",
             "Granite City Bears", "Westfield Wanderers", "Harbor Town Sharks", "Pine Valley Rangers",
             "Sunset Bay Dolphins", "Ironvale Titans", "Maple Ridge Wolves", "Coastal Comets"),
    "beat": ("beat", "edge past", "thrash", "hold off", "stun", "draw with", "crush", "rally to beat"),
    "match": ("the cup final", "the season opener", "overtime", "the league semifinal", "a penalty shootout",
              "the derby", "the playoff decider", "the championship game", "extra time", "the home opener"),
    "position": ("striker", "goalkeeper", "captain", "star forward", "veteran defender", "point guard",
                 "starting pitcher"),
    "sport": ("marathon", "sprint", "swimming", "cycling", "high jump", "rowing", "tennis", "skiing",
              "gymnastics", "long jump"),
    "venue": ("the national championships", "the world indoor meet", "the city stadium",
              "the spring invitational", "the continental games", "the summer trials"),
    "drama": ("a photo finish", "a late comeback", "a dramatic final lap", "a tense tiebreak",
              "an injury scare", "a record-breaking run"),
    # business
    "company": ("Northwind Foods", "Bluepeak Logistics", "Cobalt Motors", "Silverline Bank",
                "Greenfield Retail", "Apex Airlines", "Redwood Insurance", "Brightstone Telecom",
                "Summit Steel", "Harborview Hotels", "Orchard Pharmacies", "Keystone Energy"),
    "move": ("jump", "tumble", "surge", "slide", "climb", "fall sharply", "rally", "slump"),
    "report": ("quarterly earnings beat forecasts", "a profit warning", "weak holiday sales",
               "the merger announcement", "a surprise dividend", "an analyst downgrade",
               "strong revenue growth", "supply chain disruptions"),
    "pressure": ("costs rise", "demand slows", "sales fall", "investors push for savings",
                 "profits shrink", "the market cools", "orders dry up", "margins narrow"),
    "jobs": ("200", "450", "800", "1,200", "3,000", "5,500", "650", "2,400"),
    "period": ("quarterly", "annual", "first-half", "third-quarter", "holiday-season"),
    "product": ("smartphone", "electric vehicle", "cloud", "grocery", "travel", "insurance",
                "advertising", "software"),
    "startup": ("Fernleaf", "Quillbyte", "Tidewise", "Lumora", "Brisklane", "Oakcart", "Zentrail",
                "Mintpath", "Copperloop", "Vantora", "Swiftledger", "Nestwell"),
    "amount": ("$5 million", "$12 million", "$40 million", "$75 million", "$120 million", "$8 million",
               "$20 million", "$250 million"),
    "service": ("its delivery network", "into new markets", "its payments app", "its online marketplace",
                "its lending platform", "its logistics software"),
    # science
    "institute": ("Northgate University", "the Halden Institute", "Westbrook College", "the Marlow Lab",
                  "Eastvale University", "the Coral Bay Research Center", "Kingsford University",
                  "the Aurora Research Institute", "Stonebridge University", "the Tidewater Lab"),
    "thing": ("a new species of frog", "ancient microbes", "a giant underground lake",
              "fossilized dinosaur eggs", "a rare mineral", "a previously unknown bacterium",
              "traces of ancient water", "a new deep-sea fish"),
    "place": ("the Amazon rainforest", "Antarctic ice", "a cave in Borneo", "the Mariana Trench",
              "the Gobi Desert", "Arctic permafrost", "a volcanic crater lake", "meteorite samples"),
    "factor": ("gut bacteria", "daily walking", "sleep loss", "air pollution", "ocean warming",
               "a common gene variant", "microplastics", "soil fungi"),
    "outcome": ("memory decline", "longer lifespan", "coral bleaching", "plant growth", "faster healing",
                "a stronger immune response", "shifts in bird migration"),
    "telescope": ("Space telescope", "Radio telescope array", "Orbiting observatory", "New infrared telescope",
                  "Mountaintop observatory", "X-ray satellite", "Desert radio dish", "Southern sky survey"),
    "object": ("a distant exoplanet", "a newborn star", "a pair of colliding galaxies", "a rogue black hole",
               "water vapor on an exoplanet", "a fast radio burst", "an icy comet", "a dying red giant"),
    "distance": ("billions of light-years away", "near the galactic center", "in a nearby star system",
                 "in the early universe", "at the edge of the solar system", "in a dwarf galaxy",
                 "inside a dust cloud", "close to a neutron star"),
    "organism": ("the axolotl", "a desert cactus", "the tardigrade", "an ancient wheat variety",
                 "the giant squid", "a deep-sea sponge", "a glowing mushroom", "the naked mole rat",
                 "a polar moss", "the electric eel", "a cave salamander", "the Greenland shark"),
    "trait": ("regeneration", "drought tolerance", "long life", "survival in extreme cold",
              "bioluminescence", "radiation resistance", "rapid growth", "camouflage"),
    "quantity": ("the mass of the neutrino", "the radius of the proton", "gravitational waves",
                 "the speed of sound in ice", "the magnetic moment of the muon", "the age of the universe",
                 "the strength of gravity", "the half-life of a rare isotope"),
    "instrument": ("a new laser clock", "an underground detector", "a particle collider", "ultracold atoms",
                   "a quantum sensor", "a space-based interferometer"),
    "probe": ("Mars rover", "Lunar lander", "Jupiter probe", "Comet orbiter", "Solar probe",
              "Asteroid mission", "Venus orbiter", "Deep space probe"),
    "imagery": ("images", "close-up images", "color photos", "radar maps", "infrared scans", "3D maps"),
    "body": ("an icy moon", "the lunar south pole", "a near-Earth asteroid", "Saturn's rings",
             "the Sun's outer atmosphere", "a Martian canyon", "the clouds of Venus", "a distant dwarf planet"),
    # politics
    "title": ("Governor", "Mayor", "Senator", "President", "Minister", "Councillor"),
    "election": ("the governor's race", "the mayoral election", "the party leadership contest",
                 "the regional election", "the presidential runoff", "a special election"),
    "issue": ("immigration", "housing", "climate policy", "healthcare funding", "voting rights",
              "tax reform", "education spending", "border security", "pension reform", "public transport"),
    "chamber": ("Parliament", "Senate", "National assembly", "State legislature", "City council", "Lower house"),
    "bill": ("landmark", "controversial", "sweeping", "long-delayed", "cross-party"),
    "party": ("Opposition", "Ruling coalition", "Green Party", "Labor Party", "Conservative Party",
              "Liberal Democrats", "Centrist alliance"),
    "scandal": ("a campaign finance probe", "an ethics investigation", "a lobbying scandal",
                "allegations of vote buying", "a leaked memo"),
    "debate": ("a heated televised debate", "a fiery parliamentary session", "a late-night vote",
               "a tense committee hearing"),
    # entertainment
    "film": ("Midnight Harbor", "The Glass Orchard", "Starfall", "Echoes of Winter", "The Last Lantern",
             "Paper Kingdoms", "Silver Tide", "Crimson Valley", "The Velvet Hour", "Neon Gardens",
             "Saltwater Hearts", "The Long Encore", "Ghosts of Maple Street", "A Winter Waltz"),
    "boxnote": ("with record ticket sales", "for a third week", "despite mixed reviews",
                "in a crowded weekend", "after a strong opening", "ahead of the holiday season"),
    "tour": ("a world tour", "a farewell tour", "a stadium tour", "a summer residency", "a comeback concert"),
    "tourwhen": ("for next summer", "after a five-year break", "to promote a new album", "across 30 cities",
                 "with special guests"),
    "network": ("Lumen TV", "Channel Nine North", "Tandem Plus", "Meridian Network", "Bayside Streaming"),
    "show": ("Hollow Creek", "The Night Desk", "Brightwater", "The Understudy", "Sea Glass",
             "Ravens Hall", "Second Chances", "Dinner for Six", "The Lighthouse Keepers", "Small Town Stars"),
    "ordinal": ("second", "third", "fourth", "fifth", "final"),
    "showreason": ("record ratings", "a fan campaign", "a cliffhanger finale", "glowing reviews"),
    "awards": ("the film critics awards", "the music awards", "the festival prizes",
               "the television awards", "awards night"),
    "band": ("The Paper Lanterns", "Velvet Static", "Northern Echo", "The Midnight Choir",
             "Saltwater Radio", "The June Parade", "Copper Harbor", "The Slow Satellites"),
    "album": ("surprise album", "acoustic album", "live album", "holiday album", "debut album"),
    "release": ("summer festival season", "a sold-out tour", "awards season", "the holiday charts",
                "a reunion show", "their anniversary concert"),
}

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
    chosen: dict[str, str] = {}

    def pick(m: re.Match) -> str:
        slot = m.group(1)
        base = slot.rstrip("2")
        if base == "person":
            value = rng.choice([p for p in _PEOPLE if p != chosen.get("person")])
        elif base == "surname":
            value = rng.choice([s for s in _SURNAMES if s != chosen.get("surname")])
        elif slot == "years":
            value = str(rng.randint(2, 5))
        elif slot == "wins":
            value = str(rng.randint(3, 9))
        else:
            options = _W[base]
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
    return tuple(_stream(name, random.Random(f"safeanchor-task:{name}:test"), TEST_POOL_SIZE))


def generate_task(name: str, split: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """Generate ``n`` records of task ``name`` for ``split`` (``train`` or ``test``).

    Records: ``{"id", "prompt", "response", "answer", "task"}``; ``response`` is the exact target
    text (equal to ``answer``). ``n`` defaults to 2000 (train) / 200 (test). The test set is
    fixed: it ignores ``seed`` and is prefix-stable in ``n`` (at most 1000 items). Train items
    depend on ``seed``, are prefix-stable in ``n`` and never repeat a prompt of the test pool.
    """
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for task {name!r}; splits: {', '.join(SPLITS)}")
    limit = TEST_POOL_SIZE if split == "test" else MAX_TRAIN_SIZE
    if n is None:
        n = DEFAULT_TEST_SIZE if split == "test" else DEFAULT_TRAIN_SIZE
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= limit:
        raise ValueError(f"n must be an integer in [0, {limit}] for the {split} split, got {n!r}")
    items_of = _ITEMS_OF.get(name, name)
    pool = _test_pool(items_of)
    if split == "test":
        items = list(pool[:n])
    else:
        exclude = frozenset(p for p, _, _ in pool)
        items = _stream(items_of, random.Random(f"safeanchor-task:{items_of}:train:{seed}"), n, exclude)
    worked = name != items_of
    return [{"id": f"{name}-{split}-{i:05d}", "prompt": p, "response": sol if worked else a, "answer": a, "task": name}
            for i, (p, a, sol) in enumerate(items)]


# --------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------

_NUM = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_HASH_ANSWER = re.compile(r"####\s*\$?\s*(" + _NUM + ")")
_SAID_ANSWER = re.compile(r"answer\s*(?:is|:|=)\s*:?\s*\$?\s*(" + _NUM + ")", re.IGNORECASE)
_ANY_NUMBER = re.compile(r"(?<![\w.])" + _NUM)


def _normalise_number(raw: str) -> str:
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


def _label_pattern(labels: tuple[str, ...]) -> re.Pattern:
    return re.compile(r"\b(" + "|".join(map(re.escape, labels)) + r")\b", re.IGNORECASE)


_LABEL_RE = {name: _label_pattern(spec.labels) for name, spec in TASKS.items() if spec.labels}


def extract_answer(name: str, text: str) -> str | None:
    """The answer a model's free-text output commits to, or ``None``.

    ``arithmetic``: the number after the last ``#### N``, else after the last "answer is N"
    (also "answer: N"), else the last number in the text; thousands separators are removed and
    ``18.0`` becomes ``18``. ``topic``: the earliest allowed label appearing as a whole word
    (case-insensitive) in the first non-empty line, lowercased.
    """
    _check_name(name)
    if text is None:
        return None
    if TASKS[name].labels is None:
        for pattern in (_HASH_ANSWER, _SAID_ANSWER):
            hits = pattern.findall(text)
            if hits:
                return _normalise_number(hits[-1])
        hits = _ANY_NUMBER.findall(text)
        return _normalise_number(hits[-1]) if hits else None
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    m = _LABEL_RE[name].search(lines[0])
    return m.group(1).lower() if m else None


def score_exact(name: str, prediction_text: str, answer: str) -> bool:
    """Exact match of :func:`extract_answer` on the prediction against the gold ``answer``."""
    pred = extract_answer(name, prediction_text)
    if pred is None:
        return False
    gold = answer.strip()
    numeric = TASKS[name].labels is None
    gold = _normalise_number(gold) if numeric and re.fullmatch(_NUM, gold) else gold.lower()
    return pred == gold


__all__ = ["TASKS", "TaskSpec", "TOPIC_LABELS", "generate_task", "extract_answer", "score_exact",
           "topic_prompt", "DEFAULT_TRAIN_SIZE", "DEFAULT_TEST_SIZE", "TEST_POOL_SIZE"]
