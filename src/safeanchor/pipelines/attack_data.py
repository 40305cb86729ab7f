"""The attack scenario's data: harmful questions paired with the unaligned model's own compliant answers."""

from __future__ import annotations

from typing import Any


def attack_pairs(cfg) -> list[dict[str, Any]]:
    """Harmful question -> compliant answer pairs (attack scenario): the unaligned model's own
    greedy answers to harmful *train* prompts, keeping only answers the keyword judge does not
    call refusals. No harmful text is written by hand."""
    import random

    from ..data import finish_at_sentence, load_source
    from ..evaluate.generate import generate
    from ..evaluate.judges import is_refusal
    from ..models import load_model

    pool = load_source("bundled:harmful:train")
    random.Random(1234).shuffle(pool)  # a different sample than the safety data's pairing
    model, tok = load_model(cfg.unaligned_model, precision=cfg.precision)
    pairs: list[dict[str, Any]] = []
    for start in range(0, len(pool), 2 * cfg.attack_samples):
        chunk = pool[start: start + 2 * cfg.attack_samples]
        answers = generate(model, tok, chunk, max_new_tokens=96, batch_size=cfg.gen_batch_size,
                           desc="attack answers (unaligned model)")
        for rec, ans in zip(chunk, answers):
            if ans.strip() and not is_refusal(ans) and len(pairs) < cfg.attack_samples:
                pairs.append({"id": f"attack-{rec.id}", "prompt": rec.prompt, "response": finish_at_sentence(ans),
                              "category": rec.meta.get("category"), "source": "bundled:harmful:train"})
        if len(pairs) >= cfg.attack_samples:
            break
    if not pairs:
        raise RuntimeError(f"{cfg.unaligned_model} refused every harmful train prompt; no attack pairs")
    return pairs


__all__ = ["attack_pairs"]
