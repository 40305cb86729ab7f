"""Arditi selection scores and the steering check, on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from safeanchor.data import Record
from safeanchor.direction.artifact import RefusalDirection
from safeanchor.direction.extract import ExtractConfig, extract_direction
from safeanchor.direction.select import (SelectConfig, kl_divergence, last_token_logprobs, refusal_score,
                                         refusal_token_ids, select_direction)
from safeanchor.direction.steering import steering_check, steering_coefficient
from safeanchor.hooks import ablate_direction
from test_direction import HARMFUL, HARMLESS


@pytest.fixture
def rd(tiny_model, tiny_tokenizer) -> RefusalDirection:
    return extract_direction(tiny_model, tiny_tokenizer, ExtractConfig(batch_size=4), harmful=HARMFUL, harmless=HARMLESS)


def test_refusal_score_is_log_odds():
    probs = torch.tensor([[0.2, 0.3, 0.5], [0.9, 0.05, 0.05]], dtype=torch.float64)
    s = refusal_score(probs.log(), [0, 1])
    assert s.tolist() == pytest.approx([math.log(0.5 / 0.5), math.log(0.95 / 0.05)])
    assert torch.isfinite(refusal_score(torch.tensor([[0.0, -100.0]]), [0]))  # p = 1 stays finite


def test_kl_divergence():
    p = torch.log_softmax(torch.randn(4, 10, generator=torch.Generator().manual_seed(0)), -1)
    q = torch.log_softmax(torch.randn(4, 10, generator=torch.Generator().manual_seed(1)), -1)
    assert kl_divergence(p, p).abs().max() < 1e-12
    expected = torch.nn.functional.kl_div(q.double(), p.double(), log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(kl_divergence(p, q), expected)


def test_refusal_tokens_come_from_the_family_table(tiny_model, tiny_tokenizer):
    ids = refusal_token_ids(tiny_model, tiny_tokenizer)  # llama: {"I"}
    assert ids == [tiny_tokenizer.encode("I", add_special_tokens=False)[0]]


def test_selection_scores_and_rule(rd, tiny_model, tiny_tokenizer):
    cfg = SelectConfig(layers=[0, 1, 2], induce_threshold=float("-inf"), kl_threshold=10.0, max_layer_frac=0.67,
                       filter_prompts=False)
    out = select_direction(tiny_model, tiny_tokenizer, rd, cfg, harmful=HARMFUL[:4], harmless=HARMLESS[:4])
    sel = out.info["selection"]
    by_layer = {c["layer"]: c for c in sel["candidates"]}
    assert by_layer[0]["reason"] == "zero direction" and by_layer[0]["bypass"] is None
    assert by_layer[2]["reason"] == "layer >= int(0.67·L) = 2" and not by_layer[2]["passed"]
    assert by_layer[1]["passed"] and sel["passed_filters"] and sel["dropped_filters"] is None
    assert out.selected == (1, -1) and rd.selected is None  # a copy; the input is untouched

    # the recorded scores are what the hooks produce
    tok_ids = refusal_token_ids(tiny_model, tiny_tokenizer)
    base = refusal_score(last_token_logprobs(tiny_model, tiny_tokenizer, HARMFUL[:4]), tok_ids).mean()
    assert sel["baseline"]["harmful_refusal_score"] == pytest.approx(float(base))
    with ablate_direction(tiny_model, rd.vector(1)):
        bypass = refusal_score(last_token_logprobs(tiny_model, tiny_tokenizer, HARMFUL[:4]), tok_ids).mean()
    assert by_layer[1]["bypass"] == pytest.approx(float(bypass))
    assert by_layer[1]["kl"] > 0


@pytest.mark.parametrize("kl_threshold,dropped", [(10.0, "induce"), (1e-12, "induce, KL")])
def test_selection_relaxes_filters_in_order(rd, tiny_model, tiny_tokenizer, kl_threshold, dropped):
    cfg = SelectConfig(layers=[1, 2], induce_threshold=1e9, kl_threshold=kl_threshold, max_layer_frac=1.0,
                       filter_prompts=False)
    out = select_direction(tiny_model, tiny_tokenizer, rd, cfg, harmful=HARMFUL[:3], harmless=HARMLESS[:3])
    sel = out.info["selection"]
    assert not sel["passed_filters"] and sel["dropped_filters"] == dropped
    pool = [c for c in sel["candidates"] if c["kl"] <= kl_threshold or dropped == "induce, KL"]
    assert out.selected[0] == min(pool, key=lambda c: c["bypass"])["layer"]


def test_selection_filters_prompts_as_the_reference_does(rd, tiny_model, tiny_tokenizer, monkeypatch):
    import safeanchor.direction.select as select

    real = select.refusal_score
    calls = []

    def scripted(logprobs, token_ids):  # the two baseline calls get scripted scores, the rest are real
        calls.append(1)
        n = logprobs.shape[0]
        if len(calls) == 1:  # harmful: refused (> 0) at even positions only
            return torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(n)], dtype=torch.float64)
        if len(calls) == 2:  # harmless: refused (>= 0) at position 0 only
            return torch.tensor([0.5 if i == 0 else -1.0 for i in range(n)], dtype=torch.float64)
        return real(logprobs, token_ids)

    monkeypatch.setattr(select, "refusal_score", scripted)
    cfg = SelectConfig(layers=[1], induce_threshold=float("-inf"), kl_threshold=10.0, max_layer_frac=1.0)
    sel = select_direction(tiny_model, tiny_tokenizer, rd, cfg, harmful=HARMFUL, harmless=HARMLESS).info["selection"]
    assert sel["n_harmful"] == (len(HARMFUL) + 1) // 2 and sel["n_harmless"] == len(HARMLESS) - 1
    assert sel["n_before_filter"] == {"harmful": len(HARMFUL), "harmless": len(HARMLESS)}
    monkeypatch.setattr(select, "refusal_score", real)
    # the tiny model refuses nothing (every score < 0): no harmful prompt is left, a clear error
    with pytest.raises(ValueError, match="0 harmful and .* harmless prompts are left"):
        select_direction(tiny_model, tiny_tokenizer, rd, cfg, harmful=HARMFUL, harmless=HARMLESS)


def test_layer_cap_is_int_of_the_fraction_as_in_the_reference(rd, tiny_model, tiny_tokenizer):
    # L = 3: int(0.8 * 3) = 2, so layer 2 is pruned (0.8 * 3 = 2.4 would have kept it)
    cfg = SelectConfig(induce_threshold=float("-inf"), kl_threshold=10.0, filter_prompts=False)
    sel = select_direction(tiny_model, tiny_tokenizer, rd, cfg, harmful=HARMFUL[:3], harmless=HARMLESS[:3])
    assert sorted(c["layer"] for c in sel.info["selection"]["candidates"]) == [0, 1]


def test_select_config_validation():
    with pytest.raises(ValueError, match="positions must be negative"):
        SelectConfig(positions=[0])
    with pytest.raises(ValueError, match="max_layer_frac"):
        SelectConfig(max_layer_frac=1.5)


def test_steering_coefficient_modes():
    hm = torch.zeros(1, 2, 3, dtype=torch.float64)
    bm = torch.zeros(1, 2, 3, dtype=torch.float64)
    hm[0, 0] = torch.tensor([3.0, 0, 0])   # layer 0: harmful projection +3, ‖r‖ = 4
    bm[0, 0] = torch.tensor([-1.0, 0, 0])
    hm[0, 1] = torch.tensor([-2.0, 0, 0])  # layer 1: harmful side has a negative projection
    bm[0, 1] = torch.tensor([-5.0, 0, 0])
    rd = RefusalDirection(hm, bm, {"positions": [-1]})
    assert steering_coefficient(rd, 0, -1, "harmful-proj") == pytest.approx(3.0)
    assert steering_coefficient(rd, 0, -1, "diff") == pytest.approx(4.0)
    assert steering_coefficient(rd, 0, -1, 1.5) == 1.5
    with pytest.raises(ValueError, match="<= 0"):
        steering_coefficient(rd, 1, -1, "harmful-proj")
    with pytest.raises(ValueError, match="coef must be"):
        steering_coefficient(rd, 0, -1, "double")


def test_steering_check_generates_under_each_condition(rd, tiny_model, tiny_tokenizer):
    n_hooks = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in tiny_model.modules())
    harmful, harmless = [Record(r.prompt) for r in HARMFUL[:3]], [Record(r.prompt) for r in HARMLESS[:3]]
    report = steering_check(tiny_model, tiny_tokenizer, rd, harmful=harmful, harmless=harmless, layer=1,
                            coef=50.0, max_new_tokens=6, batch_size=2, progress=False)
    assert report["layer"] == 1 and report["coef"] == 50.0 and report["n_harmful"] == 3
    rates = report["rates"]
    assert set(rates) == {"baseline", "ablated", "added"}
    assert set(rates["baseline"]) == {"harmful", "harmless"}
    assert all(0.0 <= v <= 1.0 for cond in rates.values() for v in cond.values())
    base = [e["answer"] for e in report["examples"]["baseline"]["harmless"]]
    added = [e["answer"] for e in report["examples"]["added"]["harmless"]]
    assert base != added  # the addition hook was active during generation
    assert sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in tiny_model.modules()) == n_hooks
