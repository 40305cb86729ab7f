"""A TRL script with ``SafeSFTTrainer`` (ProCon, cached anchors), started by torchrun or alone:

    torchrun --nproc_per_node 2 tests/dist_trl_worker.py WORK OUT
    python tests/dist_trl_worker.py WORK OUT

``WORK`` is what ``dist_worker.py prepare`` builds (the tiny model and data whose responses all
tokenise to one length). Global batch 4 (4 per device alone, 2 per device on two), no shuffling
differences, ``logging_steps=1``; rank 0 writes TRL's ``log_history`` to ``OUT/log_history.json``.
Not a test module itself (no ``test_`` prefix).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(work: Path, out: Path) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig

    from safeanchor import SafeSFTConfig, SafeSFTTrainer, load_model
    from safeanchor.data import read_records
    from safeanchor.distributed import is_main, launched_world_size

    torch.set_num_threads(1)
    model, tok = load_model(str(work / "model"), device="cpu")
    rows = read_records(work / "data" / "train.jsonl")
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r.prompt}],
                                  "completion": [{"role": "assistant", "content": r.response}]} for r in rows])
    data = {k: f"file:{work / 'data' / (k + '.jsonl')}" for k in ("harmful", "harmless")}
    args = SafeSFTConfig(
        output_dir=str(out), per_device_train_batch_size=4 // launched_world_size(), num_train_epochs=1,
        learning_rate=1e-2, report_to="none", save_strategy="no", logging_steps=1, seed=0, max_length=64,
        disable_tqdm=True, bf16=False, use_cpu=not torch.cuda.is_available(), method="procon", alpha=0.1,
        regularizer_options={"procon": {"direction_harmful": data["harmful"], "direction_harmless": data["harmless"],
                                        "direction_samples": 12}})
    trainer = SafeSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok,
                             peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                    target_modules=["q_proj", "v_proj"]))
    trainer.train()
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / "log_history.json").write_text(json.dumps(trainer.state.log_history))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
