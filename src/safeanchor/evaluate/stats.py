"""Paired comparisons: a difference, its 95% interval, a p-value and a three-valued verdict.

Two methods are compared on the same items (the same harmful prompts, the same task items), so
every comparison is paired. Outcomes are arrays ``(seeds, items)`` of 0/1 (complied, correct) or
numbers; a method evaluated once (the untrained start model) is one row, used for every seed.

* **Interval**: a paired bootstrap over items and, with several seeds, over seeds too (each draw
  resamples seed rows and item columns, the same ones for both methods), percentile 95%.
* **p-value**: with one seed and 0/1 outcomes, McNemar's exact test (a two-sided binomial test on
  the discordant items); otherwise a sign-flip permutation test on the per-item differences
  averaged over seeds.
* **Verdict** of a claim ``diff > bound`` (or ``< bound``), decided by the interval alone:
  ``holds`` when the whole interval is on the claim's side, ``does not hold`` when the whole
  interval is on the other side, ``inconclusive`` when it contains the bound. A point estimate
  never decides.

>>> import numpy as np
>>> a = np.array([[0, 0, 0, 1] * 25])           # 25% complied
>>> b = np.array([[1, 1, 0, 1] * 25])           # 75%
>>> c = compare(a, b, n_boot=2000)
>>> round(c["diff"], 2), c["test"]
(0.5, 'McNemar exact')
>>> decide(c["diff_ci95"], ">", 0.0)
'holds'
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE)
N_BOOT = 10_000
N_PERM = 10_000


def _as_2d(x: Any) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"outcomes must be (seeds, items) with at least one item; got shape {arr.shape}")
    return arr


def paired(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """Two ``(seeds, items)`` arrays on the same items, a one-row side broadcast over the other's seeds."""
    a, b = _as_2d(a), _as_2d(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired outcomes need the same items: {a.shape[1]} vs {b.shape[1]}")
    if a.shape[0] != b.shape[0]:
        if a.shape[0] == 1:
            a = np.repeat(a, b.shape[0], axis=0)
        elif b.shape[0] == 1:
            b = np.repeat(b, a.shape[0], axis=0)
        else:
            raise ValueError(f"paired outcomes need the same seeds: {a.shape[0]} vs {b.shape[0]}")
    return a, b


def bootstrap_ci(d: np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of ``d`` ``(seeds, items)``, resampling seeds and items."""
    rng = np.random.default_rng(seed)
    s, n = d.shape
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // max(1, s * n))
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        rows = rng.integers(0, s, size=(k, s)) if s > 1 else np.zeros((k, 1), dtype=np.int64)
        cols = rng.integers(0, n, size=(k, n))
        means[start:start + k] = d[rows[:, :, None], cols[:, None, :]].mean(axis=(1, 2))
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 outcomes (one row each)."""
    n01 = int(((a == 0) & (b == 1)).sum())
    n10 = int(((a == 1) & (b == 0)).sum())
    n = n01 + n10
    if n == 0:
        return 1.0
    k = min(n01, n10)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return float(min(1.0, 2.0 * tail))


def sign_flip_p(d: np.ndarray, *, n_perm: int = N_PERM, seed: int = 0) -> float:
    """Two-sided sign-flip permutation p-value of the mean per-item difference (averaged over seeds)."""
    per_item = d.mean(axis=0)
    observed = abs(per_item.mean())
    if not np.any(per_item):
        return 1.0
    rng = np.random.default_rng(seed + 1)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_perm, per_item.size))
    flipped = np.abs((signs * per_item).mean(axis=1))
    return float((1 + np.count_nonzero(flipped >= observed - 1e-12)) / (1 + n_perm))


def compare(a: Any, b: Any, *, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """``b − a`` on paired outcomes: means, diff, 95% interval, p-value and the test used."""
    a, b = paired(a, b)
    d = b - a
    binary = bool(np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all())
    if a.shape[0] == 1 and binary:
        p, test = mcnemar_exact(a[0], b[0]), "McNemar exact"
    else:
        p, test = sign_flip_p(d, seed=seed), "sign-flip permutation over items (seed-averaged)"
    lo, hi = bootstrap_ci(d, n_boot=n_boot, seed=seed)
    return {"a": float(a.mean()), "b": float(b.mean()), "diff": float(d.mean()), "diff_ci95": [lo, hi],
            "p_value": p, "test": test, "n_items": int(a.shape[1]), "n_seeds": int(a.shape[0]),
            "interval": "paired bootstrap over items" + (" and seeds" if a.shape[0] > 1 else "")
                        + f", percentile, {n_boot} draws"}


def decide(ci: Sequence[float], direction: str, bound: float = 0.0) -> str:
    """The verdict of the claim ``diff <direction> bound`` from the interval ``ci`` alone."""
    lo, hi = float(ci[0]), float(ci[1])
    if direction == ">":
        return HOLDS if lo > bound else FAILS if hi <= bound else INCONCLUSIVE
    if direction == "<":
        return HOLDS if hi < bound else FAILS if lo >= bound else INCONCLUSIVE
    raise ValueError(f"direction must be '>' or '<'; got {direction!r}")


def seed_spread(values: Sequence[float]) -> float | None:
    """The sample standard deviation over seeds (None for one seed)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


__all__ = ["FAILS", "HOLDS", "INCONCLUSIVE", "VERDICTS", "bootstrap_ci", "compare", "decide", "mcnemar_exact",
           "paired", "seed_spread", "sign_flip_p"]
