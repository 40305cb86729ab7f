"""Stage 1 of the refusal-direction recipe: difference in means of block inputs.

r^(l) = mean_{harmful} x^(l) − mean_{harmless} x^(l) at the last prompt token (ProCon) or at
every post-instruction template position (Arditi et al.), for every layer l, accumulated in
float64 running sums -- activations are never stored, so memory is O(P·L·D) whatever the
number of prompts.

>>> from safeanchor.models import load_model                               # doctest: +SKIP
>>> model, tok = load_model("embedded:smollm2-135m-instruct")               # doctest: +SKIP
>>> rd = extract_direction(model, tok, ExtractConfig(limit=32))             # doctest: +SKIP
>>> rd.unit().shape                                                         # doctest: +SKIP
torch.Size([30, 576])
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field
from typing import Iterator, Sequence

import torch

from ..data import Record, encode_prompt, load_source, pad_batch
from ..distributed import all_reduce, shard, world_size
from ..hooks import capture_block_inputs, forward_until_captured
from ..models import model_precision
from .artifact import RefusalDirection

POSITION_MODES = ("last", "post-instruction")
PADDING_SIDES = ("left", "right")


@dataclass
class ExtractConfig:
    """What to extract the direction from. Defaults follow METHODS.md §1 (128 + 128 prompts)."""

    harmful: str = field(default="bundled:harmful:train", metadata={"help": "data source of harmful prompts"})
    harmless: str = field(default="bundled:harmless:train", metadata={"help": "data source of harmless prompts"})
    limit: int | None = field(default=128, metadata={"help": "prompts per set (seeded sample); None = all"})
    seed: int = field(default=0, metadata={"help": "seed of the prompt sample"})
    positions: str = field(default="last", metadata={
        "help": "'last' (last prompt token, ProCon) or 'post-instruction' (every template token "
                "after the user content, Arditi et al.)"})
    batch_size: int = field(default=32, metadata={"help": "prompts per forward pass"})
    max_length: int = field(default=512, metadata={"help": "prompt tokens kept (left-truncated)"})
    padding_side: str = field(default="left", metadata={"help": "'left' or 'right'; the result does not depend on it"})

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"ExtractConfig.limit must be a positive integer or None, got {self.limit}")
        if self.positions not in POSITION_MODES:
            raise ValueError(f"ExtractConfig.positions must be one of {', '.join(POSITION_MODES)}; got {self.positions!r}")
        if self.batch_size < 1:
            raise ValueError(f"ExtractConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.max_length < 8:
            raise ValueError(f"ExtractConfig.max_length must be >= 8, got {self.max_length}")
        if self.padding_side not in PADDING_SIDES:
            raise ValueError(f"ExtractConfig.padding_side must be one of {', '.join(PADDING_SIDES)}; got {self.padding_side!r}")


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------


def prompts_digest(records: Sequence[Record]) -> str:
    """sha256 of the prompts (system + user text), to check that a re-extraction used the same ones."""
    h = hashlib.sha256()
    for r in records:
        h.update((r.system or "").encode() + b"\x00" + r.prompt.encode() + b"\x01")
    return h.hexdigest()[:16]


def load_prompts(source: str, *, limit: int | None, seed: int) -> tuple[list[Record], dict]:
    """Load ``source`` and keep a seeded sample of ``limit`` records (in file order).

    Returns the records and the description stored in ``direction.json`` (source, limit, seed,
    count, digest) from which :func:`prompts_from_info` reloads exactly the same prompts.

    >>> recs, info = load_prompts("bundled:harmful:train", limit=8, seed=0)  # doctest: +SKIP
    >>> info["count"]                                                        # doctest: +SKIP
    8
    """
    records = load_source(source)
    if limit is not None and limit < len(records):
        keep = sorted(random.Random(seed).sample(range(len(records)), limit))
        records = [records[i] for i in keep]
    info = {"source": source, "limit": limit, "seed": seed, "count": len(records), "sha256": prompts_digest(records)}
    return records, info


def prompts_from_info(info: dict, *, limit: int | None = None) -> list[Record]:
    """Reload the prompts an artifact recorded; ``limit`` keeps only the first ``limit`` of them."""
    records, again = load_prompts(info["source"], limit=info["limit"], seed=info["seed"])
    if again["sha256"] != info["sha256"]:
        raise ValueError(
            f"the prompts of {info['source']!r} changed since the direction was extracted "
            f"(digest {again['sha256']} != {info['sha256']}); re-extract the reference direction"
        )
    return records if limit is None else records[:limit]


def post_instruction_offsets(tokenizer, records: Sequence[Record], *, max_length: int = 512) -> list[int]:
    """Offsets from the prompt end of the template tokens that follow the user content.

    They are the common token suffix of the formatted prompts (for ChatML
    ``<|im_end|>\\n<|im_start|>assistant\\n``). Two probe prompts with different last characters
    join the data so that a small set whose prompts all end alike (say with ``?``) does not pull
    user text into the suffix.

    >>> # post_instruction_offsets(tok, records) -> [-5, -4, -3, -2, -1] for SmolLM2
    """
    probes = [Record("x"), Record("y?")]
    seqs = [encode_prompt(tokenizer, r, max_length=max_length) for r in [*records, *probes]]
    n = 0
    shortest = min(len(s) for s in seqs)
    while n < shortest and all(s[-1 - n] == seqs[0][-1 - n] for s in seqs):
        n += 1
    if n == 0:
        raise ValueError("the formatted prompts share no trailing template token; use positions='last'")
    return list(range(-n, 0))


# ---------------------------------------------------------------------------------------------
# Batched activation capture
# ---------------------------------------------------------------------------------------------


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def encode_batches(
    tokenizer,
    records: Sequence[Record],
    *,
    batch_size: int,
    max_length: int = 512,
    padding_side: str = "left",
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(indices, input_ids (B, T), attention_mask (B, T), position_ids (B, T))``.

    Prompts are batched by length (longest first, stable), which cuts padding; ``indices``
    map rows back to ``records``. Position ids count real tokens only, so a left-padded prompt
    sees the same positions as an unpadded one.
    """
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side must be one of {', '.join(PADDING_SIDES)}; got {padding_side!r}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    seqs = [encode_prompt(tokenizer, r, max_length=max_length) for r in records]
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = pad_batch([seqs[i] for i in idx], pad_id, side=padding_side)
        pos_ids = (mask.cumsum(1) - 1).clamp(min=0)
        yield idx, ids, mask, pos_ids


def iter_activations(
    model,
    tokenizer,
    records: Sequence[Record],
    *,
    offsets: Sequence[int] = (-1,),
    layers: Sequence[int] | None = None,
    batch_size: int = 32,
    max_length: int = 512,
    padding_side: str = "left",
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield ``(indices, acts)`` per batch, ``acts`` ``(B, P, L', D)`` float32: block inputs at the
    prompt positions ``offsets`` (``-1`` = last prompt token) for ``layers`` (default all).

    Runs under ``no_grad`` in the model's autocast precision and stops the forward pass after
    the highest requested block input, so the LM head never runs.
    """
    device = model_device(model)
    prec = model_precision(model)
    off = torch.tensor(list(offsets), dtype=torch.long)  # (P,)
    for idx, ids, mask, pos_ids in encode_batches(tokenizer, records, batch_size=batch_size,
                                                  max_length=max_length, padding_side=padding_side):
        if int(mask.sum(1).min()) < len(off):
            raise ValueError(f"a prompt has fewer tokens than the {len(off)} positions requested")
        last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # (B,) index of each row's last real token
        gather = last[:, None] + 1 + off[None, :]  # (B, P)
        with torch.no_grad(), prec.autocast_context(device), \
                capture_block_inputs(model, layers=layers, positions=gather, stop_early=True) as store:
            forward_until_captured(model, input_ids=ids.to(device), attention_mask=mask.to(device),
                                   position_ids=pos_ids.to(device), use_cache=False)
        acts = torch.stack([store[k] for k in sorted(store)], dim=2).float()  # (B, P, L', D)
        yield idx, acts


def mean_activations(model, tokenizer, records: Sequence[Record], **kw) -> torch.Tensor:
    """Mean block input over ``records``, ``(P, L, D)`` float64 (running sum; nothing stored).

    Keywords as :func:`iter_activations`.
    """
    if not records:
        raise ValueError("no prompts to extract from")
    # Under data parallelism each rank sums a shard of the prompts; the float64 sums are then
    # all-reduced, so the mean equals the one-process mean to float64 rounding.
    ws = world_size()
    mine = [records[i] for i in shard(len(records))] if len(records) >= ws else list(records)
    total: torch.Tensor | None = None
    n = 0
    for _, acts in iter_activations(model, tokenizer, mine, **kw):
        batch_sum = acts.to(torch.float64).sum(0).cpu()  # (P, L, D)
        total = batch_sum if total is None else total + batch_sum
        n += acts.shape[0]
    if ws > 1 and len(records) >= ws:
        total = all_reduce(total)
        n = len(records)
    return total / n


# ---------------------------------------------------------------------------------------------
# The direction
# ---------------------------------------------------------------------------------------------


def extract_direction(model, tokenizer, config: ExtractConfig | None = None, *,
                      harmful: Sequence[Record] | None = None,
                      harmless: Sequence[Record] | None = None) -> RefusalDirection:
    """Difference in means of block inputs between harmful and harmless prompts, every layer.

    Prompts come from ``config.harmful`` / ``config.harmless`` (seeded sample of ``limit``)
    unless ``harmful`` / ``harmless`` records are given.

    >>> rd = extract_direction(model, tok, ExtractConfig(limit=32))  # doctest: +SKIP
    >>> rd.save_pretrained("runs/direction")                         # doctest: +SKIP
    """
    from ..models import model_fingerprint, weights_fingerprints

    cfg = config or ExtractConfig()
    data = {}
    sets = {}
    for name, given, source in (("harmful", harmful, cfg.harmful), ("harmless", harmless, cfg.harmless)):
        if given is None:
            recs, info = load_prompts(source, limit=cfg.limit, seed=cfg.seed)
        else:
            recs = list(given)
            info = {"source": None, "limit": None, "seed": None, "count": len(recs), "sha256": prompts_digest(recs)}
        sets[name], data[name] = recs, info
    if prompts_digest(sets["harmful"]) == prompts_digest(sets["harmless"]):
        raise ValueError(f"the harmful and harmless prompts are the same ({cfg.harmful} and {cfg.harmless}): "
                         "their difference in means is zero; give two different sets")
    if cfg.positions == "last":
        offsets = [-1]
    else:
        offsets = post_instruction_offsets(tokenizer, [*sets["harmful"], *sets["harmless"]], max_length=cfg.max_length)
    kw = dict(offsets=offsets, batch_size=cfg.batch_size, max_length=cfg.max_length, padding_side=cfg.padding_side)
    mu_h = mean_activations(model, tokenizer, sets["harmful"], **kw)  # (P, L, D)
    mu_b = mean_activations(model, tokenizer, sets["harmless"], **kw)  # (P, L, D)
    if bool((mu_h == mu_b).all()):
        raise ValueError(f"the harmful and harmless prompts ({cfg.harmful}, {cfg.harmless}) give the same mean "
                         "activations at every layer: the direction would be zero")

    some_prompt = encode_prompt(tokenizer, sets["harmful"][0], max_length=cfg.max_length)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    info = {
        "model": getattr(model, "safeanchor_source", None) or getattr(base.config, "_name_or_path", None) or None,
        "model_type": base.config.model_type,
        "fingerprint": model_fingerprint(model),
        "weights_fingerprints": weights_fingerprints(model),  # the same weights in any precision: a shared one
        "n_layers": int(mu_h.shape[1]),
        "hidden_size": int(mu_h.shape[2]),
        "positions": offsets,
        "position_tokens": [tokenizer.decode([some_prompt[o]]) for o in offsets],
        "data": data,
        "seed": cfg.seed,
        "extraction": asdict(cfg),
        "precision": str(model_precision(model)),
    }
    return RefusalDirection(mu_h, mu_b, info)


# ---------------------------------------------------------------------------------------------
# Separation on held-out prompts
# ---------------------------------------------------------------------------------------------


def projections(model, tokenizer, records: Sequence[Record], units: torch.Tensor, *, offset: int = -1,
                batch_size: int = 32, max_length: int = 512) -> torch.Tensor:
    """Projection of each prompt's block input onto the unit directions, ``(N, L)`` float64.

    ``units`` ``(L, D)``: one unit vector per layer (``RefusalDirection.unit(pos=offset)``).
    """
    out = torch.empty(len(records), units.shape[0], dtype=torch.float64)
    u = units.to(torch.float64)
    for idx, acts in iter_activations(model, tokenizer, records, offsets=[offset],
                                      batch_size=batch_size, max_length=max_length):
        out[idx] = torch.einsum("bld,ld->bl", acts[:, 0].to(torch.float64).cpu(), u)  # (B, L)
    return out


def auroc(positive: Sequence[float] | torch.Tensor, negative: Sequence[float] | torch.Tensor) -> float:
    """Area under the ROC curve of scores that should rank ``positive`` above ``negative``.

    Rank-based (Mann-Whitney U), ties counted as one half.

    >>> auroc([3.0, 2.0], [1.0, 0.0])
    1.0
    >>> auroc([1.0, 0.0], [1.0, 0.0])
    0.5
    """
    pos = torch.as_tensor(positive, dtype=torch.float64).reshape(-1)
    neg = torch.as_tensor(negative, dtype=torch.float64).reshape(-1)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("auroc needs at least one positive and one negative score")
    scores = torch.cat([pos, neg])
    order = torch.argsort(scores, stable=True)
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    # ties share the mean of their ranks
    uniq, inverse = torch.unique(scores, return_inverse=True)
    rank_sum = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks)
    count = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ranks))
    ranks = (rank_sum / count)[inverse]
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def layer_auroc(model, tokenizer, direction: RefusalDirection, harmful: Sequence[Record],
                harmless: Sequence[Record], *, pos: int = -1, batch_size: int = 32) -> list[float]:
    """Per-layer AUROC of the projection onto r̂^(l) separating ``harmful`` from ``harmless``.

    >>> # layer_auroc(model, tok, rd, load_source("bundled:harmful:test"), load_source("bundled:harmless:test"))
    """
    units = direction.unit(pos=pos)  # (L, D)
    max_length = int(direction.info.get("extraction", {}).get("max_length", 512))
    p_h = projections(model, tokenizer, harmful, units, offset=pos, batch_size=batch_size, max_length=max_length)
    p_b = projections(model, tokenizer, harmless, units, offset=pos, batch_size=batch_size, max_length=max_length)
    return [auroc(p_h[:, l], p_b[:, l]) for l in range(units.shape[0])]
