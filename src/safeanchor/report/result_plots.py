"""Figures of a demo/bench run: safety–utility scatter, drift per method, training curves.

Kept beside ``plots.py`` (direction/drift figures); both use the Agg backend and nothing else in
safeanchor imports matplotlib.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_MARKERS = {"benign": "o", "attack": "^"}


def safety_utility_scatter(summary: list[dict[str, Any]], path: Path) -> Path:
    """Task accuracy (y) vs ASR (x), one point per (method, scenario); lower-right is bad."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    methods = list(dict.fromkeys(r["method"] for r in summary))
    cmap = plt.get_cmap("tab10")
    for r in summary:
        if r.get("asr_mean") is None or r.get("task_acc_mean") is None:
            continue
        c = cmap(methods.index(r["method"]) % 10)
        x, y = 100 * r["asr_mean"], 100 * r["task_acc_mean"]
        xerr = 100 * r["asr_sd"] if r.get("asr_sd") is not None else None
        yerr = 100 * r["task_acc_sd"] if r.get("task_acc_sd") is not None else None
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=_MARKERS.get(r["scenario"], "s"), color=c, ms=8, capsize=3)
        ax.annotate(f"{r['method']} ({r['scenario']})", (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("ASR on held-out harmful prompts (%)  — lower is safer")
    ax.set_ylabel("task accuracy (%)  — higher is better")
    ax.set_title("Safety–utility trade-off")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def drift_by_method(runs: list[dict[str, Any]], path: Path) -> Path:
    """Per-layer cosine(r_start, r_finetuned), one line per method (averaged over seeds), a panel per scenario."""
    plt = _plt()
    scenarios = list(dict.fromkeys(r["scenario"] for r in runs))
    fig, axes = plt.subplots(1, len(scenarios), figsize=(6.5 * len(scenarios), 4.5), squeeze=False)
    for ax, sc in zip(axes[0], scenarios):
        acc: dict[str, list[list[float]]] = defaultdict(list)
        for r in runs:
            if r["scenario"] == sc:
                acc[r["method"]].append(r["drift_cos"])
        for method, curves in acc.items():
            L = len(curves[0])
            # None = a layer without a direction (undefined cosine): a gap in the line
            mean = [float("nan") if any(c[l] is None for c in curves) else sum(c[l] for c in curves) / len(curves)
                    for l in range(L)]
            ax.plot(range(L), mean, marker=".", label=method)
        ax.set_title(f"r-direction drift ({sc})")
        ax.set_xlabel("layer")
        ax.set_ylabel("cos(r_start, r_finetuned)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def training_curves(runs: list[dict[str, Any]], path: Path) -> Path:
    """CE per step for every run (the first seed of each), the raw constraint value, and the
    weighted constraint over the CE (``<reg>/ratio`` = α·penalty / CE) for runs that have one."""
    plt = _plt()
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.5))
    any_reg = any_ratio = False
    first = min((r.get("seed", 0) for r in runs), default=0)
    for r in [r for r in runs if r.get("seed", 0) == first]:
        log = r["train_log"]
        label = f"{r['method']} ({r['scenario']}, s{r.get('seed', 0)})"
        steps = [e["step"] for e in log if e.get("ce") is not None]
        ax1.plot(steps, [e["ce"] for e in log if e.get("ce") is not None], label=label, lw=1)
        for suffix, ax in (("/raw", ax2), ("/ratio", ax3)):
            for k in sorted({k for e in log for k in e if k.endswith(suffix)}):
                pts = [(e["step"], e[k]) for e in log if e.get(k) is not None and e.get(k) == e.get(k)]
                if pts:
                    any_reg, any_ratio = any_reg or suffix == "/raw", any_ratio or suffix == "/ratio"
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"{label} {k}", lw=1)
    ax1.set_title("cross-entropy (response tokens)")
    ax1.set_xlabel("step")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=6)
    ax2.set_title("constraint value (unweighted)")
    ax3.set_title("α · constraint / cross-entropy")
    for ax, used in ((ax2, any_reg), (ax3, any_ratio)):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if used:
            ax.set_yscale("symlog", linthresh=1e-3)
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
