"""The safety-alignment recipe: turn an instruct model that does not refuse into a safety-aligned start.

Four numbered stages in the shared stage runner (:class:`~safeanchor.pipelines.stages.Stages`),
under ``<out>/alignment/``; the merged model is the folder ``<out>`` itself:

1. ``1_data``  -- harmful train prompts paired deterministically with bundled refusals, plus
   harmless train prompts (borderline ones included, so the model does not learn to refuse
   "kill a process") answered by the base model itself (greedy), so helpful behaviour is
   kept rather than rewritten.
2. ``2_train`` -- LoRA SFT on the mix (loss on response tokens only) plus the method
   ``refusal_decision`` (:mod:`safeanchor.methods.refusal_decision`) on the first response
   token, trained by the one :class:`~safeanchor.train.trainer.SafeTrainer`, seeded.
3. ``3_merge`` -- ``merge_and_unload`` into a full model, saved as safetensors + tokenizer.
4. ``4_eval``  -- refusal rates (keyword judge) of the merged model on harmful / harmless prompts
   of the evaluation splits, stored with provenance in ``<out>/alignment.json``.

The build runs in ``.<out>.partial`` beside ``<out>`` and is renamed into place when every stage
is done: an interrupted build resumes from its last finished stage, and nothing half-built ever
sits at ``<out>``. The defaults build ``embedded:smollm2-135m-safe`` (recipe ``align-3``); how
they were tuned, with the measured rates of every step, is in ``docs/alignment_recipe.md``.

>>> # from safeanchor.pipelines.safety_alignment import build_safe_model
>>> # info = build_safe_model("embedded:smollm2-135m-instruct", "runs/safe-smollm2")
>>> # info["eval"]["test"]["harmful_refusal_rate"]
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..io import atomic_dir, read_json, write_json
from ..models import BUILD_INFO_FILE
from .alignment_steps import (AlignConfig, DEFAULT_BASE, alignment_features, build_training_records, refusal_eval,
                              train_adapter, training_config)

log = logging.getLogger(__name__)

# The recipe's version, stored in alignment.json: a cached embedded:smollm2-135m-safe built by an
# older recipe is rebuilt by ensure_safe_start_model (the demo's first stage). Bump it when the
# defaults change.
RECIPE = "align-3"  # align-2: the same without the decision loss (test 89.0% / 19.0%);
# align-1: bundled prompts only, 2 epochs, harmless x2 (test 86.8% / 17.9%)
STAGE_DIR = "alignment"
SAFE_EMBEDDED = "smollm2-135m-safe"
# wall seconds of the default build on a 2-core CPU (the fresh-clone demo run, BENCHMARKS.md)
BUILD_SECONDS = 642.0


# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------

PARTIAL_CONFIG = "recipe.json"  # in <partial>/alignment/: what a resumed build must match


def run_stages(base: str, work: Path, cfg: AlignConfig) -> dict[str, Any]:
    """The four stages into ``work`` (resumable); returns the content of ``alignment.json``."""
    import torch

    from ..data import read_records, write_jsonl
    from ..io import provenance
    from ..models import load_model, model_fingerprint
    from .stages import Stages

    stage_root = work / STAGE_DIR
    stages = Stages(stage_root)

    def data(d: Path) -> dict[str, Any]:
        torch.manual_seed(cfg.seed)
        model, tokenizer = load_model(base, device=cfg.device, precision=cfg.precision)
        records, counts = build_training_records(model, tokenizer, cfg)
        write_jsonl(d / "train_data.jsonl", [r.to_dict() for r in records])
        log.info("alignment data: %s", counts)
        return {"counts": counts, "base_fingerprint": model_fingerprint(model)}

    def train(d: Path) -> dict[str, Any]:
        model, tokenizer = load_model(base, device=cfg.device, precision=cfg.precision)
        records = read_records(stage_root / "1_data" / "train_data.jsonl", require_response=True)
        with tempfile.TemporaryDirectory(prefix="trainer-", dir=d) as tmp:
            peft_model, train_log = train_adapter(model, tokenizer, records, cfg, Path(tmp), base=base)
        peft_model.save_pretrained(str(d / "adapter"))
        write_json(d / "train_log.json", train_log)
        return {"steps": train_log["steps"], "train_loss": train_log["train_loss"]}

    def merge(d: Path) -> dict[str, Any]:
        model, tokenizer = load_model(base, device=cfg.device, precision=cfg.precision,
                                      adapter=str(stage_root / "2_train" / "adapter"))
        merged = model.merge_and_unload()
        merged.eval()
        merged.save_pretrained(work, safe_serialization=True)  # the recipe's product: the folder itself
        tokenizer.save_pretrained(work)
        return {"aligned_fingerprint": model_fingerprint(merged)}

    def evaluate(d: Path) -> dict[str, Any]:
        merged, tokenizer = load_model(str(work), device=cfg.device, precision=cfg.precision)
        return {"rates": refusal_eval(merged, tokenizer, cfg, d),
                "device": str(next(merged.parameters()).device)}

    t0, c0 = time.perf_counter(), time.process_time()
    summaries = {name: stages.run(name, fn) for name, fn in
                 (("1_data", data), ("2_train", train), ("3_merge", merge), ("4_eval", evaluate))}
    timings: dict[str, float] = {}
    for name, summary in summaries.items():
        timings[f"{name}_s"] = summary["seconds"]
        timings[f"{name}_cpu_s"] = summary["cpu_seconds"]
    timings["total_s"] = time.perf_counter() - t0  # this invocation (a resumed build: its remaining stages)
    timings["total_cpu_s"] = time.process_time() - c0
    counts = summaries["1_data"]["counts"]
    rates = summaries["4_eval"]["rates"]
    info = {
        "stage": "alignment",
        "recipe": RECIPE,
        "base_model": base,
        "base_fingerprint": summaries["1_data"]["base_fingerprint"],
        "aligned_fingerprint": summaries["3_merge"]["aligned_fingerprint"],
        "config": asdict(cfg),
        "data": {"harmful_source": cfg.harmful_source, "extra_harmful_source": cfg.extra_harmful_source,
                 "harmless_source": cfg.harmless_source,
                 "refusals_source": cfg.refusals_source, **counts},
        "train": read_json(stage_root / "2_train" / "train_log.json"),
        "eval": rates,
        "judge": {"name": "keyword", "mode": "prefix"},
        "stages": [f"{STAGE_DIR}/{name}" for name in summaries],
        "timings": timings,
        "provenance": provenance(device=summaries["4_eval"]["device"], seed=cfg.seed),
    }
    write_json(work / BUILD_INFO_FILE, info)
    for split, row in rates.items():
        log.info("aligned model, %s: harmful refused %.1f%%, harmless refused %.1f%%",
                 split, 100 * row["harmful_refusal_rate"], 100 * row["harmless_refusal_rate"])
    return info


def build_safe_model(base: str = DEFAULT_BASE, out_dir: str | Path = "runs/safe-model", *, force: bool = False,
                     **opts: Any) -> dict[str, Any]:
    """Run the alignment recipe on ``base`` and write the merged model to ``out_dir``.

    ``opts`` are :class:`AlignConfig` fields, validated before any work. The build runs in
    ``.<out_dir>.partial`` beside ``out_dir`` and resumes there after an interruption (with the
    same options; other options restart it); the finished folder is renamed into place. An
    existing ``out_dir`` is an error unless ``force``, and is then replaced only after the new
    build succeeded. Returns the content of ``alignment.json``.

    >>> # info = build_safe_model("embedded:smollm2-135m-instruct", "runs/safe", epochs=1)
    >>> # info["eval"]["test"]["harmful_refusal_rate"]   # measured, e.g. 0.95
    """
    from ..models import is_built

    from ..io import claim_output_folder

    cfg = AlignConfig.from_options(**opts)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} already exists{' (a built model)' if is_built(out) else ''}; "
                                  "pass force=True (--force) to rebuild it")
        if not is_built(out):  # --force replaces a build, never a folder of something else
            names = sorted(p.name for p in out.iterdir())
            raise FileExistsError(f"{out} holds files that are not a model built by safeanchor align "
                                  f"({', '.join(names[:6])}{', ...' if len(names) > 6 else ''}); --force only "
                                  "replaces a build. Choose another --out; nothing was changed")
    claim_output_folder(out.parent, ())  # the build folder goes beside out: that folder must be writable
    partial = f".{out.name}.partial"
    wanted = {"recipe": RECIPE, "base_model": base, "config": json.loads(json.dumps(asdict(cfg)))}
    marker = out.parent / partial / STAGE_DIR / PARTIAL_CONFIG
    if marker.parent.parent.exists():
        found = read_json(marker) if marker.is_file() else None
        if found == wanted:
            log.info("resuming the alignment build in %s", marker.parent.parent)
        elif force or found is None:  # on purpose, or a build that had not even recorded its settings
            log.warning("%s holds an unfinished build with other settings; starting over", marker.parent.parent)
            shutil.rmtree(marker.parent.parent)
        else:
            raise FileExistsError(
                f"{marker.parent.parent} holds an unfinished build with other settings "
                f"({'; '.join(build_differences(found, wanted))}); rerun with the same options to resume it, "
                "or pass --force to discard its finished stages and start over")

    def build(work: Path) -> dict[str, Any]:
        (work / STAGE_DIR).mkdir(parents=True, exist_ok=True)
        write_json(work / STAGE_DIR / PARTIAL_CONFIG, wanted)
        return run_stages(base, work, cfg)

    return atomic_dir(out, build, if_exists="replace", tmp_name=partial, resume=True)


build_safe_model_atomic = build_safe_model  # the name the CLI used; the build is always atomic now


def build_differences(there: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every setting in which two builds' recorded settings differ."""
    diffs = [f"{k}: {there.get(k)!r} -> {here.get(k)!r}" for k in ("recipe", "base_model") if there.get(k) != here.get(k)]
    a, b = there.get("config") or {}, here.get("config") or {}
    diffs += [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return diffs


# AlignConfig fields that say how a build ran, not what it built
RUNTIME_FIELDS = ("device", "precision", "progress", "generate_batch_size")


def recipe_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings that define a build (JSON-normalised, without the runtime fields)."""
    return {k: v for k, v in json.loads(json.dumps(config)).items() if k not in RUNTIME_FIELDS}


def is_current(path: str | Path) -> bool:
    """Whether the model folder ``path`` was built by this recipe version (``RECIPE``) with its
    default settings, i.e. is what ``embedded:smollm2-135m-safe`` names. A build with other
    options (``safeanchor align --epochs 1``) is not: the demo rebuilds it rather than use it."""
    from ..models import build_info

    info = build_info(path)
    if not info or info.get("recipe") != RECIPE:
        return False
    return recipe_settings(info.get("config") or {}) == recipe_settings(asdict(AlignConfig()))


def ensure_safe_start_model(*, console: Any = None) -> Path:
    """Build ``embedded:smollm2-135m-safe`` into the cache unless a build of this recipe is there.

    What ``safeanchor align`` and the demo's first stage call; loading the model never trains.
    A build of an older recipe is replaced only after the new one succeeded.
    """
    from ..models import embedded_dir, is_built

    target = embedded_dir(SAFE_EMBEDDED)
    if is_built(target) and is_current(target):
        return target
    stale = is_built(target)
    msg = (f"building embedded:{SAFE_EMBEDDED} into {target} (one time, about {BUILD_SECONDS / 60:.0f} min on a "
           f"2-core CPU){': the cached build is from an older recipe' if stale else ''}")
    if console is not None:
        console.print(f"[bold]{msg}[/bold]")
    log.warning(msg) if stale else log.info(msg)
    build_safe_model(DEFAULT_BASE, target, force=True)
    return target


__all__ = ["AlignConfig", "BUILD_SECONDS", "DEFAULT_BASE", "RECIPE", "alignment_features", "build_safe_model",
           "build_training_records", "ensure_safe_start_model", "is_current", "refusal_eval", "run_stages",
           "train_adapter", "training_config"]
