"""Data parallelism on this CPU: 1 process (all threads) against 2 processes (torchrun, gloo, one
thread each) on the embedded model, and ProCon's and AsFT's step time against SFT's on 2 processes.

    HF_HUB_OFFLINE=1 python benchmarks/bench_ddp.py --json bench_ddp.json          # ~10 min idle

Same global batch everywhere (``--global-batch`` sequences of about ``--seq-len`` tokens: the
records of ``bench_train.py``), ``--steps`` optimizer steps per run. The runs go round robin
``--repeats`` times (1-process SFT, 2-process SFT, 2-process ProCon, 2-process AsFT, then again), so
load on the machine hits them alike; each figure is the median over repeats.

* tokens/s: non-padding tokens of the global batch per step (Trainer's count, summed over ranks) /
  wall seconds of the step (the slowest rank), median over the steps after the first;
* peak memory: peak RSS of each process (``ru_maxrss``), the largest over ranks;
* step ratio: a method's median step time / SFT's, both on 2 processes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

RUNS = [("sft", 1), ("sft", 2), ("procon", 2), ("asft", 2)]


def worker(spec_path: str) -> None:
    """One run (inside torchrun or alone): train, then each rank writes its timings and peak RSS."""
    import torch
    from transformers import TrainerCallback

    from safeanchor.distributed import rank
    from safeanchor.train import SafeTrainingConfig, train

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    times: list[float] = []
    tokens: list[int] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()
            self.seen = state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)
            tokens.append(int(state.num_input_tokens_seen - self.seen))

    result = train(SafeTrainingConfig(**spec["config"]), callbacks=[Clock()])
    out = {"rank": rank(), "step_s": times, "tokens": tokens, "runtime_s": result.runtime_s,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    Path(spec["config"]["output_dir"], f"bench-rank{rank()}.json").write_text(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="runs/bench_ddp")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from bench_train import extract, make_records, make_unaligned
    from safeanchor.data import write_jsonl
    from safeanchor.models import load_tokenizer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data.jsonl"
    write_jsonl(data, make_records(args.global_batch * args.steps, args.seq_len, load_tokenizer(args.model)))
    if not (out / "direction" / "direction.json").is_file():
        extract(args.model, out / "direction")
    unaligned = make_unaligned(args.model, out / "unaligned")
    cores = os.cpu_count() or 2
    results: dict[str, list[dict]] = {}
    for rep in range(args.repeats):
        for method, procs in RUNS:
            name = f"{method}_{procs}p"
            cfg = {"model": args.model, "method": method, "train_data": f"file:{data}",
                   "max_length": args.seq_len + 32, "per_device_train_batch_size": args.global_batch // procs,
                   "max_steps": args.steps, "report_to": "none", "save_strategy": "no", "progress": False,
                   "include_num_input_tokens_seen": "non_padding", "logging_steps": 1000,
                   "output_dir": str(out / f"{name}_r{rep}"), "overwrite_output_dir": True,
                   "regularizer_options": {}}
            if method == "procon":
                cfg.update(alpha=0.1, regularizer_options={"procon": {"direction": str(out / "direction")}})
            if method == "asft":
                cfg.update(alpha=1.0, regularizer_options={"asft": {"unaligned_model": unaligned}})
            spec = out / f"{name}_r{rep}.json"
            spec.write_text(json.dumps({"config": cfg, "threads": max(1, cores // procs)}))
            launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
                        if procs > 1 else [sys.executable])
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // procs))}
            subprocess.run(launcher + [__file__, "--worker", str(spec)], check=True, env=env,
                           stdout=subprocess.DEVNULL)
            ranks = [json.loads(p.read_text()) for p in sorted(Path(cfg["output_dir"]).glob("bench-rank*.json"))]
            steps = list(zip(*[r["step_s"] for r in ranks]))[1:]  # every step but the first
            toks = ranks[0]["tokens"][1:]  # Trainer's count is already summed over ranks
            step_s = statistics.median(max(s) for s in steps)
            results.setdefault(name, []).append({
                "step_s": step_s, "tokens_per_s": statistics.median(t / max(s) for t, s in zip(toks, steps)),
                "peak_rss_mib_per_process": max(r["peak_rss_mib"] for r in ranks), "processes": len(ranks)})
            print(f"repeat {rep} {name}: {results[name][-1]}", flush=True)
    summary = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in results.items()}
    base = summary["sft_2p"]["step_s"]
    for name in ("procon_2p", "asft_2p"):
        summary[name]["step_ratio_to_sft_2p"] = summary[name]["step_s"] / base
    summary["sft_2p"]["tokens_per_s_vs_1p"] = summary["sft_2p"]["tokens_per_s"] / summary["sft_1p"]["tokens_per_s"]
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "summary": summary, "runs": results}, indent=2))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2])
    else:
        main()
