"""Batched vs one-prompt-at-a-time generation on the embedded model, side by side in one run.

    HF_HUB_OFFLINE=1 python benchmarks/bench_generate.py --prompts 64 --new-tokens 48 --batch-size 32

Both paths use :func:`safeanchor.evaluate.generate` (same prompts, greedy, chat template); the
one-at-a-time path is ``batch_size=1``. They run interleaved, chunk by chunk, so a busy machine
slows both alike. Each precision gets one untimed warm-up batch first (the
first call pays one-off kernel set-up). ``--precisions`` runs each of auto (CPU: fp32), fp32,
bf16 (bf16 weights); the fp32-vs-autocast comparison is ``bench_precision.py``. Prints prompts/s and the speed-up; ``--json``
writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--single", type=int, default=None, help="prompts for the one-at-a-time path (default: all)")
    ap.add_argument("--precisions", nargs="+", default=["auto"], help="auto, fp32, bf16")
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args()

    import torch

    from safeanchor.data import load_source
    from safeanchor.evaluate.generate import generate
    from safeanchor.models import load_model

    records = (load_source("bundled:harmful:test") + load_source("bundled:harmless:test"))[: args.prompts]
    single_n = args.single or len(records)
    results = {"model": args.model, "prompts": len(records), "single_prompts": single_n, "new_tokens": args.new_tokens,
               "batch_size": args.batch_size, "threads": torch.get_num_threads(), "runs": []}
    for precision in args.precisions:
        model, tok = load_model(args.model, precision=precision)
        generate(model, tok, records[: args.batch_size], max_new_tokens=4, batch_size=args.batch_size, progress=False)

        # Interleaved per chunk (one batch, then the same prompts one by one), so both paths see the
        # same machine load even when other processes come and go.
        batched: list[str] = []
        single: list[str] = []
        t_batched = t_single = 0.0
        for start in range(0, len(records), args.batch_size):
            chunk = records[start: start + args.batch_size]
            t0 = time.perf_counter()
            batched += generate(model, tok, chunk, max_new_tokens=args.new_tokens, batch_size=args.batch_size,
                                progress=False)
            t_batched += time.perf_counter() - t0
            todo = chunk[: max(0, single_n - len(single))]
            t0 = time.perf_counter()
            single += [generate(model, tok, [r], max_new_tokens=args.new_tokens, batch_size=1, progress=False)[0]
                       for r in todo]
            t_single += time.perf_counter() - t0

        run = {"precision": precision, "batched_prompts_per_s": len(records) / t_batched,
               "single_prompts_per_s": single_n / t_single, "batched_s": t_batched, "single_s": t_single,
               "same_answers": sum(a == b for a, b in zip(batched, single)) / single_n}
        run["speedup"] = run["batched_prompts_per_s"] / run["single_prompts_per_s"]
        results["runs"].append(run)
        print(f"[{precision}] batched (bs={args.batch_size}): {run['batched_prompts_per_s']:.2f} prompts/s "
              f"({t_batched:.1f}s for {len(records)}) | one at a time: {run['single_prompts_per_s']:.2f} prompts/s "
              f"({t_single:.1f}s for {single_n}) | speed-up x{run['speedup']:.2f} | "
              f"identical answers {100 * run['same_answers']:.0f}%", flush=True)
        del model
    if args.json:
        from safeanchor.io import provenance, write_json

        write_json(args.json, {**results, "provenance": provenance()})


if __name__ == "__main__":
    main()
