"""Refusal-direction extraction vs a plain no-grad forward over the same batches, side by side.

    HF_HUB_OFFLINE=1 python benchmarks/bench_extract.py --prompts 128 --batch-size 32 --reps 3

Three sides, each over the same length-sorted, left-padded batches of chat-formatted prompts
(half ``bundled:harmful:train``, half ``bundled:harmless:train``), under ``no_grad`` in the
model's precision (CPU: fp32):

* ``forward``  -- ``model(...)``: the full CausalLM (all blocks, final norm, LM head on every
  position); what "run the model over the prompts" costs.
* ``backbone`` -- ``model.model(...)``: all blocks + final norm, no LM head.
* ``extract``  -- :func:`safeanchor.direction.extract.mean_activations`: tokenisation included,
  pre-hooks on every block slice the last token, float64 running sum, forward stopped after the
  last block's input is captured (so the last block, the final norm and the LM head never run).

Sides are interleaved batch by batch (batch 1: A B C, batch 2: B C A, ...) and the per-side
times summed, so a machine whose load changes from second to second slows all three alike;
``--reps`` repeats the whole pass and the median pass is reported. Both wall time and this
process's CPU time are recorded: on a shared machine the CPU-time ratio is the stable one
(use ``--threads 1`` so no OpenMP spin-waiting is counted as work). Memory: ``--memory`` runs extraction in fresh subprocesses for
``--memory-prompts`` (default 64 and 256) prompts and reports the peak-RSS increase over the
RSS after loading and one warm-up batch (Linux: VmHWM reset through ``/proc/self/clear_refs``);
the accumulator itself is P·L·D float64.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _records(n: int):
    from safeanchor.data import load_source

    harmful, harmless = load_source("bundled:harmful:train"), load_source("bundled:harmless:train")
    half = n // 2
    if half > min(len(harmful), len(harmless)):  # more than the bundled sets hold: repeat them
        reps = half // min(len(harmful), len(harmless)) + 1
        harmful, harmless = harmful * reps, harmless * reps
    return harmful[:half] + harmless[: n - half]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _memory_child(model_name: str, n: int, batch_size: int) -> None:
    """Print the peak-RSS increase (MiB) of extracting over ``n`` prompts, after a warm-up batch.

    The peak (VmHWM) is reset after loading and warm-up (``/proc/self/clear_refs``, Linux), so
    the figure is the extraction's own high-water mark above the resident model.
    """
    from safeanchor.direction.extract import mean_activations
    from safeanchor.models import load_model

    model, tok = load_model(model_name)
    records = _records(n)
    mean_activations(model, tok, records[:batch_size], batch_size=batch_size)  # warm-up: allocator, kernels
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    mean = mean_activations(model, tok, records, batch_size=batch_size)
    peak = _status_kib("VmHWM")
    print(json.dumps({"prompts": n, "peak_rss_increase_mib": (peak - before) / 1024, "rss_before_mib": before / 1024,
                      "accumulator_bytes": mean.numel() * mean.element_size()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--memory", action="store_true", help="also measure peak RSS for --memory-prompts")
    ap.add_argument("--no-speed", action="store_true", help="skip the speed comparison (memory only)")
    ap.add_argument("--memory-prompts", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--json", default=None, help="write results here")
    ap.add_argument("--_memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._memory_child is not None:
        _memory_child(args.model, args._memory_child, args.batch_size)
        return

    results: dict = {"model": args.model, "batch_size": args.batch_size}
    if not args.no_speed:
        results.update(_speed(args))
    if args.memory:
        results["memory"] = []
        for n in args.memory_prompts:
            out = subprocess.run([sys.executable, __file__, "--model", args.model, "--batch-size", str(args.batch_size),
                                  "--_memory-child", str(n)], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            results["memory"].append(row)
            print(f"  memory: {n} prompts -> peak RSS +{row['peak_rss_increase_mib']:.1f} MiB over "
                  f"{row['rss_before_mib']:.0f} MiB (accumulator {row['accumulator_bytes'] / 1024:.0f} KiB)", flush=True)
    if args.json:
        from safeanchor.io import provenance, write_json

        write_json(args.json, {**results, "provenance": provenance()})


def _speed(args) -> dict:
    import torch

    from safeanchor.direction.extract import encode_batches, mean_activations, model_device
    from safeanchor.models import load_model, model_precision

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    device, prec = model_device(model), model_precision(model)
    records = _records(args.prompts)
    # the batches extraction itself forms (length-sorted); each side runs exactly these
    batches = [([records[i] for i in idx], ids.to(device), mask.to(device), pos.to(device))
               for idx, ids, mask, pos in encode_batches(tok, records, batch_size=args.batch_size)]
    n_tokens = int(sum(b[2].sum() for b in batches))

    def forward(module):
        def run(batch):
            _, ids, mask, pos = batch
            with torch.no_grad(), prec.autocast_context(device):
                module(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
        return run

    sides = {
        "forward": forward(model),
        "backbone": forward(model.model),
        # from the records: tokenisation, capture and float64 accumulation all count
        "extract": lambda batch: mean_activations(model, tok, batch[0], batch_size=len(batch[0])),
    }
    names = list(sides)
    for name in names:  # untimed warm-up on the shortest batch (one-off kernel / allocator set-up)
        sides[name](batches[-1])
    times: dict[str, list[float]] = {k: [] for k in sides}
    cpu: dict[str, list[float]] = {k: [] for k in sides}
    for rep in range(args.reps):
        wall_total, cpu_total = dict.fromkeys(sides, 0.0), dict.fromkeys(sides, 0.0)
        for i, batch in enumerate(batches):
            for name in names[i % 3:] + names[: i % 3]:
                t0, c0 = time.perf_counter(), time.process_time()
                sides[name](batch)
                wall_total[name] += time.perf_counter() - t0
                cpu_total[name] += time.process_time() - c0
        for k in sides:
            times[k].append(wall_total[k])
            cpu[k].append(cpu_total[k])
        print(f"pass {rep + 1}/{args.reps}: " + ", ".join(f"{k} {wall_total[k]:.2f}s wall / {cpu_total[k]:.2f}s cpu"
                                                         for k in sides), flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    rate = {k: len(records) / v for k, v in med.items()}
    rate_cpu = {k: len(records) / v for k, v in med_cpu.items()}
    results = {"prompts": len(records), "tokens": n_tokens, "reps": args.reps, "threads": torch.get_num_threads(),
               "precision": str(prec), "median_wall_s": med, "median_cpu_s": med_cpu, "wall_s": times, "cpu_s": cpu,
               "prompts_per_s": rate, "prompts_per_cpu_s": rate_cpu,
               "ratio_extract_vs_forward": rate["extract"] / rate["forward"],
               "ratio_extract_vs_backbone": rate["extract"] / rate["backbone"],
               "cpu_ratio_extract_vs_forward": rate_cpu["extract"] / rate_cpu["forward"],
               "cpu_ratio_extract_vs_backbone": rate_cpu["extract"] / rate_cpu["backbone"]}
    print(f"{len(records)} prompts ({n_tokens} tokens), batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"median of {args.reps} passes:")
    for k in sides:
        print(f"  {k:9s} {rate[k]:7.2f} prompts/s wall ({med[k]:.2f} s) | {rate_cpu[k]:7.2f} prompts/cpu-s ({med_cpu[k]:.2f} s)")
    for base in ("forward", "backbone"):
        print(f"  extract / {base:8s} = x{results[f'ratio_extract_vs_{base}']:.2f} wall, "
              f"x{results[f'cpu_ratio_extract_vs_{base}']:.2f} cpu", flush=True)
    return results


if __name__ == "__main__":
    main()
