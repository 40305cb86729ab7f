"""Stage 3: does the direction steer? Generate with it ablated and with it added.

Ablating r̂ everywhere should cut refusals of harmful prompts; adding it at one layer should
make the model refuse harmless ones. Refusals are judged with the keyword judge
(:func:`safeanchor.evaluate.judges.refusal_rate`).

>>> report = steering_check(model, tok, rd, limit=16)        # doctest: +SKIP
>>> report["rates"]["ablated"]["harmful"] <= report["rates"]["baseline"]["harmful"]  # doctest: +SKIP
True
"""

from __future__ import annotations

from typing import Sequence

from ..data import Record, load_source
from ..hooks import ablate_direction, add_direction
from .artifact import RefusalDirection

COEF_MODES = ("harmful-proj", "diff")
N_EXAMPLES = 3  # completions kept per condition in steering.json, for a human to read


def steering_coefficient(direction: RefusalDirection, layer: int, pos: int, coef: float | str) -> float:
    """Resolve ``coef``: a number, ``"harmful-proj"`` (mean harmful projection r̂ᵀμ_harmful, the
    default) or ``"diff"`` (‖r‖, Arditi's actadd of the raw mean difference)."""
    if not isinstance(coef, str):
        return float(coef)
    if coef == "diff":
        return float(direction.norms[direction.pos_index(pos), layer])
    if coef == "harmful-proj":
        value = direction.harmful_projection(layer, pos)
        if value <= 0:
            raise ValueError(
                f"the mean harmful projection at layer {layer} is {value:.3f} (<= 0): adding it would steer away "
                "from refusal; pass a positive number or coef='diff'")
        return value
    raise ValueError(f"coef must be a number or one of {', '.join(COEF_MODES)}; got {coef!r}")


def steering_check(
    model,
    tokenizer,
    direction: RefusalDirection,
    *,
    harmful: Sequence[Record] | None = None,
    harmless: Sequence[Record] | None = None,
    harmful_source: str = "bundled:harmful:test",
    harmless_source: str = "bundled:harmless:test",
    limit: int = 32,
    layer: int | None = None,
    pos: int = -1,
    coef: float | str = "harmful-proj",
    max_new_tokens: int = 64,
    batch_size: int = 32,
    derivative: bool = False,
    progress: bool = True,
) -> dict:
    """Refusal rates baseline vs ablated (harmful prompts) vs added (harmless prompts).

    ``layer``: where to add; default the selected layer, else :meth:`RefusalDirection.best_layer`.
    ``derivative``: the model is a fine-tuned copy of the direction's model (fingerprint may differ).
    Returns a JSON-able report (rates, settings and a few completions per condition).
    """
    from ..evaluate.generate import generate
    from ..evaluate.judges import refusal_rate

    direction.check_compatible(model, derivative=derivative)
    harmful = list(harmful) if harmful is not None else load_source(harmful_source, limit=limit)
    harmless = list(harmless) if harmless is not None else load_source(harmless_source, limit=limit)
    layer = direction.best_layer(pos) if layer is None else layer
    if not 0 <= layer < direction.n_layers:
        raise ValueError(f"layer must be within 0..{direction.n_layers - 1}, got {layer}")
    c = steering_coefficient(direction, layer, pos, coef)
    unit = direction.unit(layer, pos)  # (D,)

    def gen(records, desc):
        return generate(model, tokenizer, records, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        progress=progress, desc=desc)

    texts = {
        ("baseline", "harmful"): gen(harmful, "baseline harmful"),
        ("baseline", "harmless"): gen(harmless, "baseline harmless"),
    }
    # Arditi et al. ablate a single direction (the chosen layer's) at every layer.
    with ablate_direction(model, unit):
        texts[("ablated", "harmful")] = gen(harmful, "ablated harmful")
    with add_direction(model, unit, layer, coef=c):
        texts[("added", "harmless")] = gen(harmless, "added harmless")

    rates: dict[str, dict[str, float]] = {}
    examples: dict[str, dict[str, list[dict[str, str]]]] = {}
    for (cond, kind), outs in texts.items():
        prompts = harmful if kind == "harmful" else harmless
        rates.setdefault(cond, {})[kind] = refusal_rate(outs)
        examples.setdefault(cond, {})[kind] = [{"prompt": r.prompt, "answer": a} for r, a in zip(prompts, outs)][:N_EXAMPLES]
    return {
        "layer": layer,
        "pos": pos,
        "coef": c,
        "coef_mode": coef if isinstance(coef, str) else "value",
        "direction_norm": float(direction.norms[direction.pos_index(pos), layer]),
        "n_harmful": len(harmful),
        "n_harmless": len(harmless),
        "max_new_tokens": max_new_tokens,
        "judge": "keyword (prefix)",
        "rates": rates,
        "examples": examples,
    }
