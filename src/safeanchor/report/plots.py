"""Refusal-direction figures: selection scores, held-out AUROC and drift per layer (PNG, Agg).

With ``result_plots.py`` the only matplotlib importers in safeanchor; matplotlib is imported
inside the functions so nothing else pays for it.

>>> plot_drift(["ckpt-100", "ckpt-200"], [[1.0, 0.9], [0.95, 0.7]], "drift")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return path


def plot_selection_scores(selection: dict[str, Any], path: str | Path) -> Path:
    """Bypass, induce and KL per layer (one line per position), thresholds dashed, choice starred.

    ``selection`` is ``RefusalDirection.info["selection"]`` with ``selected`` added under
    ``"selected"`` (``{"layer", "pos"}``).
    """
    plt = _plt()
    cfg = selection["config"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharex=True)
    panels = [
        ("bypass", "bypass: harmful refusal score, r̂ ablated", selection["baseline"]["harmful_refusal_score"], "baseline"),
        ("induce", "induce: harmless refusal score, r added", cfg["induce_threshold"], "threshold"),
        ("kl", "KL(base ‖ ablated), harmless", cfg["kl_threshold"], "threshold"),
    ]
    positions = sorted({c["pos"] for c in selection["candidates"]})
    for ax, (key, title, ref, ref_label) in zip(axes, panels):
        for p in positions:
            rows = [c for c in selection["candidates"] if c["pos"] == p and c[key] is not None]
            ax.plot([c["layer"] for c in rows], [c[key] for c in rows], marker="o", ms=3, label=f"pos {p}")
        ax.axhline(ref, ls="--", color="grey", lw=1, label=ref_label)
        if key == "induce":  # where the harmless prompts start, for scale
            ax.axhline(selection["baseline"]["harmless_refusal_score"], ls=":", color="grey", lw=1, label="baseline")
        sel = selection.get("selected")
        if sel:
            hit = [c for c in selection["candidates"] if c["pos"] == sel["pos"] and c["layer"] == sel["layer"]]
            if hit and hit[0][key] is not None:
                ax.plot([sel["layer"]], [hit[0][key]], marker="*", ms=14, color="red", ls="none", label="selected")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("layer")
        if key == "kl":
            ax.set_yscale("log")
    for ax in axes:
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_layer_auroc(aurocs: Sequence[float], path: str | Path, *, title: str = "held-out AUROC per layer") -> Path:
    """AUROC of the projection onto r̂^(l) per layer (0.5 = chance)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.plot(range(len(aurocs)), list(aurocs), marker="o", ms=3)
    ax.axhline(0.5, ls="--", color="grey", lw=1)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("layer")
    ax.set_ylabel("AUROC harmful vs harmless")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_drift(labels: Sequence[str], cosines: Sequence[Sequence[float | None]], out_prefix: str | Path) -> tuple[Path, Path]:
    """Heatmap (layers x checkpoints) and line plot of per-layer cosines to the reference.

    Writes ``<out_prefix>_heatmap.png`` and ``<out_prefix>_lines.png``; undefined layers
    (``None``/NaN) are left blank.
    """
    import numpy as np

    plt = _plt()
    data = np.array([[math.nan if v is None else v for v in row] for row in cosines], dtype=float)  # (C, L)
    n_ckpt, n_layers = data.shape
    prefix = str(out_prefix)

    fig, ax = plt.subplots(figsize=(max(5, 1.2 * n_ckpt + 3), max(4, 0.22 * n_layers + 1.5)))
    im = ax.imshow(data.T, aspect="auto", origin="lower", cmap="viridis", vmin=min(0.0, np.nanmin(data)), vmax=1.0)
    ax.set_xticks(range(n_ckpt), labels=list(labels), rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("layer")
    ax.set_title("cos(r_ref, r_ckpt) per layer", fontsize=10)
    fig.colorbar(im, ax=ax, label="cosine")
    heat = _save(fig, prefix + "_heatmap.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, row in zip(labels, data):
        ax.plot(range(n_layers), row, marker="o", ms=3, label=label)
    ax.axhline(1.0, ls="--", color="grey", lw=1)
    ax.set_xlabel("layer")
    ax.set_ylabel("cosine to reference")
    ax.set_title("refusal-direction drift", fontsize=10)
    ax.legend(fontsize=8)
    lines = _save(fig, prefix + "_lines.png")
    return heat, lines
