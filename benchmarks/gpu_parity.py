"""Parity of the multi-process engines on a GPU machine: DDP, FSDP2, DeepSpeed ZeRO-2 and ZeRO-3
(``configs/accelerate/``) against one process, for sft, ProCon (cached and online anchors) and AsFT.

    python benchmarks/gpu_parity.py [--work DIR] [--engines ddp,fsdp,zero2,zero3]

Uses the tiny seeded model and data of ``tests/dist_worker.py`` (global batch 4, 2 epochs, no
dropout), launched with ``accelerate launch --config_file configs/accelerate/<engine>.yaml
--num_processes N`` on the N visible GPUs. For each engine and method it prints the largest
relative difference of CE and penalty per step and of the final adapter against the one-process
run, whether ProCon's penalty is exactly 0 at step 0, and whether the engine refused the method
(FSDP + AsFT must refuse: its LoRA factors are shards). Exit status 1 when a difference exceeds
the tolerance (bf16 on GPU: 2e-2 relative) or a run fails that should not.

The project's CI machine has no GPU and no DeepSpeed, so this script is not run there; run it
whenever a GPU machine is available and paste its output into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "dist_worker.py"
METHODS = {"sft": "sft", "procon": "procon", "online": "procon:online", "asft": "asft"}
TOL = 2e-2


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-8)


def compare(one: Path, many: Path) -> dict:
    from safetensors.torch import load_file

    s1 = json.loads((one / "train_log.json").read_text())["steps"]
    s2 = json.loads((many / "train_log.json").read_text())["steps"]
    keys = [k for k in s1[0] if k == "ce" or k.endswith("/raw")]
    worst = {k: max(rel(a[k], b[k]) for a, b in zip(s1, s2)) for k in keys}
    A, B = load_file(one / "adapter_model.safetensors"), load_file(many / "adapter_model.safetensors")
    worst["adapter"] = max(float((A[k].float() - B[k].float()).abs().max() / A[k].float().abs().max().clamp_min(1e-8))
                           for k in A)
    raw = [k for k in keys if k.endswith("/raw")]
    worst["step0_raw"] = s2[0][raw[0]] if raw else None
    worst["world_size"] = json.loads((many / "train_report.json").read_text())["world_size"]
    return worst


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=None)
    ap.add_argument("--engines", default="ddp,fsdp,zero2,zero3")
    args = ap.parse_args()
    import torch

    n = torch.cuda.device_count()
    if n < 1:
        print("no GPU visible: nothing to check")
        return 2
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_parity_"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run([sys.executable, str(WORKER), "prepare", str(work)], check=True, env=env)
    subprocess.run([sys.executable, str(WORKER), str(work), *[f"one_{k}:{v}" for k, v in METHODS.items()]],
                   check=True, env=env)
    failed = False
    for engine in args.engines.split(","):
        for key, method in METHODS.items():
            name = f"{engine}_{key}"
            cmd = ["accelerate", "launch", "--config_file", str(ROOT / "configs" / "accelerate" / f"{engine}.yaml"),
                   "--num_processes", str(n), str(WORKER), str(work), f"{name}:{method}"]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            refused = proc.returncode != 0
            expect_refusal = engine == "fsdp" and key == "asft"
            if refused:
                ok = expect_refusal and "not whole" in proc.stderr
                print(f"{name}: {'refused as expected' if ok else 'FAILED'}")
                if not ok:
                    print(proc.stderr[-3000:])
                    failed = True
                continue
            d = compare(work / f"one_{key}", work / name)
            bad = [k for k, v in d.items() if k not in ("step0_raw", "world_size") and v > TOL]
            this = bool(expect_refusal or bad or d["step0_raw"] not in (None, 0.0) or d["world_size"] != n)
            failed |= this
            print(f"{name}: {json.dumps(d)}{'  <-- FAILED' if this else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
