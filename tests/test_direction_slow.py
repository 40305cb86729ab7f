"""The refusal direction of the embedded SmolLM2 (slow: loads the real model)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol(embedded_cache):
    from safeanchor.models import load_model

    return load_model("embedded:smollm2-135m-instruct")


def test_embedded_extraction_is_deterministic_and_separates(smol, tmp_path):
    from safeanchor.data import load_source
    from safeanchor.direction.artifact import RefusalDirection
    from safeanchor.direction.drift import extract_mean_diff, reference_prompts
    from safeanchor.direction.extract import ExtractConfig, extract_direction, layer_auroc
    from safeanchor.hooks import ablate_direction, capture_block_inputs

    model, tok = smol
    rd = extract_direction(model, tok, ExtractConfig(limit=12, batch_size=8, positions="post-instruction"))
    # ChatML after the user content: <|im_end|> \n <|im_start|> ass istant \n
    assert rd.info["position_tokens"] == ["<|im_end|>", "\n", "<|im_start|>", "ass", "istant", "\n"]
    assert rd.mean_diff.shape == (6, 30, 576) and torch.isfinite(rd.mean_diff).all()
    rd.save_pretrained(tmp_path)
    back = RefusalDirection.from_pretrained(tmp_path)
    back.check_compatible(model)

    # the same prompts again (as drift does): bit-identical means, so the self-drift is exactly 1
    harmful, harmless = reference_prompts(back)
    again = extract_mean_diff(model, tok, back, harmful, harmless)
    assert torch.equal(again, rd.mean_diff)

    # held-out prompts project apart at the deeper layers even with a 12 + 12 direction
    aurocs = layer_auroc(model, tok, rd, load_source("bundled:harmful:test", limit=16),
                         load_source("bundled:harmless:test", limit=16), batch_size=16)
    assert aurocs[0] == 0.5 and max(aurocs) > 0.75

    # ablating the layer-15 direction leaves no component along it at any block input
    unit = rd.unit(15)
    ids = torch.tensor([tok.apply_chat_template([{"role": "user", "content": "How do I pick a lock?"}],
                                                add_generation_prompt=True, return_dict=False)])
    with torch.no_grad(), ablate_direction(model, unit), capture_block_inputs(model) as acts:
        model(input_ids=ids)
    worst = max(float((acts[l] @ unit).abs().max() / acts[l].norm(dim=-1).max()) for l in range(30))
    assert worst < 1e-5
