"""DriftCallback inside a real (tiny) LoRA training run."""

from __future__ import annotations

import json

import pytest

from safeanchor.data import Record, SFTCollator, encode_pair
from safeanchor.direction.callback import HISTORY_FILE, DriftCallback
from safeanchor.direction.extract import ExtractConfig, extract_direction
from safeanchor.models import attach_lora


def _train(model, tok, out_dir, callback, steps=4):
    from transformers import Trainer, TrainingArguments

    pairs = [Record(f"What is {i} plus {i}?", f"The answer is {2 * i}.") for i in range(8)]
    data = [{"input_ids": e.input_ids, "labels": e.labels, "sample_idx": i}
            for i, e in enumerate(encode_pair(tok, r, max_length=96) for r in pairs)]
    args = TrainingArguments(output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=4,
                             learning_rate=5e-2, logging_steps=1, save_strategy="no", report_to=["tensorboard"],
                             use_cpu=True, disable_tqdm=True, remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=tok,
                      data_collator=SFTCollator(tok.pad_token_id), callbacks=[callback])
    trainer.train()
    return trainer


def test_drift_callback_logs_history(tiny_model, tiny_tokenizer, tmp_path):
    model = attach_lora(tiny_model, r=4, alpha=8, dropout=0.0, seed=0)
    cb = DriftCallback(tokenizer=tiny_tokenizer, harmful="bundled:harmful:val", harmless="bundled:harmless:val",
                       every_n_steps=2, n_prompts=4, batch_size=4)
    trainer = _train(model, tiny_tokenizer, tmp_path, cb)

    assert [h["step"] for h in cb.history] == [0, 2, 4]
    start = cb.history[0]["cos"]
    assert start[0] is None  # block 0's input at the last token is one embedding: no direction
    assert start[1:] == pytest.approx([1.0, 1.0], abs=1e-12)  # fresh LoRA (B = 0) == original weights
    assert cb.history[-1]["cos_mean"] < 1.0 - 1e-6  # training moved the direction

    saved = json.loads((tmp_path / HISTORY_FILE).read_text())
    assert saved["history"] == json.loads(json.dumps(cb.history))
    assert saved["anchor"].startswith("original weights") and saved["prompts"]["n_harmful"] == 4
    logged = [e for e in trainer.state.log_history if "drift/cos_mean" in e]
    assert [e["step"] for e in logged] == [0, 2, 4]
    assert logged[-1]["drift/layer_02"] == pytest.approx(cb.history[-1]["cos"][2])
    assert list((tmp_path / "runs" / "drift").glob("events.out.tfevents.*"))


def test_measure_restores_train_mode(tiny_model, tiny_tokenizer):
    cb = DriftCallback(tokenizer=tiny_tokenizer, n_prompts=2)
    cb._prompts = cb._load_prompts()
    cb._anchor = cb._mean_diff(tiny_model)
    tiny_model.train()
    metrics = cb.measure(tiny_model, step=0)
    assert tiny_model.training
    assert metrics["drift/cos_min"] == pytest.approx(1.0, abs=1e-12)


def test_drift_callback_with_reference_artifact(tiny_model, tiny_tokenizer, tmp_path):
    rd = extract_direction(tiny_model, tiny_tokenizer, ExtractConfig(harmful="bundled:harmful:val",
                                                                      harmless="bundled:harmless:val", limit=4))
    rd.save_pretrained(tmp_path / "direction")
    model = attach_lora(tiny_model, r=4, dropout=0.0, seed=0)
    cb = DriftCallback(tmp_path / "direction", every_n_steps=10, n_prompts=4)
    _train(model, tiny_tokenizer, tmp_path / "run", cb, steps=2)
    saved = json.loads((tmp_path / "run" / HISTORY_FILE).read_text())
    # the subset is the reference's whole prompt set, so the anchor is the reference itself
    assert saved["anchor_vs_reference"][1:] == pytest.approx([1.0, 1.0], abs=1e-12)
    assert [h["step"] for h in cb.history] == [0, 2]  # start, and the end of training


def test_drift_callback_rejects_a_mismatched_model(tiny_tokenizer, tmp_path):
    from conftest import make_tiny_llama
    from safeanchor.direction.artifact import IncompatibleDirectionError

    small = make_tiny_llama(len(tiny_tokenizer))
    rd = extract_direction(small, tiny_tokenizer, ExtractConfig(harmful="bundled:harmful:val",
                                                                 harmless="bundled:harmless:val", limit=2))
    cb = DriftCallback(rd, tokenizer=tiny_tokenizer)
    with pytest.raises(IncompatibleDirectionError, match="3 layers"):
        _train(make_tiny_llama(len(tiny_tokenizer), layers=2), tiny_tokenizer, tmp_path, cb, steps=1)
    with pytest.raises(ValueError, match="every_n_steps"):
        DriftCallback(rd, every_n_steps=0)
