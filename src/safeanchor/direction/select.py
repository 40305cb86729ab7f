"""Stage 2 (optional): pick one (layer, position) the way Arditi et al. do.

For every candidate direction r = r^(l) at position p, on small validation sets:

* refusal score of a prompt = log-odds of the refusal-token set (``family.refusal_tokens``)
  in the next-token distribution at the last prompt position;
* bypass = mean refusal score on harmful prompts with r̂ ablated everywhere (lower is better);
* induce = mean refusal score on harmless prompts with r added at block l's input;
* KL = mean KL(p_base ‖ p_ablated) of the last-token distribution on harmless prompts.

As the reference code does (``filter_fn`` of Arditi et al.): a candidate survives with induce ≥ 0,
KL ≤ 0.1 and l < int(0.8·L) (the last 20% of the layers are pruned); the lowest bypass wins. The
validation prompts are filtered first, as the reference's ``filter_val`` does: harmful prompts the
model does not refuse (refusal score ≤ 0) and harmless ones it does (score ≥ 0) are left out.

>>> rd = select_direction(model, tok, rd, SelectConfig(layers=[8, 12, 16]))  # doctest: +SKIP
>>> rd.selected                                                              # doctest: +SKIP
(12, -1)
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

from ..data import Record, load_source
from ..families import family_of
from ..hooks import ablate_direction, add_direction
from ..models import model_precision
from .artifact import RefusalDirection
from .extract import encode_batches, model_device

log = logging.getLogger(__name__)


@dataclass
class SelectConfig:
    """Arditi et al. selection settings (METHODS.md §1); thresholds are the paper's."""

    harmful: str = field(default="bundled:harmful:val", metadata={"help": "harmful validation prompts (bypass)"})
    harmless: str = field(default="bundled:harmless:val", metadata={"help": "harmless validation prompts (induce, KL)"})
    limit: int = field(default=32, metadata={"help": "prompts per validation set (first N)"})
    layers: list[int] | None = field(default=None, metadata={
        "help": "layers to scan; None = every layer below max_layer_frac·L (the others are filtered out anyway)"})
    positions: list[int] | None = field(default=None, metadata={
        "help": "positions (offsets from the prompt end) to scan; None = all extracted positions on a GPU, "
                "only the last prompt token on CPU"})
    kl_threshold: float = field(default=0.1, metadata={"help": "keep candidates with KL at most this (reference)"})
    induce_threshold: float = field(default=0.0, metadata={"help": "keep candidates with an induce score at least this"})
    max_layer_frac: float = field(default=0.8, metadata={"help": "keep layers l < int(max_layer_frac · n_layers)"})
    filter_prompts: bool = field(default=True, metadata={
        "help": "leave out harmful prompts the model does not refuse and harmless ones it does (reference)"})
    batch_size: int = field(default=32, metadata={"help": "prompts per forward pass"})

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"SelectConfig.limit must be >= 1, got {self.limit}")
        if self.kl_threshold <= 0:
            raise ValueError(f"SelectConfig.kl_threshold must be > 0, got {self.kl_threshold}")
        if not 0 < self.max_layer_frac <= 1:
            raise ValueError(f"SelectConfig.max_layer_frac must be in (0, 1], got {self.max_layer_frac}")
        if self.batch_size < 1:
            raise ValueError(f"SelectConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise ValueError(f"SelectConfig.layers must be a non-empty list of layer indices >= 0, got {self.layers}")
        if self.positions is not None and (not self.positions or max(self.positions) >= 0):
            raise ValueError(f"SelectConfig.positions must be negative offsets such as -1, got {self.positions}")


def refusal_token_ids(model, tokenizer) -> list[int]:
    """Token ids of the family's refusal openers (first token of each string, deduplicated)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    ids: list[int] = []
    for text in family_of(base.config.model_type).refusal_tokens:
        toks = tokenizer.encode(text, add_special_tokens=False)
        if not toks:
            raise ValueError(f"refusal token {text!r} encodes to nothing with this tokenizer")
        if toks[0] not in ids:
            ids.append(toks[0])
    return ids


def last_token_logprobs(model, tokenizer, records: Sequence[Record], *, batch_size: int = 32) -> torch.Tensor:
    """Log-probabilities of the next token after each formatted prompt, ``(N, V)`` float32."""
    device = model_device(model)
    prec = model_precision(model)
    out: torch.Tensor | None = None
    for idx, ids, mask, pos_ids in encode_batches(tokenizer, records, batch_size=batch_size, padding_side="left"):
        with torch.no_grad(), prec.autocast_context(device):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos_ids.to(device),
                           use_cache=False, logits_to_keep=1).logits  # (B, 1, V)
        lp = torch.log_softmax(logits[:, -1].float(), dim=-1).cpu()  # (B, V)
        if out is None:
            out = torch.empty(len(records), lp.shape[-1])
        out[idx] = lp
    assert out is not None
    return out


def refusal_score(logprobs: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """log p(refusal) − log(1 − p(refusal)) per row, ``(N,)`` float64.

    >>> lp = torch.log(torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64))
    >>> refusal_score(lp, [0]).tolist()
    [0.0]
    """
    lp = torch.logsumexp(logprobs.to(torch.float64)[:, list(token_ids)], dim=-1)  # (N,)
    lp = lp.clamp(max=-1e-12)  # p(refusal) == 1 would make the odds infinite
    return lp - torch.log(-torch.expm1(lp))


def kl_divergence(base_lp: torch.Tensor, new_lp: torch.Tensor) -> torch.Tensor:
    """KL(p_base ‖ p_new) per row from log-probabilities, ``(N,)`` float64."""
    b, n = base_lp.to(torch.float64), new_lp.to(torch.float64)
    return (b.exp() * (b - n)).sum(-1)


def _default_positions(direction: RefusalDirection, model) -> list[int]:
    # Each position multiplies the scan; on CPU the last prompt token (ProCon's position) is
    # the affordable default.
    return direction.positions if model_device(model).type == "cuda" else [direction.positions[-1]]


def select_direction(model, tokenizer, direction: RefusalDirection, config: SelectConfig | None = None, *,
                     harmful: Sequence[Record] | None = None, harmless: Sequence[Record] | None = None,
                     progress: bool = False) -> RefusalDirection:
    """Score every candidate (layer, position) and return a copy of ``direction`` recording the
    choice (``info["selected"]``) and all scores (``info["selection"]``).

    If no candidate passes every filter, the induce filter is dropped, then the KL filter (never
    the layer cap); ``info["selection"]["passed_filters"]`` is then False and
    ``["dropped_filters"]`` names what was dropped (a warning is logged).
    """
    cfg = config or SelectConfig()
    direction.check_compatible(model)
    harmful = list(harmful) if harmful is not None else load_source(cfg.harmful, limit=cfg.limit)
    harmless = list(harmless) if harmless is not None else load_source(cfg.harmless, limit=cfg.limit)
    L = direction.n_layers
    cap = int(cfg.max_layer_frac * L)  # the reference prunes layer >= int(n_layer * (1 - 0.2))
    layers = cfg.layers if cfg.layers is not None else [l for l in range(L) if l < cap]
    if max(layers) >= L:
        raise ValueError(f"SelectConfig.layers must be within 0..{L - 1}, got {layers}")
    positions = cfg.positions if cfg.positions is not None else _default_positions(direction, model)
    for p in positions:
        direction.pos_index(p)  # clear error for a position that was not extracted
    tok_ids = refusal_token_ids(model, tokenizer)
    bs = cfg.batch_size

    base_h = refusal_score(last_token_logprobs(model, tokenizer, harmful, batch_size=bs), tok_ids)
    base_b_lp = last_token_logprobs(model, tokenizer, harmless, batch_size=bs)
    base_b = refusal_score(base_b_lp, tok_ids)
    n_before = (len(harmful), len(harmless))
    if cfg.filter_prompts:
        keep_h = [i for i, v in enumerate(base_h.tolist()) if v > 0]
        keep_b = [i for i, v in enumerate(base_b.tolist()) if v < 0]
        if not keep_h or not keep_b:
            raise ValueError(f"select_direction: after leaving out prompts the model does not refuse / does refuse, "
                             f"{len(keep_h)} harmful and {len(keep_b)} harmless prompts are left; the model does not "
                             "separate them (set filter_prompts=False to select anyway)")
        harmful, harmless = [harmful[i] for i in keep_h], [harmless[i] for i in keep_b]
        base_h, base_b, base_b_lp = base_h[keep_h], base_b[keep_b], base_b_lp[keep_b]

    def score(r: torch.Tensor, layer: int) -> dict[str, float]:
        with ablate_direction(model, r):
            bypass = refusal_score(last_token_logprobs(model, tokenizer, harmful, batch_size=bs), tok_ids)
            abl_b_lp = last_token_logprobs(model, tokenizer, harmless, batch_size=bs)
        with add_direction(model, r, layer):
            induce = refusal_score(last_token_logprobs(model, tokenizer, harmless, batch_size=bs), tok_ids)
        return {"bypass": float(bypass.mean()), "induce": float(induce.mean()),
                "kl": float(kl_divergence(base_b_lp, abl_b_lp).mean())}

    def filtered_out(row: dict) -> list[str]:
        reasons = []
        if not row["induce"] >= cfg.induce_threshold:
            reasons.append(f"induce < {cfg.induce_threshold}")
        if not row["kl"] <= cfg.kl_threshold:
            reasons.append(f"KL > {cfg.kl_threshold}")
        if not row["layer"] < cap:
            reasons.append(f"layer >= int({cfg.max_layer_frac}·L) = {cap}")
        return reasons

    from rich.progress import Progress

    candidates = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("selecting", total=len(positions) * len(layers))
        for p in positions:
            for l in layers:
                r = direction.vector(l, p)  # (D,)
                row: dict = {"pos": p, "layer": l, "norm": float(r.norm())}
                if row["norm"] == 0:
                    row.update(bypass=None, induce=None, kl=None, passed=False, reason="zero direction")
                else:
                    row.update(score(r, l))
                    reasons = filtered_out(row)
                    row.update(passed=not reasons, reason="; ".join(reasons) or None)
                candidates.append(row)
                bar.advance(task)

    # Paper rule first; a model that never refuses fails "induce > 0" everywhere, so relax the
    # filters one at a time (induce, then KL), never the layer cap, and record which were dropped.
    scored = [c for c in candidates if c["bypass"] is not None and c["layer"] < cap]
    tiers = [("none", [c for c in candidates if c["passed"]]),
             ("induce", [c for c in scored if c["kl"] <= cfg.kl_threshold]),
             ("induce, KL", scored)]
    dropped, pool = next(((name, pool) for name, pool in tiers if pool), (None, []))
    if not pool:
        raise ValueError(f"no usable candidate among layers {layers}: every one is zero or >= int({cfg.max_layer_frac}·L)")
    if dropped != "none":
        log.warning("no candidate passed all filters (induce >= %s, KL <= %s, layer < int(%s·L)); dropped the %s "
                    "filter(s) and took the lowest bypass", cfg.induce_threshold, cfg.kl_threshold,
                    cfg.max_layer_frac, dropped)
    best = min(pool, key=lambda c: c["bypass"])
    selection = {
        "config": asdict(cfg),
        "refusal_token_ids": tok_ids,
        "refusal_tokens": [tokenizer.decode([t]) for t in tok_ids],
        "n_harmful": len(harmful),
        "n_harmless": len(harmless),
        "n_before_filter": {"harmful": n_before[0], "harmless": n_before[1]},
        "baseline": {"harmful_refusal_score": float(base_h.mean()), "harmless_refusal_score": float(base_b.mean())},
        "passed_filters": dropped == "none",
        "dropped_filters": None if dropped == "none" else dropped,
        "candidates": candidates,
    }
    return direction.copy_with(selected={"layer": best["layer"], "pos": best["pos"]}, selection=selection)
