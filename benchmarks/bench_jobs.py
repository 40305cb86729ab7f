"""``safeanchor bench --jobs 2`` against ``--jobs 1`` on this CPU: the same bench runs, side by side.

    HF_HUB_OFFLINE=1 python benchmarks/bench_jobs.py --json bench_jobs.json      # ~10 min idle, 2 cores

A small bench on the embedded start model (plain SFT, ``--runs`` seeds, benign; training and
evaluation sized by the options below) is prepared once (start model, direction, data, the start
model's evaluation), copied twice, and its trained runs are then done in each copy: once one at a
time in this process (all threads), once by two worker processes of one thread each. The order of
the two alternates over ``--repeats``, so load on the machine hits them alike. Reported: wall
seconds of the runs (train + evaluate, all of them), the ratio, and whether each run's answers and
training losses came out the same in both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4, help="trained runs (seeds) per side")
    ap.add_argument("--train-samples", type=int, default=32)
    ap.add_argument("--eval-limit", type=int, default=16, help="prompts per safety source")
    ap.add_argument("--task-items", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from safeanchor.pipelines.experiment import ExperimentConfig, planned_runs, run_experiment

    sizes = dict(scenarios=["benign"], seeds=list(range(args.runs)), train_samples=args.train_samples,
                 epochs=1.0, batch_size=4, eval_limit=args.eval_limit, task_eval_samples=args.task_items,
                 max_new_tokens=24, gen_batch_size=64, drift=False, direction_samples=32)
    cfg = ExperimentConfig(methods=["start", "sft"], **sizes)
    work = Path(tempfile.mkdtemp(prefix="bench_jobs_"))
    try:
        base = work / "base"
        run_experiment(ExperimentConfig(methods=["start"], **sizes), base)  # the shared stages, once
        threads = torch.get_num_threads()
        walls: dict[int, list[float]] = {1: [], 2: []}
        same = True
        for rep in range(args.repeats):
            outs = {}
            for jobs in ((1, 2) if rep % 2 == 0 else (2, 1)):
                out = work / f"r{rep}-jobs{jobs}"
                shutil.copytree(base, out)
                t0 = time.perf_counter()
                run_experiment(cfg, out, jobs=jobs)
                walls[jobs].append(time.perf_counter() - t0)
                outs[jobs] = out
            for run in planned_runs(cfg):
                ev = [json.loads((outs[j] / "05_eval" / run.name / "eval.json").read_text())["records"] for j in (1, 2)]
                lg = [json.loads((outs[j] / "04_train" / run.name / "train_log.json").read_text())["steps"] for j in (1, 2)]
                same &= ([r["answer"] for r in ev[0]] == [r["answer"] for r in ev[1]]
                         and [s["loss"] for s in lg[0]] == [s["loss"] for s in lg[1]])
        one, two = statistics.median(walls[1]), statistics.median(walls[2])
        result = {"runs": args.runs, "sizes": sizes, "threads_one_process": threads,
                  "wall_s_jobs1": walls[1], "wall_s_jobs2": walls[2], "speedup": round(one / two, 3),
                  "same_answers_and_losses": same}
        print(json.dumps(result, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
