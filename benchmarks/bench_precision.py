"""CPU precision choice: fp32 vs fp32 weights + bf16 autocast, side by side in one process.

    HF_HUB_OFFLINE=1 python benchmarks/bench_precision.py

Two measurements on the embedded model, the two precisions taking turns (A, B, A, B, ...) so
load from other processes hits both alike:

* a LoRA training step (r=8, q/k/v/o, AdamW) on ``--batch-size`` x ``--seq-len`` random tokens;
* batched greedy generation (``--gen-prompts`` bundled harmless prompts, ``--new-tokens``).

Prints medians and the ratio autocast / fp32 (> 1 means autocast is slower). ``models.choose_precision``
uses the result for its CPU default.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--steps", type=int, default=5, help="training steps per precision and length (first dropped)")
    ap.add_argument("--gen-prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--gen-reps", type=int, default=2)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16-autocast"], choices=["fp32", "bf16-autocast"],
                    help="fp32 alone is a quick probe of the machine's speed (bf16 autocast is very slow on a CPU "
                         "without AVX-512 bf16)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    from safeanchor.data import load_source
    from safeanchor.evaluate.generate import generate
    from safeanchor.models import Precision, attach_lora, load_model

    known = {"fp32": Precision(torch.float32, None), "bf16-autocast": Precision(torch.float32, torch.bfloat16)}
    precisions = {name: known[name] for name in args.precisions}
    model, tok = load_model(args.model, device="cpu", precision="fp32")
    results: dict = {"threads": torch.get_num_threads(), "cpu": cpu_info(), "train": {}, "generate": {}}

    prompts = load_source("bundled:harmless:test", limit=args.gen_prompts)
    gen_times: dict[str, list[float]] = {p: [] for p in precisions}
    for _ in range(args.gen_reps):
        for name, prec in precisions.items():
            model.safeanchor_precision = prec
            t = time.perf_counter()
            generate(model, tok, prompts, max_new_tokens=args.new_tokens, batch_size=args.gen_prompts,
                     progress=False)
            gen_times[name].append(time.perf_counter() - t)
    for name, ts in gen_times.items():
        results["generate"][name] = {"median_s": statistics.median(ts), "prompts_per_s": args.gen_prompts / statistics.median(ts)}

    peft_model = attach_lora(model, r=8, alpha=16, dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], seed=0)
    peft_model.train()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-5)
    g = torch.Generator().manual_seed(0)
    for T in args.seq_len:
        x = torch.randint(0, len(tok), (args.batch_size, T), generator=g)
        times: dict[str, list[float]] = {p: [] for p in precisions}
        for _ in range(args.steps):
            for name, prec in precisions.items():
                t = time.perf_counter()
                with prec.autocast_context("cpu"):
                    loss = peft_model(input_ids=x, labels=x).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                times[name].append(time.perf_counter() - t)
        results["train"][T] = {name: {"median_step_s": statistics.median(ts[1:]),
                                      "tokens_per_s": args.batch_size * T / statistics.median(ts[1:])}
                               for name, ts in times.items()}

    print(f"threads: {results['threads']}; cpu: {results['cpu']}")
    for T, row in results["train"].items():
        line = f"LoRA step {args.batch_size}x{T}: " + ", ".join(f"{n} {row[n]['median_step_s']:.2f} s" for n in precisions)
        if len(precisions) == 2:
            line += f" -> autocast/fp32 {row['bf16-autocast']['median_step_s'] / row['fp32']['median_step_s']:.2f}x"
        print(line)
    gen = results["generate"]
    line = (f"generate {args.gen_prompts} prompts x {args.new_tokens} tokens (batch {args.gen_prompts}): "
            + ", ".join(f"{n} {gen[n]['median_s']:.1f} s" for n in precisions))
    if len(precisions) == 2:
        line += f" -> autocast/fp32 {gen['bf16-autocast']['median_s'] / gen['fp32']['median_s']:.2f}x"
    print(line)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


def cpu_info() -> dict:
    """The CPU's model name, core count and vector extensions (what decides fp32/bf16 speed)."""
    info: dict = {"cores": os.cpu_count()}
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return info
    for line in text.splitlines():
        if line.startswith("model name") and "model" not in info:
            info["model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags") and "vector" not in info:
            flags = line.split(":", 1)[1].split()
            info["vector"] = sorted(f for f in flags if f.startswith(("avx", "amx")))
    return info


if __name__ == "__main__":
    main()
