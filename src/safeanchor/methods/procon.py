"""ProCon: keep each response token's projection on the refusal direction where it was (METHODS.md §2).

For a training sample with response tokens j and constrained layers l::

    z^(l)_j(θ) = r^(l)ᵀ x^(l)_j(θ)           x^(l) = hidden_states[l] = input of block l
    z0^(l)_j   = the same under the ORIGINAL weights θ0
    L_ProCon   = mean_samples Σ_l Σ_j |z^(l)_j(θ) − z0^(l)_j|

r^(l) is the original model's unit refusal direction per layer (difference of means at the last
prompt token), fixed for the whole run. Anchors z0 come from one of two equivalent sources:

* ``cached`` -- one no-grad pass over the training set before training stores z0 per sample and
  response token (a flat ``(N_tokens, L)`` float32 tensor + per-sample offsets, keyed by
  ``sample_idx``); the pass walks the trainer's own first-epoch batches, so step 0 sees
  bit-identical hidden states and the penalty there is exactly 0.
* ``online`` -- recomputed every step under ``no_grad`` with the LoRA adapters disabled (one extra
  forward per step). Under full fine-tuning a frozen copy of the original model serves instead.

Paper defaults: abs norm, sum over layers and tokens, mean over samples, all layers. Layer 0
(the embeddings) has r = 0 -- the last prompt token is the same template token for every
prompt -- and is skipped under ``layers="all"``; the report says so.

>>> import torch
>>> z = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, 3.0]])   # (N_tokens, L)
>>> z0 = torch.zeros_like(z)
>>> owner = torch.tensor([0, 0, 1])                          # token -> sample in the batch
>>> float(procon_penalty(z, z0, owner, n_samples=2, cfg=ProConConfig()))   # ((1+2+0+1) + (3+3)) / 2
5.0
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch

from ..data import IGNORE_INDEX
from .base import Regularizer, RegularizerSetupError
from ..data.batches import forward_inputs

log = logging.getLogger(__name__)

ANCHOR_MODES = ("cached", "online")
NORMS = ("abs", "square")
REDUCTIONS = ("sum", "mean")


@dataclass
class ProConConfig:
    """Options of the ProCon penalty (``regularizer_options: {procon: {...}}``). Paper values default."""

    anchor: str = field(default="cached", metadata={
        "help": "where z0 comes from: cached (one pass before training, stored per sample/token) or "
                "online (recomputed each step with the adapters disabled; one extra forward per step)"})
    layers: Any = field(default="all", metadata={
        "help": "constrained layers: 'all' (every block input with a non-zero direction; paper) or a "
                "list of layer indices 0..L-1"})
    norm: str = field(default="abs", metadata={"help": "per-token distance: abs (paper, |z-z0|) or square"})
    token_reduction: str = field(default="sum", metadata={
        "help": "over a sample's response tokens: sum (paper) or mean"})
    layer_reduction: str = field(default="sum", metadata={"help": "over constrained layers: sum (paper) or mean"})
    sample_reduction: str = field(default="mean", metadata={"help": "over the samples of a batch: mean (paper) or sum"})
    direction: str | None = field(default=None, metadata={
        "help": "a saved RefusalDirection folder of the ORIGINAL model; default: extract it at setup"})
    direction_harmful: str = field(default="bundled:harmful:train", metadata={
        "help": "harmful prompts for extracting r (data source)"})
    direction_harmless: str = field(default="bundled:harmless:train", metadata={
        "help": "harmless prompts for extracting r (data source)"})
    direction_samples: int = field(default=128, metadata={
        "help": "prompts per side for extracting r (reference: 128 + 128)"})
    direction_batch_size: int = field(default=16, metadata={"help": "batch size of the extraction forward passes"})

    def __post_init__(self) -> None:
        for name, allowed in (("anchor", ANCHOR_MODES), ("norm", NORMS), ("token_reduction", REDUCTIONS),
                              ("layer_reduction", REDUCTIONS), ("sample_reduction", REDUCTIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"procon.{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.layers != "all":
            if isinstance(self.layers, int) and not isinstance(self.layers, bool):
                self.layers = [self.layers]
            if (not isinstance(self.layers, (list, tuple)) or not self.layers
                    or not all(isinstance(l, int) and not isinstance(l, bool) and l >= 0 for l in self.layers)):
                raise ValueError(f"procon.layers must be 'all' or a non-empty list of layer indices >= 0; got {self.layers!r}")
            self.layers = sorted(set(self.layers))
        for name in ("direction_samples", "direction_batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"procon.{name} must be an integer >= 1; got {getattr(self, name)!r}")


# ---------------------------------------------------------------------------------------------
# The penalty itself
# ---------------------------------------------------------------------------------------------


def response_projections(hidden_states: Sequence[torch.Tensor], response_mask: torch.Tensor,
                         layers: Sequence[int], directions: torch.Tensor) -> torch.Tensor:
    """z = r^(l)ᵀ x^(l) at every response token, for each constrained layer: ``(N_tokens, L_c)``.

    ``hidden_states[l]``: ``(B, T, D)``; ``response_mask``: ``(B, T)`` bool; ``directions``:
    ``(L_c, D)`` unit rows matching ``layers``. Tokens are in row-major (sample, position) order.
    Computed in fp32 with autocast off: z and z0 are compared to the last bit, and a bf16
    projection of a large residual stream would round away the differences being penalised.
    """
    device = response_mask.device
    with torch.autocast(device.type, enabled=False):
        cols = [hidden_states[l][response_mask].float() @ directions[i].to(device)  # (N,)
                for i, l in enumerate(layers)]
        return torch.stack(cols, dim=-1)  # (N, L_c)


def procon_penalty(z: torch.Tensor, z0: torch.Tensor, owner: torch.Tensor, *, n_samples: int,
                   cfg: ProConConfig) -> torch.Tensor:
    """Reduce ``|z − z0|`` ``(N_tokens, L_c)`` to a scalar: layers, then tokens per sample, then samples.

    ``owner`` ``(N_tokens,)`` is the batch row of each token.
    """
    diff = z - z0
    dist = diff.abs() if cfg.norm == "abs" else diff.square()  # (N, L_c)
    per_token = dist.sum(-1) if cfg.layer_reduction == "sum" else dist.mean(-1)  # (N,)
    per_sample = torch.zeros(n_samples, device=z.device, dtype=per_token.dtype).index_add(0, owner, per_token)  # (B,)
    if cfg.token_reduction == "mean":
        counts = torch.bincount(owner, minlength=n_samples).clamp(min=1)
        per_sample = per_sample / counts
    return per_sample.mean() if cfg.sample_reduction == "mean" else per_sample.sum()


# ---------------------------------------------------------------------------------------------
# The original model and its refusal direction
# ---------------------------------------------------------------------------------------------


def is_lora(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def original_weights(model):
    """Context in which ``model`` computes with its original weights: LoRA adapters disabled.

    A fully fine-tuned model has no such switch; it is original only before its first update.
    """
    return model.disable_adapter() if is_lora(model) else contextlib.nullcontext()


def decoder_of(model) -> torch.nn.Module:
    """The decoder stack (no LM head) of a possibly PEFT-wrapped causal LM: hidden states only."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


def unit_rows(vectors: torch.Tensor, rel_tol: float = 1e-6) -> tuple[torch.Tensor, list[int]]:
    """Normalise each row; rows with (near-)zero norm become 0 and are returned as degenerate."""
    norms = vectors.norm(dim=-1)  # (L,)
    scale = float(norms.max()) if norms.numel() else 0.0
    degenerate = [i for i, n in enumerate(norms.tolist()) if not math.isfinite(n) or n <= rel_tol * scale]
    unit = vectors / norms.clamp(min=torch.finfo(vectors.dtype).tiny).unsqueeze(-1)
    unit[degenerate] = 0.0
    return unit, degenerate


# ---------------------------------------------------------------------------------------------
# Anchor cache
# ---------------------------------------------------------------------------------------------


@dataclass
class AnchorCache:
    """z0 of every training sample's response tokens: ``values[offsets[s]:offsets[s+1]]`` for sample s.

    ``values`` ``(N_tokens, L_c)`` float32, ``offsets`` ``(S+1,)`` int64; indexed by
    ``sample_idx``, so batch order and padding side are irrelevant.
    """

    values: torch.Tensor
    offsets: torch.Tensor

    @classmethod
    def empty(cls, counts: Sequence[int], n_layers: int) -> "AnchorCache":
        offsets = torch.zeros(len(counts) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(torch.tensor(list(counts), dtype=torch.long), 0)
        return cls(torch.full((int(offsets[-1]), n_layers), float("nan")), offsets)

    @property
    def n_samples(self) -> int:
        return len(self.offsets) - 1

    def counts(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def rows(self, sample_idx: torch.Tensor) -> torch.Tensor:
        """Flat row indices of the given samples' tokens, in batch order."""
        idx = sample_idx.cpu()
        starts, counts = self.offsets[idx], self.counts()[idx]
        return torch.repeat_interleave(starts - torch.cumsum(counts, 0) + counts, counts) + torch.arange(int(counts.sum()))

    def put(self, sample_idx: torch.Tensor, z0: torch.Tensor) -> None:
        self.values[self.rows(sample_idx)] = z0.detach().float().cpu()

    def get(self, sample_idx: torch.Tensor, device: torch.device) -> torch.Tensor:
        return self.values[self.rows(sample_idx)].to(device, non_blocking=True)


# ---------------------------------------------------------------------------------------------
# The regularizer
# ---------------------------------------------------------------------------------------------


class ProCon(Regularizer):
    """ProCon projection constraint (unweighted; α is the trainer's scheduled coefficient)."""

    name = "procon"
    needs_hidden_states = True
    zero_at_start = True  # z == z0 before the first update

    def __init__(self, config: ProConConfig | None = None, **overrides: Any):
        if config is not None and overrides:
            raise TypeError("pass either a ProConConfig or keyword overrides, not both")
        self.config = config or ProConConfig(**overrides)
        self.directions: torch.Tensor | None = None  # (L, D) float32 unit rows, original model
        self.layers: list[int] = []
        self.anchors: AnchorCache | None = None
        self._model = None
        self._frozen = None  # full fine-tuning + online: a frozen copy of the original model

    # -- setup ---------------------------------------------------------------------------------

    def setup(self, trainer: Any) -> dict[str, Any]:
        cfg = self.config
        model = trainer.model
        self._model = model
        lora = is_lora(model)
        resuming = getattr(trainer, "resuming_from", None) is not None
        report: dict[str, Any] = {"anchor": cfg.anchor, "adapter": "lora" if lora else "full", **asdict(cfg)}
        if not lora and resuming and (self.directions is None or (cfg.anchor == "cached" and self.anchors is None)):
            raise RegularizerSetupError(
                "procon: resuming full fine-tuning needs the direction and anchor cache saved in the "
                "checkpoint (regularizers.safetensors); the original weights are gone")
        if cfg.anchor == "online" and not lora and resuming:
            raise RegularizerSetupError(
                "procon: anchor=online under full fine-tuning recomputes z0 from a frozen copy of the "
                "original model, which cannot be rebuilt when resuming; use anchor=cached")

        restored = self.directions is not None
        if not restored:
            report.update(self._extract_direction(trainer))
        n_layers_total = self.directions.shape[0]
        norms = self.directions.norm(dim=-1)
        degenerate = [l for l in range(n_layers_total) if float(norms[l]) == 0.0]
        if cfg.layers == "all":
            layers = [l for l in range(n_layers_total) if l not in degenerate]
        else:
            bad = [l for l in cfg.layers if l >= n_layers_total]
            if bad:
                raise RegularizerSetupError(f"procon.layers {bad} out of range: the model has layers 0..{n_layers_total - 1}")
            zero = [l for l in cfg.layers if l in degenerate]
            if zero:
                raise RegularizerSetupError(
                    f"procon.layers {zero} have a zero refusal direction (harmful and harmless last-token "
                    "activations coincide there, e.g. the embedding layer); constrain other layers")
            layers = list(cfg.layers)
        if restored and self.layers and self.layers != layers:
            raise RegularizerSetupError(f"procon: the checkpoint constrains layers {self.layers}, this config {layers}")
        self.layers = layers
        if not layers:
            raise RegularizerSetupError("procon attached to no layer: every refusal direction is zero")
        report.update({"n_model_layers": n_layers_total, "layers": layers, "n_layers": len(layers),
                       "skipped_zero_direction_layers": degenerate if cfg.layers == "all" else [],
                       "direction_restored_from_checkpoint": restored})

        if cfg.anchor == "cached":
            report.update(self._setup_cache(trainer))
        elif not lora:
            # Full fine-tuning has no adapter switch: keep an untouched copy for z0 (2x weights memory).
            self._frozen = copy.deepcopy(trainer.accelerator.unwrap_model(model)).eval().requires_grad_(False)
            report["online_reference"] = "frozen copy of the original model"
        else:
            report["online_reference"] = "adapters disabled"
        log.info("procon: %d layers %s, anchors %s", len(layers), layers, cfg.anchor)
        return report

    def _extract_direction(self, trainer) -> dict[str, Any]:
        from ..direction.artifact import RefusalDirection
        from ..direction.extract import ExtractConfig, extract_direction
        from ..families import get_blocks

        cfg = self.config
        model, tok = trainer.model, trainer.processing_class
        if cfg.direction is not None:
            rd = RefusalDirection.from_pretrained(cfg.direction)
            source = f"loaded from {cfg.direction}"
        else:
            was_training = model.training
            model.eval()
            try:
                with original_weights(model):
                    rd = extract_direction(model, tok, ExtractConfig(
                        harmful=cfg.direction_harmful, harmless=cfg.direction_harmless,
                        limit=cfg.direction_samples, batch_size=cfg.direction_batch_size))
            finally:
                model.train(was_training)
            source = "extracted at setup from the original weights"
        n_layers = len(get_blocks(model))
        hidden = int(decoder_of(model).config.hidden_size)
        if (rd.n_layers, rd.hidden_size) != (n_layers, hidden):
            raise RegularizerSetupError(
                f"procon: the direction has {rd.n_layers} layers x {rd.hidden_size} units, the model "
                f"{n_layers} x {hidden}; it must be the original model's direction")
        unit, _ = unit_rows(rd.unit(pos=-1).to(torch.float64))  # (L, D); zero rows stay zero
        self.directions = unit.to(torch.float32)
        data = rd.info.get("data", {})
        return {"direction_source": source, "direction_model": rd.info.get("model"),
                "direction_fingerprint": rd.info.get("fingerprint"),
                "direction_n_harmful": data.get("harmful", {}).get("count"),
                "direction_n_harmless": data.get("harmless", {}).get("count")}

    @torch.no_grad()
    def _setup_cache(self, trainer) -> dict[str, Any]:
        dataset = trainer.train_dataset
        counts = dataset.response_counts()
        if self.anchors is not None:
            if self.anchors.n_samples != len(counts) or self.anchors.counts().tolist() != counts:
                raise RegularizerSetupError(
                    "procon: the checkpoint's anchor cache does not match this training set "
                    f"({self.anchors.n_samples} samples there, {len(counts)} here); same data and max_length needed")
            return {"n_samples": len(counts), "n_anchor_tokens": int(self.anchors.values.shape[0]),
                    "anchors_restored_from_checkpoint": True, "anchor_pass_s": 0.0}
        t0, c0 = time.perf_counter(), time.process_time()
        cache = AnchorCache.empty(counts, len(self.layers))
        filled = torch.zeros(len(counts), dtype=torch.bool)
        directions = self.directions[self.layers]
        model = trainer.model
        decoder = decoder_of(model)
        was_training = model.training
        # Eval mode keeps z0 deterministic; for models without dropout outside the (disabled)
        # LoRA branch it is the training forward, and walking the trainer's own first-epoch
        # batches reproduces the hidden states of step 0 bit for bit.
        model.eval()
        try:
            with original_weights(model):
                for batch in self._anchor_batches(trainer, filled):
                    idx = batch["sample_idx"].cpu()
                    new = ~filled[idx]
                    with trainer.autocast_smart_context_manager():
                        hs = decoder(**forward_inputs(batch), output_hidden_states=True).hidden_states
                    mask = batch["labels"] != IGNORE_INDEX  # (B, T)
                    z0 = response_projections(hs, mask, self.layers, directions)  # (N, L_c)
                    keep = new.to(mask.device)[:, None].expand_as(mask)[mask]
                    cache.put(idx[new], z0[keep])
                    filled[idx] = True
        finally:
            model.train(was_training)
        if not filled.all() or not torch.isfinite(cache.values).all():
            raise RegularizerSetupError(f"procon: anchors missing for {int((~filled).sum())} samples")
        self.anchors = cache
        if cache.values.shape[0] == 0:
            raise RegularizerSetupError("procon: the training set has no response tokens to anchor")
        return {"n_samples": len(counts), "n_anchor_tokens": int(cache.values.shape[0]),
                "anchors_restored_from_checkpoint": False, "anchor_pass_s": round(time.perf_counter() - t0, 3),
                "anchor_pass_cpu_s": round(time.process_time() - c0, 3)}

    @staticmethod
    def _anchor_batches(trainer, filled: torch.Tensor):
        """The first epoch's batches as training will see them, then any sample they missed."""
        yield from trainer.get_train_dataloader()
        missing = (~filled).nonzero().flatten().tolist()
        if missing:
            bs = trainer.args.per_device_train_batch_size
            device = trainer.args.device
            for start in range(0, len(missing), bs):
                batch = trainer.data_collator([trainer.train_dataset[i] for i in missing[start:start + bs]])
                yield {k: v.to(device) for k, v in batch.items()}

    # -- the penalty -----------------------------------------------------------------------------

    def __call__(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        if self.directions is None or not self.layers:
            raise RuntimeError("procon: setup(trainer) must run before the penalty is computed")
        if outputs.hidden_states is None:
            raise RuntimeError("procon needs the forward run with output_hidden_states=True")
        mask = inputs["labels"] != IGNORE_INDEX  # (B, T)
        device = mask.device
        directions = self.directions[self.layers].to(device)  # (L_c, D)
        z = response_projections(outputs.hidden_states, mask, self.layers, directions)  # (N, L_c)
        z0 = self._anchors_for(inputs, mask, directions)
        if z0.shape != z.shape:
            raise RuntimeError(
                f"procon: the batch has {z.shape[0]} response tokens but the anchors cover {z0.shape[0]}; "
                "the anchor cache was built for a different tokenisation or max_length")
        owner = torch.arange(mask.shape[0], device=device)[:, None].expand_as(mask)[mask]  # (N,)
        return procon_penalty(z, z0, owner, n_samples=mask.shape[0], cfg=self.config)

    @torch.no_grad()
    def _anchors_for(self, inputs: dict[str, torch.Tensor], mask: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        if self.config.anchor == "cached":
            if "sample_idx" not in inputs or inputs["sample_idx"] is None:
                raise RuntimeError("procon anchor=cached needs 'sample_idx' in every batch (SFTCollator passes it)")
            return self.anchors.get(inputs["sample_idx"], mask.device)
        if self._frozen is not None:
            decoder, ctx = decoder_of(self._frozen), contextlib.nullcontext()
        else:
            decoder, ctx = decoder_of(self._model), original_weights(self._model)
        was_training = decoder.training
        decoder.eval()  # as in the cached pass: z0 never sees dropout
        try:
            with ctx:
                hs = decoder(**forward_inputs(inputs), output_hidden_states=True).hidden_states
        finally:
            decoder.train(was_training)
        return response_projections(hs, mask, self.layers, directions)

    # -- checkpoint state ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        if self.directions is not None:
            state["directions"] = self.directions
            state["layers"] = torch.tensor(self.layers, dtype=torch.long)
        if self.anchors is not None:
            state["anchor_values"] = self.anchors.values
            state["anchor_offsets"] = self.anchors.offsets
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "directions" in state:
            self.directions = state["directions"].to(torch.float32)
            self.layers = [int(l) for l in state["layers"].tolist()]
        if "anchor_values" in state and self.config.anchor == "cached":
            self.anchors = AnchorCache(state["anchor_values"].to(torch.float32), state["anchor_offsets"].to(torch.long))


def from_config(config) -> ProCon:
    """Factory for the method table: options from ``regularizer_options.procon``."""
    options = dict((getattr(config, "regularizer_options", None) or {}).get("procon") or {})
    known = [f.name for f in dataclasses.fields(ProConConfig)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown procon option(s) {unknown}; options: {', '.join(known)}")
    return ProCon(ProConConfig(**options))


__all__ = ["AnchorCache", "ProCon", "ProConConfig", "from_config", "procon_penalty",
           "response_projections"]
