"""Batched greedy decoding with KV cache and left padding.

Prompts are formatted with the model's chat template, sorted by length so batches waste little
padding, generated greedily (deterministic) and returned in the input order.

Backends:

* ``hf`` -- ``model.generate`` on the model object you pass (full model, base + PEFT adapter, or a
  merged checkpoint). Tested here.
* ``vllm`` -- optional, used when the ``vllm`` package is installed and a CUDA GPU is present.
  vLLM needs weights on disk, so the *in-memory* weights are exported (adapters merged) to a
  temporary folder first; answers therefore always come from the weights you passed, never a
  stale checkpoint. A model with forward hooks (ablation, steering) always uses ``hf``, since
  vLLM would ignore the hooks. Output format is identical (a list of strings in input order). **Untested in
  this repository's CI** (no GPU, no vLLM); it is import-guarded and falls back to ``hf`` under
  ``backend="auto"``.

>>> # answers = generate(model, tok, ["How do I bake bread?"], max_new_tokens=32)
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from typing import Sequence

import torch

from ..data import Record, encode_prompt, pad_batch
from ..distributed import all_gather_objects, is_main, shard, world_size
from ..models import model_precision

log = logging.getLogger(__name__)

BACKENDS = ("auto", "hf", "vllm")


def _as_records(items: Sequence[Record | str]) -> list[Record]:
    return [it if isinstance(it, Record) else Record(prompt=str(it)) for it in items]


def _progress(desc: str, enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn(f"[bold]{desc}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), disable=not enabled, transient=True)


def stop_token_ids(model, tokenizer) -> list[int]:
    """Token ids that end an answer: the tokenizer's EOS plus the model's generation-config EOS
    (Llama-3 and ChatML models end a turn with a token that is not ``tokenizer.eos_token``)."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    extra = getattr(gen_cfg, "eos_token_id", None) if gen_cfg is not None else None
    for i in ([extra] if isinstance(extra, int) else list(extra or [])):
        if int(i) not in ids:
            ids.append(int(i))
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config defines an EOS token")
    return ids


def vllm_available() -> bool:
    """True when the vLLM backend can run: ``vllm`` importable and a CUDA GPU present."""
    if not torch.cuda.is_available():
        return False
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def has_hooks(model) -> bool:
    """True when any module carries forward (pre-)hooks, e.g. direction ablation or steering.
    vLLM would silently ignore them, so such a model is always generated with ``hf``."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def resolve_backend(backend: str, model=None) -> str:
    """``auto`` -> ``vllm`` when :func:`vllm_available` and the model has no hooks, else ``hf``;
    explicit choices are checked."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    hooked = model is not None and has_hooks(model)
    if backend == "auto":
        return "vllm" if vllm_available() and not hooked else "hf"
    if backend == "vllm":
        if not vllm_available():
            raise RuntimeError("backend='vllm' needs the vllm package and a CUDA GPU (pip install 'safeanchor[vllm]')")
        if hooked:
            raise RuntimeError("backend='vllm' cannot run a model with forward hooks (ablation/steering); use 'hf'")
    return backend


@torch.no_grad()
def generate_ids(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "generating",
) -> list[list[int]]:
    """Greedy continuations (token ids, stop token excluded) of already-tokenised prompts.

    The HF path behind :func:`generate`; also used by :mod:`.serve`, which formats multi-turn
    chats itself.

    >>> # generate_ids(model, tok, [[1, 2, 3]], max_new_tokens=4, progress=False)
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not prompts:
        return []
    device = next(model.parameters()).device
    prec = model_precision(model)
    stops = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    # Longest first: equal-length neighbours share a batch (little padding), and an out-of-memory
    # error, if any, happens on the first batch rather than after most of the work.
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    batches = [order[start: start + batch_size] for start in range(0, len(order), batch_size)]
    # Under data parallelism the ranks take the same batches round robin, so every answer comes from
    # the batch it would have been in on one process; the answers are gathered back in prompt order.
    mine = [batches[b] for b in shard(len(batches))]
    out: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        with _progress(desc, progress and is_main()) as bar:
            task = bar.add_task(desc, total=sum(map(len, mine)))
            for idx in mine:
                ids, mask = pad_batch([list(prompts[i]) for i in idx], pad_id, side="left")  # (B, T)
                ids, mask = ids.to(device), mask.to(device)
                with prec.autocast_context(device):
                    gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                         do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None,
                                         pad_token_id=pad_id, eos_token_id=stops, use_cache=True)
                new = gen[:, ids.shape[1]:].tolist()  # (B, T_new); finished rows are padded
                for j, i in enumerate(idx):
                    row = new[j]
                    cut = next((k for k, t in enumerate(row) if t in stops), len(row))
                    out[i] = row[:cut]
                bar.advance(task, len(idx))
    finally:
        model.train(was_training)
    if world_size() > 1:
        for part in all_gather_objects({i: out[i] for idx in mine for i in idx}):
            for i, row in part.items():
                out[i] = row
    return out


def generate(
    model,
    tokenizer,
    records_or_prompts: Sequence[Record | str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    max_prompt_tokens: int | None = 1024,
    progress: bool = True,
    desc: str = "generating",
    backend: str = "auto",
) -> list[str]:
    """Greedy answers for each prompt (chat template applied), in input order.

    Works for a plain model, a PEFT model (base + adapter) and a merged checkpoint. Deterministic:
    the same inputs and batch size give the same answers. (Batched and one-at-a-time answers
    agree in fp32; under bf16 autocast padding can change rounding, so rare answers may differ.)

    >>> # generate(model, tok, ["Name a colour.", Record("2+2?", system="Be brief.")])
    """
    records = _as_records(records_or_prompts)
    if not records:
        return []
    encoded = [encode_prompt(tokenizer, r, max_length=max_prompt_tokens) for r in records]
    if resolve_backend(backend, model) == "vllm":
        return _generate_vllm(model, tokenizer, encoded, max_new_tokens=max_new_tokens)
    new = generate_ids(model, tokenizer, encoded, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       progress=progress, desc=desc)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]


def decoding_settings(max_new_tokens: int, batch_size: int, *, backend: str = "hf",
                      max_prompt_tokens: int | None = 1024) -> dict:
    """What an eval file records about decoding."""
    return {"strategy": "greedy", "max_new_tokens": max_new_tokens, "batch_size": batch_size,
            "padding_side": "left", "chat_template": True, "backend": backend,
            "max_prompt_tokens": max_prompt_tokens}


# ---------------------------------------------------------------------------------------------
# vLLM (optional; untested here -- see the module docstring)
# ---------------------------------------------------------------------------------------------

_VLLM_ENGINE: dict[str, object] = {}  # {model fingerprint: vllm.LLM}; at most one engine lives at a time


def _generate_vllm(model, tokenizer, encoded: list[list[int]], *, max_new_tokens: int) -> list[str]:
    import gc

    from vllm import LLM, SamplingParams

    from ..models import model_fingerprint

    key = model_fingerprint(model)
    if key not in _VLLM_ENGINE:
        _VLLM_ENGINE.clear()  # weights changed (e.g. more training): free the stale engine first
        gc.collect()
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info()
        export = tempfile.mkdtemp(prefix="safeanchor-vllm-")
        try:
            _export_merged(model, tokenizer, export)
            # the HF model stays on the GPU: give vLLM most of what is free, not 90% of the card
            _VLLM_ENGINE[key] = LLM(model=export, tokenizer=export, dtype="auto", seed=0,
                                    gpu_memory_utilization=max(0.05, 0.8 * free / total))
        finally:
            shutil.rmtree(export, ignore_errors=True)  # the engine has loaded weights and tokenizer
    llm = _VLLM_ENGINE[key]
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=stop_token_ids(model, tokenizer),
                            skip_special_tokens=True)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in encoded], params, use_tqdm=False)
    return [o.outputs[0].text.strip() for o in outputs]  # vLLM keeps input order


def _export_merged(model, tokenizer, folder: str) -> None:
    """Write the in-memory weights (PEFT adapters merged into a copy) as a plain HF folder."""
    import copy

    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
