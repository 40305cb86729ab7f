"""Residual-stream hooks: capture convention, ablation, addition, cleanup, unknown families."""

from __future__ import annotations

import pytest
import torch

from safeanchor.families import UnsupportedModelError, get_blocks
from safeanchor.hooks import (StopForward, ablate_direction, add_direction, capture_block_inputs,
                              forward_until_captured)


def _batch(vocab: int, B: int = 3, T: int = 9, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :4] = 0  # a left-padded row
    return ids, mask


def _n_hooks(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_capture_equals_hidden_states(tiny_model):
    ids, mask = _batch(tiny_model.config.vocab_size)
    with torch.no_grad(), capture_block_inputs(tiny_model) as acts:
        out = tiny_model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert sorted(acts) == [0, 1, 2]
    for layer in range(3):
        # layer=l is block l's residual input == HF hidden_states[l]
        assert torch.equal(acts[layer], out.hidden_states[layer])


def test_capture_through_peft_and_position_slicing(tiny_model):
    from safeanchor.models import attach_lora

    model = attach_lora(tiny_model, r=2, seed=0)
    ids, mask = _batch(tiny_model.config.vocab_size)
    positions = torch.tensor([[8, 2], [8, 5], [0, 7]])  # (B, P)
    with torch.no_grad(), capture_block_inputs(model, layers=[2], positions=positions) as acts:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert list(acts) == [2] and acts[2].shape == (3, 2, 16)
    hs = out.hidden_states[2]
    for b in range(3):
        for p in range(2):
            assert torch.equal(acts[2][b, p], hs[b, positions[b, p]])


def test_hooks_removed_even_on_error(tiny_model):
    before = _n_hooks(tiny_model)
    r = torch.randn(16)
    with pytest.raises(RuntimeError, match="boom"):
        with capture_block_inputs(tiny_model), ablate_direction(tiny_model, r), add_direction(tiny_model, r, 1):
            assert _n_hooks(tiny_model) > before
            raise RuntimeError("boom")
    assert _n_hooks(tiny_model) == before


def test_stop_early_skips_the_rest(tiny_model):
    calls = []
    handle = tiny_model.model.norm.register_forward_hook(lambda *a: calls.append(1))
    ids, _ = _batch(tiny_model.config.vocab_size)
    try:
        with torch.no_grad(), capture_block_inputs(tiny_model, layers=[0, 1], stop_early=True) as acts:
            with pytest.raises(StopForward):
                tiny_model(input_ids=ids)
            forward_until_captured(tiny_model, input_ids=ids)
    finally:
        handle.remove()
    assert sorted(acts) == [0, 1]
    assert calls == []  # neither the final norm nor the LM head ran


def test_ablation_zeroes_projection_everywhere(tiny_model):
    ids, mask = _batch(tiny_model.config.vocab_size)
    r = torch.randn(16, generator=torch.Generator().manual_seed(3)) * 5
    unit = r / r.norm()
    outs = []

    def record(module, args, output):
        outs.append(output[0] if isinstance(output, tuple) else output)

    with torch.no_grad():
        base_logits = tiny_model(input_ids=ids, attention_mask=mask).logits
        with ablate_direction(tiny_model, r):
            # registered after the ablation hooks, so they see the ablated tensors
            handles = [m.register_forward_hook(record) for blk in get_blocks(tiny_model) for m in (blk.self_attn, blk.mlp)]
            try:
                with capture_block_inputs(tiny_model) as acts:
                    logits = tiny_model(input_ids=ids, attention_mask=mask).logits
            finally:
                for h in handles:
                    h.remove()
    for layer in range(3):
        proj = acts[layer] @ unit  # (B, T)
        assert proj.abs().max() < 1e-5, (layer, proj.abs().max())
    assert len(outs) == 6 and all((o @ unit).abs().max() < 1e-5 for o in outs)
    assert (logits - base_logits).abs().max() > 1e-4  # the ablation changed the model's output


def test_add_direction_shifts_one_layer(tiny_model):
    ids, mask = _batch(tiny_model.config.vocab_size)
    v = torch.randn(16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        with capture_block_inputs(tiny_model) as base:
            tiny_model(input_ids=ids, attention_mask=mask)
        base = dict(base)
        with add_direction(tiny_model, v, layer=1, coef=2.5), capture_block_inputs(tiny_model) as acts:
            tiny_model(input_ids=ids, attention_mask=mask)
    assert torch.equal(acts[0], base[0])
    torch.testing.assert_close(acts[1], base[1] + 2.5 * v, rtol=0, atol=1e-6)
    assert (acts[2] - base[2]).abs().max() > 1e-4


def test_bad_direction_is_an_error(tiny_model):
    with pytest.raises(ValueError, match="non-zero"):
        with ablate_direction(tiny_model, torch.zeros(16)):
            pass
    with pytest.raises(ValueError, match="layers must be within"):
        with capture_block_inputs(tiny_model, layers=[3]):
            pass


def test_unknown_family_is_a_clear_error():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64, n_positions=32))
    with pytest.raises(UnsupportedModelError, match="gpt2.*supported: .*llama"):
        with capture_block_inputs(model):
            pass
    with pytest.raises(UnsupportedModelError):
        with ablate_direction(model, torch.ones(16)):
            pass

