"""TRL-native use: ``SafeSFTConfig`` / ``SafeSFTTrainer`` inside a TRL script, on the tiny model.

With α = 0 the losses equal plain ``SFTTrainer``'s step for step; with α > 0 the penalty is 0 at
step 0, logged TRL's way and changes the update; AsFT and safety data work through TRL's formats;
the setups ProCon cannot serve (packing, nothing masked) stop with a reason; the example runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_llama
from test_train import write_data

pytest.importorskip("trl")
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

import safeanchor  # noqa: E402
from safeanchor import SafeSFTConfig, SafeSFTTrainer  # noqa: E402
from safeanchor.train import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMMON = dict(per_device_train_batch_size=4, num_train_epochs=1, learning_rate=1e-2, report_to="none",
              save_strategy="no", logging_steps=1, seed=0, max_length=64, disable_tqdm=True, bf16=False)


def completion_data(n: int = 16) -> Dataset:
    return Dataset.from_list([
        {"prompt": [{"role": "user", "content": f"What is {i} plus {i + 7}?"}],
         "completion": [{"role": "assistant", "content": f"The answer is {2 * i + 7}." + " ok" * (i % 3)}]}
        for i in range(n)])


def lora() -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def procon_options(data: dict[str, str]) -> dict:
    return {"procon": {"direction_harmful": data["harmful"], "direction_harmless": data["harmless"],
                       "direction_samples": 12}}


def fit(tok, out: Path, config_cls=SafeSFTConfig, trainer_cls=SafeSFTTrainer, dataset=None, **kw):
    args = config_cls(output_dir=str(out), **{**COMMON, **kw})
    trainer = trainer_cls(model=make_tiny_llama(len(tok)), args=args, train_dataset=dataset or completion_data(),
                          processing_class=tok, peft_config=lora())
    trainer.train()
    return trainer


def losses(trainer) -> list[float]:
    return [row["loss"] for row in trainer.state.log_history if "loss" in row]


def adapter_weights(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}


@pytest.fixture
def data(tmp_path):
    return write_data(tmp_path / "data")


def test_is_a_trl_sft_trainer():
    import trl

    assert issubclass(safeanchor.SafeSFTTrainer, trl.SFTTrainer)
    assert issubclass(safeanchor.SafeSFTConfig, trl.SFTConfig)


def test_alpha_zero_equals_plain_sft_trainer_and_alpha_changes_the_update(tmp_path, tiny_tokenizer, data):
    plain = fit(tiny_tokenizer, tmp_path / "plain", SFTConfig, SFTTrainer)
    zero = fit(tiny_tokenizer, tmp_path / "zero", method="procon", alpha=0.0, regularizer_options=procon_options(data))
    assert losses(zero) == losses(plain) and len(losses(plain)) == 4  # step for step, to the bit
    on = fit(tiny_tokenizer, tmp_path / "on", method="procon", alpha=0.1, regularizer_options=procon_options(data))
    rows = [r for r in on.state.log_history if "loss" in r]
    assert rows[0]["procon/raw"] == 0.0 and all(r["procon/raw"] > 0 for r in rows[1:])  # TRL's logs carry it
    assert all(r["procon/coef"] == 0.1 for r in rows) and "ce" in rows[0] and "mean_token_accuracy" in rows[0]
    assert on.reports["procon"]["step0_raw"] == 0.0
    assert on.reports["procon"]["n_samples"] == 16
    a, b = adapter_weights(zero), adapter_weights(on)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert on.step_log[1]["procon/raw"] > 0  # the per-step log of the shared loop too


def test_online_anchors_give_the_cached_penalty(tmp_path, tiny_tokenizer, data):
    opts = procon_options(data)
    cached = fit(tiny_tokenizer, tmp_path / "cached", method="procon", alpha=0.1, regularizer_options=opts)
    opts["procon"]["anchor"] = "online"
    online = fit(tiny_tokenizer, tmp_path / "online", method="procon", alpha=0.1, regularizer_options=opts)
    for a, b in zip(cached.step_log, online.step_log):
        assert b["procon/raw"] == pytest.approx(a["procon/raw"], rel=1e-4, abs=1e-7)


def test_asft_and_safety_data_through_trl(tmp_path, tiny_tokenizer, data):
    unaligned = tmp_path / "unaligned"
    make_tiny_llama(len(tiny_tokenizer), seed=1).save_pretrained(unaligned)
    tiny_tokenizer.save_pretrained(unaligned)
    asft = fit(tiny_tokenizer, tmp_path / "asft", method="asft", alpha=1.0,
               regularizer_options={"asft": {"unaligned_model": str(unaligned)}})
    assert asft.step_log[0]["asft/raw"] == 0.0 and asft.step_log[-1]["asft/raw"] > 0
    safe = fit(tiny_tokenizer, tmp_path / "safe", method="procon_safe", alpha=0.1, safety_samples=4, max_length=128,
               safety_harmful=data["harmful"], safety_refusals=data["refusals"],
               regularizer_options=procon_options(data))
    assert len(safe.train_dataset) == 20  # 16 + 4 harmful -> refusal samples, in the dataset's own format
    assert safe.reports["procon"]["n_samples"] == 20


@pytest.mark.parametrize("change, message", [
    ({"packing": True}, "packing / padding_free puts several samples in one row"),
    ({"completion_only_loss": False}, "every token of this dataset is a loss token"),
])
def test_procon_setups_it_cannot_serve_stop_with_a_reason(tmp_path, tiny_tokenizer, data, change, message):
    args = SafeSFTConfig(output_dir=str(tmp_path / "x"), **COMMON, method="procon", alpha=0.1,
                         regularizer_options=procon_options(data), **change)
    with pytest.raises(ConfigError, match=message):
        SafeSFTTrainer(model=make_tiny_llama(len(tiny_tokenizer)), args=args, train_dataset=completion_data(),
                       processing_class=tiny_tokenizer, peft_config=lora())


def test_config_validates_like_safeanchor_train(tmp_path):
    with pytest.raises(ConfigError, match="method: unknown method 'procoon'"):
        SafeSFTConfig(output_dir=str(tmp_path), method="procoon", report_to="none", bf16=False)
    with pytest.raises(ConfigError, match="safe_lora.*safeanchor safe-lora"):
        SafeSFTConfig(output_dir=str(tmp_path), method="safe_lora", report_to="none", bf16=False)
    cfg = SafeSFTConfig(output_dir=str(tmp_path), method="procon_wu", report_to="none", bf16=False, num_train_epochs=4)
    assert cfg.alpha == 1.0 and cfg.alpha_schedule == "warmup"  # resolved once, as in safeanchor train


@pytest.mark.slow
def test_example_script_runs_and_logs_a_nonzero_penalty(tmp_path, embedded_cache):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SAFEANCHOR_CACHE": embedded_cache}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "trl_procon.py"), "--max-steps", "2",
                           "--samples", "16", "--output-dir", str(tmp_path / "ex")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import ast

    logs = [ast.literal_eval(line[line.index("{'loss'"):].split("}")[0] + "}")
            for line in (proc.stdout + proc.stderr).replace("\r", "\n").splitlines() if "{'loss'" in line]
    assert len(logs) == 2
    assert float(logs[0]["procon/raw"]) == 0.0 and float(logs[1]["procon/raw"]) > 0
    assert (tmp_path / "ex" / "adapter_model.safetensors").is_file()
