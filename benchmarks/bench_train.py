"""Training cost of each method against plain SFT on the embedded model, side by side in one run.

    HF_HUB_OFFLINE=1 python benchmarks/bench_train.py --steps 10 --rounds 2

Same data for every method: ``--samples`` synthetic arithmetic records padded with a worked
explanation to about ``--seq-len`` tokens, batch ``--batch-size``, LoRA (q/k/v/o, r=8), the
default precision (CPU: fp32 weights + bf16 autocast).

* step time: each method trains ``--steps`` steps in its own process (so its peak memory is its
  own); methods alternate in ``--rounds`` rounds so that load from other processes on the machine
  hits them alike. Step time is the median over all rounds of every step but each run's first,
  as wall seconds and as process CPU seconds (the work done; robust when other processes compete
  for the cores -- with ``--threads 1`` it has no spin-waiting either).
* whole run: SFT vs ProCon (cached) for ``--epochs`` epochs over the samples, timed from the
  start of ``train()`` (regularizer setup and ProCon's anchor pass included) to its end. The
  refusal direction is extracted once beforehand and loaded from its artifact, as the pipelines
  do; its extraction time is reported separately.
* peak memory: peak RSS of each step-time process (CPU) or ``max_memory_allocated`` (CUDA).
* AsFT needs an aligned/unaligned pair; its cost does not depend on the weights, so a synthetic
  "unaligned" checkpoint (the model with noise on the LoRA target weights) stands in.

Prints the ratios to SFT; ``--json`` writes every number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

METHODS = {
    "sft": {"method": "sft"},
    "procon": {"method": "procon", "alpha": 0.1},
    "procon_online": {"method": "procon", "alpha": 0.1, "regularizer_options": {"procon": {"anchor": "online"}}},
    "asft": {"method": "asft", "alpha": 1.0},
}


# ---------------------------------------------------------------------------------------------
# Preparation (parent process)
# ---------------------------------------------------------------------------------------------


def make_records(n: int, seq_len: int, tokenizer) -> list[dict]:
    """Arithmetic prompts whose responses are a worked explanation, about ``seq_len`` tokens each."""
    from safeanchor.data import Record, encode_pair
    from safeanchor.data.tasks import generate_task

    filler = (" First I read the numbers carefully, then I apply the operation the question describes, "
              "checking each intermediate result before moving on.")
    out = []
    for row in generate_task("arithmetic", "train", n=n, seed=0):
        response = f"Let me work it out step by step.{filler}"
        while len(encode_pair(tokenizer, Record(row["prompt"], response), max_length=10_000).input_ids) < seq_len:
            response += filler
        out.append({"id": row["id"], "prompt": row["prompt"], "response": response + f" The answer is {row['answer']}."})
    return out


def make_unaligned(model_name: str, folder: Path) -> str:
    """A stand-in 'unaligned' checkpoint: the model with noise on the LoRA target weights."""
    import torch

    from safeanchor.models import default_lora_targets, load_model

    if (folder / "config.json").is_file():
        return str(folder)
    model, tok = load_model(model_name, device="cpu", precision="fp32")
    targets = tuple(default_lora_targets(model))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".weight") and name.rsplit(".", 2)[-2] in targets:
                p.add_(0.01 * p.std() * torch.randn(p.shape, generator=g))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def extract(model_name: str, folder: Path) -> float:
    """Extract the original model's refusal direction (128 + 128 prompts) once; returns seconds."""
    from safeanchor.direction.extract import extract_direction
    from safeanchor.models import load_model

    model, tok = load_model(model_name)
    t0 = time.perf_counter()
    rd = extract_direction(model, tok)
    seconds = time.perf_counter() - t0
    rd.save_pretrained(folder)
    return seconds


# ---------------------------------------------------------------------------------------------
# One measured run (child process)
# ---------------------------------------------------------------------------------------------


def worker(spec: dict) -> dict:
    import resource

    import torch
    from transformers import TrainerCallback

    from safeanchor.models import load_model
    from safeanchor.train import train
    from safeanchor.train.config import config_from_dict

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])

    class Clock(TrainerCallback):
        """Wall and process CPU seconds of every optimizer step, and its non-padding tokens."""

        def __init__(self):
            self.steps: list[tuple[float, float, int]] = []
            self._start = None

        def on_step_begin(self, args, state, control, **kw):
            self._start = (time.perf_counter(), time.process_time(), state.num_input_tokens_seen)

        def on_step_end(self, args, state, control, **kw):
            wall, cpu, tokens = self._start
            self.steps.append((time.perf_counter() - wall, time.process_time() - cpu,
                               state.num_input_tokens_seen - tokens))

    model, tok = load_model(spec["model"])
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    cfg = config_from_dict(spec["config"], where=spec["name"])
    clock = Clock()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    result = train(cfg, model, tok, callbacks=[clock])
    total, total_cpu = time.perf_counter() - t0, time.process_time() - c0
    timed = clock.steps[1:] or clock.steps  # the first step pays one-off set-up
    peak = (torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    reports = {k: v for k, v in result.reports.items() if k != "data"}
    return {
        "name": spec["name"],
        "step_times": [w for w, _, _ in timed],
        "step_cpu_times": [c for _, c, _ in timed],
        "tokens_per_step": [t for _, _, t in timed],
        "total_s": total,
        "total_cpu_s": total_cpu,
        "steps": len(clock.steps),
        "peak_mib": peak,
        "rss_after_load_mib": rss_loaded,
        "anchor_pass_s": reports.get("procon", {}).get("anchor_pass_s"),
        "anchor_pass_cpu_s": reports.get("procon", {}).get("anchor_pass_cpu_s"),
        "step0_raw": {k: v.get("step0_raw") for k, v in reports.items()},
        "threads": torch.get_num_threads(),
    }


def run_child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['name']} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=10, help="steps per step-time run")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of step-time runs")
    ap.add_argument("--samples", type=int, default=48, help="training samples (whole-run: all of them each epoch)")
    ap.add_argument("--epochs", type=float, default=3.0, help="epochs of the whole-run comparison (0 = skip it)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128, help="approximate tokens per sample")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's)")
    ap.add_argument("--phases", nargs="+", default=["steps", "whole"], choices=["steps", "whole"])
    ap.add_argument("--out", default="runs/bench_train", help="scratch folder (data, direction, runs)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    from safeanchor.data import write_jsonl
    from safeanchor.models import load_tokenizer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(args.model)
    records = make_records(args.samples, args.seq_len, tok)
    data_path = out / "data.jsonl"
    write_jsonl(data_path, records)
    direction_dir = out / "direction"
    extraction_s = extract(args.model, direction_dir)
    unaligned = make_unaligned(args.model, out / "unaligned") if "asft" in args.methods else None

    def spec(name: str, run: str, **extra) -> dict:
        cfg = {**METHODS[name], "train_data": f"file:{data_path}", "max_length": args.seq_len + 32,
               "per_device_train_batch_size": args.batch_size, "report_to": "none", "save_strategy": "no",
               "progress": False, "output_dir": str(out / run), "include_num_input_tokens_seen": "non_padding",
               "logging_steps": 1000, **extra}
        opts = {k: dict(v) for k, v in cfg.get("regularizer_options", {}).items()}
        if name.startswith("procon"):
            opts.setdefault("procon", {})["direction"] = str(direction_dir)
        if name == "asft":
            opts["asft"] = {"unaligned_model": unaligned}
        cfg["regularizer_options"] = opts
        return {"name": name, "model": args.model, "config": cfg, "threads": args.threads}

    load = os.getloadavg()[0]
    step_runs: dict[str, list[dict]] = {m: [] for m in args.methods}
    for r in range(args.rounds if "steps" in args.phases else 0):
        for name in args.methods:
            res = run_child(spec(name, f"steps_{name}_{r}", max_steps=args.steps))
            step_runs[name].append(res)
            print(f"round {r}: {name:14s} median step {statistics.median(res['step_times']):.3f} s, "
                  f"peak {res['peak_mib']:.0f} MiB", flush=True)

    summary: dict[str, dict] = {}
    for name, runs in step_runs.items():
        if not runs:
            continue
        times = [t for run in runs for t in run["step_times"]]
        cpu = [t for run in runs for t in run["step_cpu_times"]]
        tokens = [t for run in runs for t in run["tokens_per_step"]]
        summary[name] = {"step_s": statistics.median(times), "step_cpu_s": statistics.median(cpu),
                         "tokens_per_s": sum(tokens) / sum(times),
                         "peak_mib": max(run["peak_mib"] for run in runs), "n_steps_timed": len(times),
                         "step0_raw": runs[0]["step0_raw"]}
    whole = {}
    if args.epochs > 0 and "whole" in args.phases:
        for r in range(args.rounds):
            for name in ("sft", "procon"):
                res = run_child(spec(name, f"whole_{name}_{r}", num_train_epochs=args.epochs))
                run = {k: res[k] for k in ("total_s", "total_cpu_s", "steps", "anchor_pass_s", "anchor_pass_cpu_s")}
                whole.setdefault(name, []).append(run)
                print(f"whole run {r}: {name:8s} {res['total_s']:.1f} s wall, {res['total_cpu_s']:.1f} s CPU "
                      f"for {res['steps']} steps", flush=True)

    print(f"\nembedded model {args.model}, {args.samples} samples x ~{args.seq_len} tokens, batch {args.batch_size}, "
          f"LoRA, precision auto, threads {args.threads or 'default'}, load average at start {load:.1f}")
    if summary:
        print_steps(summary)
    if whole:
        for key in ("total_s", "total_cpu_s"):
            ratios = [p[key] / s[key] for s, p in zip(whole["sft"], whole["procon"])]
            whole[f"procon_ratio_{key}"] = ratios
            print(f"whole {args.epochs:g}-epoch run ({whole['sft'][0]['steps']} steps), ProCon cached incl. anchor "
                  f"pass / SFT, {'wall' if key == 'total_s' else 'CPU'}: " + ", ".join(f"{x:.3f}" for x in ratios)
                  + f" (SFT {', '.join(f'{s[key]:.0f}' for s in whole['sft'])} s; ProCon "
                  + ", ".join(f"{p[key]:.0f}" for p in whole["procon"]) + " s)")
        print("anchor pass: " + ", ".join(f"{p['anchor_pass_s']:.1f} s wall / {p['anchor_pass_cpu_s']:.1f} s CPU"
                                          for p in whole["procon"]))
    print(f"direction extraction (128 + 128 prompts, once, loaded by every ProCon run): {extraction_s:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "load_average": load, "steps": summary,
                                               "whole_run": whole, "direction_extraction_s": extraction_s,
                                               "raw": step_runs}, indent=2))


def print_steps(summary: dict[str, dict]) -> None:
    sft = summary["sft"]
    print(f"{'method':15s} {'step s':>8s} {'x SFT':>7s} {'CPU s':>8s} {'x SFT':>7s} {'tokens/s':>9s} "
          f"{'peak MiB':>9s} {'x SFT':>7s}")
    for name, s in summary.items():
        s["step_ratio"] = s["step_s"] / sft["step_s"]
        s["cpu_ratio"] = s["step_cpu_s"] / sft["step_cpu_s"]
        s["peak_ratio"] = s["peak_mib"] / sft["peak_mib"]
        print(f"{name:15s} {s['step_s']:8.3f} {s['step_ratio']:7.3f} {s['step_cpu_s']:8.3f} {s['cpu_ratio']:7.3f} "
              f"{s['tokens_per_s']:9.1f} {s['peak_mib']:9.0f} {s['peak_ratio']:7.3f}")


if __name__ == "__main__":
    main()
