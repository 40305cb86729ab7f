"""Batched greedy generation: order, determinism, batching equivalence, stop tokens, adapters."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_llama
from safeanchor.data import Record, encode_prompt
from safeanchor.evaluate.generate import (decoding_settings, generate, generate_ids, resolve_backend,
                                          stop_token_ids)

PROMPTS = ["How do I bake bread?", "Write a poem about the sea.", "What is 12 plus 7?",
           "Explain how to stay safe online with strong passwords and a password manager.", "Hi"]


def test_batched_equals_one_at_a_time_in_input_order(tiny_tokenizer):
    model = make_tiny_llama(len(tiny_tokenizer), layers=2, hidden=32)  # wide enough to answer prompts differently
    batched = generate(model, tiny_tokenizer, PROMPTS, max_new_tokens=8, batch_size=4, progress=False)
    single = [generate(model, tiny_tokenizer, [p], max_new_tokens=8, batch_size=1, progress=False)[0]
              for p in PROMPTS]
    assert batched == single
    assert len(set(batched)) >= 3  # answers differ, so input order is really checked


def test_deterministic_and_bounded_length(tiny_model, tiny_tokenizer):
    ids = [encode_prompt(tiny_tokenizer, Record(p)) for p in PROMPTS]
    a = generate_ids(tiny_model, tiny_tokenizer, ids, max_new_tokens=6, batch_size=2, progress=False)
    b = generate_ids(tiny_model, tiny_tokenizer, ids, max_new_tokens=6, batch_size=3, progress=False)
    assert a == b
    assert all(0 < len(row) <= 6 for row in a)
    assert all(t not in stop_token_ids(tiny_model, tiny_tokenizer) for row in a for t in row)


def test_matches_manual_greedy_loop(tiny_model, tiny_tokenizer):
    """The KV-cached, left-padded batch equals a plain argmax loop without cache."""
    prompt = encode_prompt(tiny_tokenizer, Record("Write a poem about the sea."))
    got = generate_ids(tiny_model, tiny_tokenizer, [prompt, encode_prompt(tiny_tokenizer, Record("Hi"))],
                       max_new_tokens=5, progress=False)[0]
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(5):
            nxt = int(tiny_model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            if nxt in stop_token_ids(tiny_model, tiny_tokenizer):
                break
            seq.append(nxt)
    assert got == seq[len(prompt):]


def test_stops_at_eos(tiny_tokenizer):
    model = make_tiny_llama(len(tiny_tokenizer))
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit equal: greedy picks token 0
    model.generation_config.eos_token_id = 0
    assert 0 in stop_token_ids(model, tiny_tokenizer)
    assert generate(model, tiny_tokenizer, ["Hi", "Hello there"], max_new_tokens=8, progress=False) == ["", ""]


def test_records_with_system_prompt_and_empty_input(tiny_model, tiny_tokenizer):
    assert generate(tiny_model, tiny_tokenizer, [], progress=False) == []
    with_sys = generate(tiny_model, tiny_tokenizer, [Record("Hi", system="Be brief.")], max_new_tokens=6, progress=False)
    without = generate(tiny_model, tiny_tokenizer, [Record("Hi")], max_new_tokens=6, progress=False)
    assert len(with_sys) == 1 and isinstance(with_sys[0], str)
    assert with_sys != without  # the system prompt is part of the formatted input


def test_peft_adapter_and_merged_agree(tiny_model, tiny_tokenizer):
    from safeanchor.models import attach_lora

    base_answers = generate(tiny_model, tiny_tokenizer, PROMPTS, max_new_tokens=6, progress=False)
    peft = attach_lora(tiny_model, r=4, alpha=8, dropout=0.0, seed=0)
    # fresh LoRA has B = 0 (no change); give it a real update so the adapter matters
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    adapted = generate(peft, tiny_tokenizer, PROMPTS, max_new_tokens=6, progress=False)
    assert adapted != base_answers
    merged = peft.merge_and_unload()
    assert generate(merged, tiny_tokenizer, PROMPTS, max_new_tokens=6, progress=False) == adapted


def test_backend_choice_and_settings():
    assert resolve_backend("hf") == "hf"
    if not torch.cuda.is_available():
        assert resolve_backend("auto") == "hf"
        with pytest.raises(RuntimeError, match="vllm"):
            resolve_backend("vllm")
    with pytest.raises(ValueError, match="auto, hf, vllm"):
        resolve_backend("tgi")
    model = make_tiny_llama(64)
    handle = model.model.layers[0].register_forward_pre_hook(lambda mod, args: None)
    assert resolve_backend("auto", model) == "hf"  # hooks (ablation/steering) never go to vLLM
    handle.remove()
    s = decoding_settings(32, 8)
    assert s["strategy"] == "greedy" and s["max_new_tokens"] == 32 and s["padding_side"] == "left"


def test_invalid_arguments(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(tiny_model, tiny_tokenizer, ["Hi"], max_new_tokens=0, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        generate(tiny_model, tiny_tokenizer, ["Hi"], batch_size=0, progress=False)


@pytest.mark.slow
def test_embedded_base_adapter_merged(embedded_cache, tmp_path):
    """Full model, base + adapter folder, merged checkpoint: same loader, consistent answers."""
    from safeanchor.models import attach_lora, load_model

    prompts = ["Name three colours.", "What is the capital of France?", "Give me a tip for sleeping well."]
    base, tok = load_model("embedded:smollm2-135m-instruct", precision="fp32")
    single = [generate(base, tok, [p], max_new_tokens=12, progress=False)[0] for p in prompts]
    batched = generate(base, tok, prompts, max_new_tokens=12, batch_size=3, progress=False)
    assert batched == single  # fp32: left padding does not change greedy answers
    assert "Paris" in batched[1]

    peft = attach_lora(base, r=4, alpha=8, dropout=0.0, seed=0)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    peft.save_pretrained(tmp_path / "adapter")
    peft.merge_and_unload().save_pretrained(tmp_path / "merged")
    tok.save_pretrained(tmp_path / "merged")

    with_adapter, tok2 = load_model("embedded:smollm2-135m-instruct", precision="fp32", adapter=str(tmp_path / "adapter"))
    merged, tok3 = load_model(str(tmp_path / "merged"), precision="fp32")
    a = generate(with_adapter, tok2, prompts, max_new_tokens=12, progress=False)
    m = generate(merged, tok3, prompts, max_new_tokens=12, progress=False)
    assert a == m
    assert a != batched  # the adapter changed the model
