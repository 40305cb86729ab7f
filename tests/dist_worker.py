"""A training worker for the multi-process tests, started as a user would start one:

    torchrun --nproc_per_node 2 tests/dist_worker.py WORK RUN [RUN ...] [--stop-after N] [--resume]
    python tests/dist_worker.py WORK RUN ...          (one process)

``WORK`` holds ``model/``, ``unaligned/`` and ``data/`` (see :func:`prepare`); each ``RUN`` is
``name:method[:anchor]`` and trains into ``WORK/<name>`` with the global batch 4 (4 per device on
one process, 2 per device on two), 2 shuffled epochs, no dropout, so 1 and 2 processes see the
same samples per step. ``--stop-after N`` saves a checkpoint every N steps and ends every process
abruptly right after the first one (a killed run); ``--resume`` resumes from the last checkpoint; ``--record`` writes each rank's anchor lookups
(step, sample ids) to ``WORK/<name>/lookups-rank<r>.json``.
Not a test module itself (no ``test_`` prefix).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

N_TRAIN = 16  # samples; responses all have the same token count (see prepare)


def prepare(work: Path) -> None:
    """The tiny model, an 'unaligned' partner for AsFT, and data whose responses all tokenise to the
    same length, so each rank's per-batch mean CE averages to the one-process mean exactly."""
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_tiny_llama, make_tiny_tokenizer
    from safeanchor.data import write_jsonl

    tok = make_tiny_tokenizer()
    for name, seed in (("model", 0), ("unaligned", 1)):
        make_tiny_llama(len(tok), seed=seed).save_pretrained(work / name)
        tok.save_pretrained(work / name)
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    write_jsonl(data / "train.jsonl", [
        {"id": f"t{i}", "prompt": f"What is {i} plus {i + 7} and then {i} again?", "response": "The answer is in the sky."}
        for i in range(N_TRAIN)])
    write_jsonl(data / "harmful.jsonl", [
        {"id": f"h{i}", "prompt": f"Explain how to hurt person number {i} badly.", "split": "train"} for i in range(12)])
    write_jsonl(data / "harmless.jsonl", [
        {"id": f"b{i}", "prompt": f"How do I bake bread number {i}?", "split": "train"} for i in range(12)])
    write_jsonl(data / "refusals.jsonl", [{"id": "r1", "response": "I cannot help with that today."}])


def config_for(work: Path, name: str, method: str, anchor: str, *, world: int, stop_after: int | None,
               resume: bool):
    from safeanchor.train import SafeTrainingConfig

    data = {k: f"file:{work / 'data' / (k + '.jsonl')}" for k in ("train", "harmful", "harmless", "refusals")}
    options = {"procon": {"anchor": anchor, "direction_harmful": data["harmful"],
                          "direction_harmless": data["harmless"], "direction_samples": 12},
               "asft": {"unaligned_model": str(work / "unaligned")}}
    kw = dict(model=str(work / "model"), method=method, output_dir=str(work / name), train_data=data["train"],
              max_length=64, per_device_train_batch_size=4 // world, num_train_epochs=2, learning_rate=1e-2,
              lora_dropout=0.0, report_to="none", progress=False, seed=0, safety_samples=4,
              safety_harmful=data["harmful"], safety_refusals=data["refusals"], regularizer_options=options,
              save_strategy="no")
    if method in ("procon", "procon_safe", "asft"):
        kw["alpha"] = 0.1
    if stop_after:
        kw.update(save_strategy="steps", save_steps=stop_after)
    if resume:
        kw["resume_from_checkpoint"] = "last"
    if os.environ.get("DIST_WORKER_FSDP"):  # the FSDP probe: full shard, one unit per decoder layer
        kw.update(fsdp="full_shard auto_wrap", fsdp_config={
            "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"], "use_orig_params": True,
            "version": int(os.environ["DIST_WORKER_FSDP"])})
    return SafeTrainingConfig(**kw)


class _Kill:
    """Ends the process right after the first checkpoint is written (a run killed mid-way)."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Kill(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                import torch.distributed as dist

                if dist.is_initialized():
                    dist.barrier()  # every rank has finished its part of the checkpoint
                os._exit(3)

        return Kill()


def main(argv: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    stop_after = int(argv[argv.index("--stop-after") + 1]) if "--stop-after" in argv else None
    resume = "--resume" in argv
    args = [a for i, a in enumerate(argv) if not a.startswith("--") and (i == 0 or argv[i - 1] != "--stop-after")]
    work, runs = Path(args[0]), args[1:]
    from safeanchor.distributed import launched_world_size
    from safeanchor.train import train

    if "--record" in argv:
        _record_lookups()
    for spec in runs:
        name, method, *rest = spec.split(":")
        cfg = config_for(work, name, method, rest[0] if rest else "cached", world=launched_world_size(),
                         stop_after=stop_after, resume=resume)
        train(cfg, callbacks=[_Kill()] if stop_after else None)
        if "--record" in argv:
            import json

            from safeanchor.distributed import rank

            (Path(cfg.output_dir) / f"lookups-rank{rank()}.json").write_text(json.dumps(_LOOKUPS))
            _LOOKUPS.clear()


_LOOKUPS: list[dict] = []


def _record_lookups() -> None:
    """Record, per training batch, the step and the sample ids this rank looked anchors up for."""
    from safeanchor.train.trainer import SafeTrainer

    original = SafeTrainer.compute_loss

    def compute_loss(self, model, inputs, *a, **kw):
        if model.training:
            _LOOKUPS.append({"step": self.state.global_step, "samples": inputs["sample_idx"].tolist()})
        return original(self, model, inputs, *a, **kw)

    SafeTrainer.compute_loss = compute_loss


if __name__ == "__main__":
    if sys.argv[1:2] == ["prepare"]:
        prepare(Path(sys.argv[2]))
    else:
        main(sys.argv[1:])
