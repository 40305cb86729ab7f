"""Training cost of each method against plain SFT on the embedded model, side by side in one run.

    HF_HUB_OFFLINE=1 python benchmarks/bench_train.py                 # 48 samples x 3 epochs
    HF_HUB_OFFLINE=1 python benchmarks/bench_train.py --steps 6       # a few minutes

Same data for every method: ``--samples`` synthetic arithmetic records padded with a worked
explanation to about ``--seq-len`` tokens, batch ``--batch-size``, LoRA (q/k/v/o, r=8), the
default precision (CPU: fp32).

* time: every method trains in the same process, one model each, and they take turns step by
  step (SFT step, ProCon step, ..., SFT step, ...), so load from other processes on the machine
  hits them alike. Step time = median over every step but the first (wall seconds, and CPU
  seconds of the process). Whole run = the regularizer setup (ProCon: its anchor pass) plus all
  steps, for ``--epochs`` epochs over the samples (or ``--steps`` steps). The refusal direction is
  extracted once beforehand and loaded from its artifact, as the pipelines do; its extraction
  time is reported separately.
* peak memory: each method again in its own process for ``--memory-steps`` steps: peak RSS (CPU)
  or ``max_memory_allocated`` (CUDA), ``--memory-repeats`` times, methods interleaved; the
  figure is the median per method (the spread is printed: CPU peak RSS varies by a few percent
  from one identical run to the next, with glibc's heap slack; ``--mmap-threshold 65536`` makes
  large blocks go back to the OS on free, so the peak follows the live tensors). The peak right
  after the regularizer setup (ProCon: the anchor pass) is reported separately.
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
import threading
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
# Preparation
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
# Interleaved timing: every method's trainer runs in its own thread, one step at a time
# ---------------------------------------------------------------------------------------------


class Turns:
    """Round-robin baton: only the holder computes; the others wait (no CPU)."""

    def __init__(self, names: list[str]):
        self.order = list(names)
        self.current = 0
        self.active = set(names)
        self.cv = threading.Condition()

    def wait(self, name: str) -> None:
        with self.cv:
            self.cv.wait_for(lambda: self.order[self.current] == name)

    def pass_on(self) -> None:
        """Called by the holder: the next active method's turn."""
        with self.cv:
            self._advance()

    def finish(self, name: str) -> None:
        """``name`` is done; if it holds the baton, hand it on."""
        with self.cv:
            self.active.discard(name)
            if self.order[self.current] == name:
                self._advance()

    def _advance(self) -> None:
        for _ in range(len(self.order)):
            self.current = (self.current + 1) % len(self.order)
            if self.order[self.current] in self.active:
                break
        self.cv.notify_all()


def interleaved(specs: dict[str, dict]) -> dict[str, dict]:
    """Train every spec's config in turns; per method: setup time, step times, tokens per step."""
    from transformers import TrainerCallback

    from safeanchor.models import load_model
    from safeanchor.train import train
    from safeanchor.train.config import config_from_dict
    from safeanchor.train.trainer import SafeTrainer

    turns = Turns(list(specs))
    results: dict[str, dict] = {name: {"steps": []} for name in specs}
    errors: list[BaseException] = []
    setup = SafeTrainer.setup_regularizers

    def timed_setup(self, *a, **kw):  # the setup (ProCon: anchor pass) runs in its own turn, timed
        name = self.args.run_name
        t0, c0 = time.perf_counter(), time.process_time()
        out = setup(self, *a, **kw)
        results[name]["setup_s"], results[name]["setup_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
        return out

    class Clock(TrainerCallback):
        def __init__(self, name: str):
            self.name = name

        def on_train_begin(self, args, state, control, **kw):
            turns.pass_on()

        def on_step_begin(self, args, state, control, **kw):
            turns.wait(self.name)
            self._start = (time.perf_counter(), time.process_time(), state.num_input_tokens_seen)

        def on_step_end(self, args, state, control, **kw):
            wall, cpu, tokens = self._start
            results[self.name]["steps"].append((time.perf_counter() - wall, time.process_time() - cpu,
                                                state.num_input_tokens_seen - tokens))
            turns.pass_on()

    models = {name: load_model(spec["model"]) for name, spec in specs.items()}

    def run(name: str) -> None:
        try:
            turns.wait(name)
            model, tok = models.pop(name)
            train(config_from_dict({**specs[name]["config"], "run_name": name}, where=name), model, tok,
                  callbacks=[Clock(name)])
        except BaseException as e:  # surface it in the main thread
            errors.append(e)
        finally:
            turns.finish(name)

    SafeTrainer.setup_regularizers = timed_setup
    try:
        threads = [threading.Thread(target=run, args=(name,), name=name) for name in specs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        SafeTrainer.setup_regularizers = setup
    if errors:
        raise errors[0]
    return results


# ---------------------------------------------------------------------------------------------
# Peak memory: one process per method
# ---------------------------------------------------------------------------------------------


def memory_worker(spec: dict) -> dict:
    import resource

    import torch

    from safeanchor.models import load_model
    from safeanchor.train import train
    from safeanchor.train.config import config_from_dict

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    from safeanchor.train.trainer import SafeTrainer

    def peak_now() -> float:
        return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else _peak_rss_mib(resource)

    model, tok = load_model(spec["model"])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    setup_peak = {}
    orig_setup = SafeTrainer.setup_regularizers

    def setup(self, *a, **kw):
        out = orig_setup(self, *a, **kw)
        setup_peak.setdefault("mib", peak_now())  # peak up to the end of the setup (ProCon: anchor pass)
        return out

    SafeTrainer.setup_regularizers = setup
    train(config_from_dict(spec["config"], where=spec["name"]), model, tok)
    return {"name": spec["name"], "peak_mib": peak_now(), "setup_peak_mib": setup_peak.get("mib")}


def _peak_rss_mib(resource) -> float:
    """Peak RSS of this process image. ``VmHWM`` (Linux) belongs to the address space created by
    exec; ``ru_maxrss`` is not usable here: Linux carries the parent's peak over fork + exec, and
    the parent holds every timing model at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(spec: dict, mmap_threshold: int | None = None) -> dict:
    env = dict(os.environ)
    if mmap_threshold:
        # glibc serves allocations >= this size with mmap and unmaps them on free, so peak RSS
        # follows the live tensors instead of whatever heap slack the allocation order left behind
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    proc = subprocess.run([sys.executable, __file__, "--memory-worker", json.dumps(spec)], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['name']} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--samples", type=int, default=48, help="training samples")
    ap.add_argument("--epochs", type=float, default=3.0, help="epochs of the whole run")
    ap.add_argument("--steps", type=int, default=None, help="stop every run after this many steps (quick mode)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128, help="approximate tokens per sample")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--memory-steps", type=int, default=2, help="steps per peak-memory run (0 = skip)")
    ap.add_argument("--memory-repeats", type=int, default=3, help="peak-memory runs per method (median reported)")
    ap.add_argument("--mmap-threshold", type=int, default=None,
                    help="CPU: MALLOC_MMAP_THRESHOLD_ for the memory runs (e.g. 65536), so peak RSS tracks live "
                         "tensors rather than allocator slack; default: glibc's own (noisy)")
    ap.add_argument("--memory-only", action="store_true", help="only the peak-memory runs (insensitive to load)")
    ap.add_argument("--out", default="runs/bench_train", help="scratch folder (data, direction, runs)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_worker:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))))
        return

    import torch

    from safeanchor.data import write_jsonl
    from safeanchor.models import load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    methods = ["sft", *[m for m in args.methods if m != "sft"]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(args.model)
    data_path = out / "data.jsonl"
    write_jsonl(data_path, make_records(args.samples, args.seq_len, tok))
    direction_dir = out / "direction"
    extraction_s = extract(args.model, direction_dir)
    unaligned = make_unaligned(args.model, out / "unaligned") if "asft" in methods else None

    def spec(name: str, run: str, **extra) -> dict:
        cfg = {**METHODS[name], "train_data": f"file:{data_path}", "max_length": args.seq_len + 32,
               "per_device_train_batch_size": args.batch_size, "num_train_epochs": args.epochs,
               "report_to": "none", "save_strategy": "no", "progress": False, "output_dir": str(out / run),
               "include_num_input_tokens_seen": "non_padding", "logging_steps": 1000, **extra}
        if args.steps:
            cfg["max_steps"] = args.steps
        opts = {k: dict(v) for k, v in cfg.get("regularizer_options", {}).items()}
        if name.startswith("procon"):
            opts.setdefault("procon", {})["direction"] = str(direction_dir)
        if name == "asft":
            opts["asft"] = {"unaligned_model": unaligned}
        cfg["regularizer_options"] = opts
        return {"name": name, "model": args.model, "config": cfg, "threads": args.threads}

    load = os.getloadavg()[0]

    def measure_memory() -> dict[str, dict]:
        runs: dict[str, list[dict]] = {name: [] for name in methods}
        for _ in range(max(args.memory_repeats, 1)):
            for name in methods:  # interleaved, so drift in the machine's state hits all alike
                runs[name].append(run_child(spec(name, f"mem_{name}", max_steps=max(args.memory_steps, 1)),
                                            args.mmap_threshold))
                r = runs[name][-1]
                print(f"  run: {name:14s} peak {r['peak_mib']:.0f} MiB (after setup {r['setup_peak_mib'] or 0:.0f})",
                      flush=True)
        out = {}
        for name, rs in runs.items():
            peaks = [r["peak_mib"] for r in rs]
            setups = [r["setup_peak_mib"] for r in rs if r.get("setup_peak_mib") is not None]
            out[name] = {"peak_mib": statistics.median(peaks), "peak_min_mib": min(peaks), "peak_max_mib": max(peaks),
                         "setup_peak_mib": statistics.median(setups) if setups else None, "runs": peaks}
        return out

    def print_memory(mem: dict[str, dict]) -> None:
        what = "max_memory_allocated" if torch.cuda.is_available() else "peak RSS (VmHWM)"
        alloc = f", MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}" if args.mmap_threshold else ""
        print(f"peak memory, {what}{alloc}, median of {max(args.memory_repeats, 1)} runs of "
              f"{max(args.memory_steps, 1)} steps:")
        for name, m in mem.items():
            setup_peak = "-" if m["setup_peak_mib"] is None else f"{m['setup_peak_mib']:.0f}"
            print(f"  {name:14s} {m['peak_mib']:7.0f} MiB  x SFT {m['peak_mib'] / mem['sft']['peak_mib']:.3f}  "
                  f"(runs {', '.join(f'{p:.0f}' for p in m['runs'])}; peak after setup {setup_peak} MiB)", flush=True)

    if args.memory_only:
        mem = measure_memory()
        print_memory(mem)
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "memory": mem}, indent=2))
        return
    timing = interleaved({name: spec(name, f"time_{name}") for name in methods})
    mem = measure_memory() if args.memory_steps else {}
    memory = {name: m["peak_mib"] for name, m in mem.items()}

    rows = {}
    for name in methods:
        steps = timing[name]["steps"]
        timed = steps[1:] or steps  # the first step pays one-off set-up
        rows[name] = {
            "step_s": statistics.median(w for w, _, _ in timed),
            "step_cpu_s": statistics.median(c for _, c, _ in timed),
            "tokens_per_s": sum(t for *_, t in timed) / sum(w for w, _, _ in timed),
            "setup_s": timing[name].get("setup_s", 0.0),
            "setup_cpu_s": timing[name].get("setup_cpu_s", 0.0),
            "run_s": timing[name].get("setup_s", 0.0) + sum(w for w, _, _ in steps),
            "run_cpu_s": timing[name].get("setup_cpu_s", 0.0) + sum(c for _, c, _ in steps),
            "n_steps": len(steps),
            "peak_mib": memory.get(name),
        }
    sft = rows["sft"]
    for r in rows.values():
        for key in ("step_s", "step_cpu_s", "run_s", "run_cpu_s", "peak_mib"):
            r[f"{key}_x_sft"] = r[key] / sft[key] if r[key] is not None and sft[key] else None
    # Every method trains on the same batches in the same order (same seed, same data), and step
    # i of each method runs right after step i of the others: the per-step ratio to SFT's step i
    # cancels both the batch's size and the machine's momentary load. Its median is the step
    # figure; the run figure is setup + SFT's steps scaled by it.
    sft_steps = timing["sft"]["steps"]
    for name, r in rows.items():
        pairs = list(zip(timing[name]["steps"], sft_steps))[1:] or list(zip(timing[name]["steps"], sft_steps))
        r["paired_step_x_sft"] = statistics.median(m[0] / s_[0] for m, s_ in pairs)
        r["paired_step_cpu_x_sft"] = statistics.median(m[1] / s_[1] for m, s_ in pairs)
        sft_total = sum(w for w, _, _ in sft_steps)
        r["paired_run_x_sft"] = (r["setup_s"] + sft_total * r["paired_step_x_sft"]) / sft_total

    n = sft["n_steps"]
    print(f"\nembedded model {args.model}: {args.samples} samples x ~{args.seq_len} tokens, batch {args.batch_size}, "
          f"{n} steps ({'--steps' if args.steps else f'{args.epochs:g} epochs'}), LoRA q/k/v/o r=8, precision auto, "
          f"torch threads {torch.get_num_threads()}, load average at start {load:.1f}")
    print(f"{'method':14s} {'step s':>7s} {'xSFT':>6s} {'CPU s':>7s} {'xSFT':>6s} {'tok/s':>7s} "
          f"{'run s':>7s} {'xSFT':>6s} {'run CPU':>8s} {'xSFT':>6s} {'setup s':>8s} {'peak MiB':>9s} {'xSFT':>6s}")
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for name, r in rows.items():
        print(f"{name:14s} {r['step_s']:7.2f} {r['step_s_x_sft']:6.3f} {r['step_cpu_s']:7.2f} "
              f"{r['step_cpu_s_x_sft']:6.3f} {r['tokens_per_s']:7.1f} {r['run_s']:7.1f} {r['run_s_x_sft']:6.3f} "
              f"{r['run_cpu_s']:8.1f} {r['run_cpu_s_x_sft']:6.3f} {r['setup_s']:8.1f} "
              f"{fmt(r['peak_mib'], '9.0f')} {fmt(r['peak_mib_x_sft'], '6.3f')}")
    print("run = setup (ProCon cached: its anchor pass) + every step; step = median step without the first")
    print("paired (same batch, consecutive): " + "; ".join(
        f"{name} step x{r['paired_step_x_sft']:.3f} (CPU x{r['paired_step_cpu_x_sft']:.3f}), run x{r['paired_run_x_sft']:.3f}"
        for name, r in rows.items() if name != "sft"))
    print(f"direction extraction (128 + 128 prompts, once, loaded by every ProCon run): {extraction_s:.1f} s")
    if mem:
        print_memory(mem)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "load_average": load, "rows": rows, "memory": mem,
                                               "direction_extraction_s": extraction_s,
                                               "raw": {k: v["steps"] for k, v in timing.items()}}, indent=2))


if __name__ == "__main__":
    main()
