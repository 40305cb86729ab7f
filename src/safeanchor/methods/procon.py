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
from ..distributed import all_reduce, broadcast, rank, world_size
from ..models import model_precision

log = logging.getLogger(__name__)

ANCHOR_MODES = ("cached", "online")
NORMS = ("abs", "square", "huber")
REDUCTIONS = ("sum", "mean")
ALPHA_UNITS = ("sum", "per_token_layer")
POSITIONS = ("response", "response_and_last_prompt")
LAYER_SCALES = ("none", "z0_std", "refusal_gap")
NOISE_TOLERANCE = 1e-4  # cached anchors: the largest mean relative error at θ0 under a new batch composition


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
    alpha_units: str = field(default="sum", metadata={
        "help": "what α multiplies: sum (paper: Σ_l Σ_j |z − z0|, whose weight against the CE grows with the "
                "layers L_c and the response length m̄) or per_token_layer (the same sum divided by L_c·m̄, m̄ = the "
                "training set's mean response tokens per sample: the paper's objective rescaled so that α means the "
                "same on any model and data; an extension)"})
    layer_scale: str = field(default="none", metadata={
        "help": "divide each layer's z − z0 by a scale of that layer: none (paper), z0_std (the std of the "
                "anchors z0 over the training set's response tokens; anchor=cached) or refusal_gap (‖μ_harmful − "
                "μ_harmless‖ at the layer, from the direction's extraction); an extension: hidden-state scale grows "
                "with depth, so the literal sum weighs deep layers most"})
    positions: str = field(default="response", metadata={
        "help": "the constrained token positions: response (the paper: the response tokens only) or "
                "response_and_last_prompt (also the last prompt token, where the model decides to refuse and where "
                "the r-direction was measured; an extension beyond the paper)"})
    huber_delta: float = field(default=0.1, metadata={
        "help": "norm=huber: the distance (in units of layer_scale, or raw units with layer_scale none) below which "
                "the penalty is quadratic, so its gradient fades near the anchor instead of the L1 sign's constant"})
    direction: str | None = field(default=None, metadata={
        "help": "a saved RefusalDirection folder of the ORIGINAL model; default: extract it at setup"})
    allow_direction_mismatch: bool = field(default=False, metadata={
        "help": "accept a direction folder whose model fingerprint differs from the model being trained "
                "(e.g. the same weights saved in another precision); shapes are still checked"})
    direction_harmful: str = field(default="bundled:harmful:train", metadata={
        "help": "harmful prompts for extracting r (data source)"})
    direction_harmless: str = field(default="bundled:harmless:train", metadata={
        "help": "harmless prompts for extracting r (data source)"})
    direction_samples: int = field(default=128, metadata={
        "help": "prompts per side for extracting r (reference: 128 + 128)"})
    direction_batch_size: int = field(default=16, metadata={"help": "batch size of the extraction forward passes"})

    def __post_init__(self) -> None:
        for name, allowed in (("anchor", ANCHOR_MODES), ("norm", NORMS), ("token_reduction", REDUCTIONS),
                              ("layer_reduction", REDUCTIONS), ("sample_reduction", REDUCTIONS),
                              ("alpha_units", ALPHA_UNITS), ("layer_scale", LAYER_SCALES), ("positions", POSITIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"procon.{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.layers != "all":
            if isinstance(self.layers, int) and not isinstance(self.layers, bool):
                self.layers = [self.layers]
            if (not isinstance(self.layers, (list, tuple)) or not self.layers
                    or not all(isinstance(l, int) and not isinstance(l, bool) and l >= 0 for l in self.layers)):
                raise ValueError(f"procon.layers must be 'all' or a non-empty list of layer indices >= 0; got {self.layers!r}")
            self.layers = sorted(set(self.layers))
        if (isinstance(self.huber_delta, bool) or not isinstance(self.huber_delta, (int, float))
                or not math.isfinite(self.huber_delta) or self.huber_delta <= 0):
            raise ValueError(f"procon.huber_delta must be a number > 0; got {self.huber_delta!r}")
        if self.layer_scale == "z0_std" and self.anchor != "cached":
            raise ValueError("procon.layer_scale=z0_std reads the anchor cache: it needs anchor=cached")
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
                   cfg: ProConConfig, layer_scale: torch.Tensor | None = None, units: float = 1.0) -> torch.Tensor:
    """Reduce ``|z − z0|`` ``(N_tokens, L_c)`` to a scalar: layers, then tokens per sample, then samples.

    ``owner`` ``(N_tokens,)`` is the batch row of each token; ``layer_scale`` ``(L_c,)`` divides each
    layer's difference (``layer_scale`` option); the result is divided by ``units`` (``alpha_units``).
    """
    diff = z - z0
    if layer_scale is not None:
        diff = diff / layer_scale.to(diff.device, diff.dtype)
    if cfg.norm == "abs":
        dist = diff.abs()  # (N, L_c)
    elif cfg.norm == "square":
        dist = diff.square()
    else:  # huber: quadratic below delta (the gradient fades near the anchor), linear above
        a, delta = diff.abs(), float(cfg.huber_delta)
        dist = torch.where(a < delta, 0.5 * a.square() / delta, a - 0.5 * delta)
    per_token = dist.sum(-1) if cfg.layer_reduction == "sum" else dist.mean(-1)  # (N,)
    per_sample = torch.zeros(n_samples, device=z.device, dtype=per_token.dtype).index_add(0, owner, per_token)  # (B,)
    if cfg.token_reduction == "mean":
        counts = torch.bincount(owner, minlength=n_samples).clamp(min=1)
        per_sample = per_sample / counts
    out = per_sample.mean() if cfg.sample_reduction == "mean" else per_sample.sum()
    return out / units if units != 1.0 else out


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
        self.layer_scale: torch.Tensor | None = None  # (L_c,) the layer_scale option's divisors
        self.units = 1.0  # the alpha_units option's divisor (L_c·m̄ for per_token_layer)
        self._gap: torch.Tensor | None = None  # (L,) ‖μ_h − μ_b‖ per layer, from the extraction
        self._z0_std: torch.Tensor | None = None  # (L_c,) kept when cached anchors fall back to online

    @property
    def hidden_state_layers(self) -> list[int]:
        """The block inputs the penalty reads (known after setup)."""
        return list(self.layers)

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
            if world_size() > 1:  # every rank extracted the same; rank 0's copy makes it certain
                self.directions = broadcast(self.directions)
                self._gap = broadcast(self._gap)
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
        report.update(self._setup_scales(trainer))
        log.info("procon: %d layers %s, anchors %s", len(layers), layers, cfg.anchor)
        return report

    def _setup_scales(self, trainer) -> dict[str, Any]:
        """The divisors of the scale options (constants of the original model and the data)."""
        cfg = self.config
        out: dict[str, Any] = {}
        if cfg.alpha_units == "per_token_layer":
            counts = self.position_counts(trainer)
            m_bar = sum(counts) / max(1, len(counts))
            if m_bar <= 0:
                raise RegularizerSetupError("procon: alpha_units=per_token_layer needs response tokens")
            self.units = float(len(self.layers) * m_bar)
            out.update(alpha_units_divisor=self.units, mean_response_tokens=m_bar)
        if cfg.layer_scale == "z0_std":
            if self.anchors is not None:
                vals = self.anchors.values  # (N_tokens, L_c)
                self.layer_scale = vals.to(torch.float64).std(dim=0).clamp_min(1e-12).to(torch.float32)
            else:  # the cache was dropped for online anchors; its spread was kept
                self.layer_scale = self._z0_std
        elif cfg.layer_scale == "refusal_gap":
            if self._gap is None:
                raise RegularizerSetupError("procon: layer_scale=refusal_gap needs the direction's mean difference "
                                            "(restored runs keep it in the checkpoint)")
            self.layer_scale = self._gap[self.layers].clamp_min(1e-12).to(torch.float32)
        if self.layer_scale is not None:
            out["layer_scale_values"] = [round(float(v), 6) for v in self.layer_scale]
        return out

    def _extract_direction(self, trainer) -> dict[str, Any]:
        from ..direction.artifact import RefusalDirection
        from ..direction.extract import ExtractConfig, extract_direction
        from ..families import get_blocks

        cfg = self.config
        model, tok = trainer.model, trainer.processing_class
        if cfg.direction is not None:
            from ..models import model_fingerprint

            rd = RefusalDirection.from_pretrained(cfg.direction)
            source = f"loaded from {cfg.direction}"
            base_fp, saved_fp = model_fingerprint(model, base_only=True), rd.info.get("fingerprint")
            if saved_fp != base_fp and not cfg.allow_direction_mismatch:
                raise RegularizerSetupError(
                    f"procon.direction {cfg.direction}: extracted from a model with fingerprint {saved_fp} "
                    f"({rd.info.get('model')!r}), but the model being trained has {base_fp}; ProCon anchors the "
                    "ORIGINAL model's direction. Extract it from this model (safeanchor direction), or set "
                    "procon.allow_direction_mismatch: true if the weights are the same in another precision")
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
        self._gap = rd.mean_diff[rd.pos_index(-1)].to(torch.float64).norm(dim=-1).to(torch.float32)  # (L,)
        data = rd.info.get("data", {})
        return {"direction_source": source, "direction_model": rd.info.get("model"),
                "direction_fingerprint": rd.info.get("fingerprint"),
                "direction_n_harmful": data.get("harmful", {}).get("count"),
                "direction_n_harmless": data.get("harmless", {}).get("count")}

    @torch.no_grad()
    def _setup_cache(self, trainer) -> dict[str, Any]:
        counts = self.position_counts(trainer)
        if self.anchors is not None:
            if self.anchors.n_samples != len(counts) or self.anchors.counts().tolist() != counts:
                raise RegularizerSetupError(
                    "procon: the checkpoint's anchor cache does not match this training set "
                    f"({self.anchors.n_samples} samples there, {len(counts)} here); same data and max_length needed")
            return {"n_samples": len(counts), "n_anchor_tokens": int(self.anchors.values.shape[0]),
                    "anchors_restored_from_checkpoint": True, "anchor_pass_s": 0.0}
        t0, c0 = time.perf_counter(), time.process_time()
        cache = AnchorCache.empty(counts, len(self.layers))
        directions = self.directions[self.layers]
        ws, me = world_size(), rank()
        # 1. this rank's first-epoch batches, exactly as training will see them (step 0 is then exact);
        #    under data parallelism each rank walks its own shard
        filled = self._fill_anchors(trainer, cache, directions, trainer.get_train_dataloader(), ())
        # 2. one owner per sample: the lowest rank that computed it (even_batches repeats samples across
        #    ranks); samples no rank's first epoch holds (drop_last, max_steps) go round-robin to the ranks
        owner = all_reduce(torch.where(filled, me, ws).long(), "min")
        missing = (owner == ws).nonzero().flatten()
        owner[missing] = torch.arange(len(missing), dtype=torch.long) % ws
        mine = missing[owner[missing] == me].tolist()
        self._fill_anchors(trainer, cache, directions, None, mine)
        # 3. gather the shards: each row summed from its owner's value and zeros elsewhere (exact; a MAX
        #    over a zero buffer would lose negative projections)
        if ws > 1:
            own_rows = torch.repeat_interleave(owner == me, cache.counts())
            cache.values[~own_rows] = 0.0
            cache.values = all_reduce(cache.values, "sum")
        # every row starts as NaN: one still NaN is a sample whose owner never computed it
        bad_rows = ~torch.isfinite(cache.values).all(dim=1)  # (N_tokens,)
        if bool(bad_rows.any()):
            sample_of_row = torch.repeat_interleave(torch.arange(len(counts)), cache.counts())
            raise RegularizerSetupError(f"procon: anchors missing for {len(sample_of_row[bad_rows].unique())} samples")
        self.anchors = cache
        if cache.values.shape[0] == 0:
            raise RegularizerSetupError("procon: the training set has no response tokens to anchor")
        out = {"n_samples": len(counts), "n_anchor_tokens": int(cache.values.shape[0]),
               "anchors_restored_from_checkpoint": False, "anchor_world_size": ws,
               "anchor_samples_this_rank": int((owner == me).sum()), "anchor_pass_s": round(time.perf_counter() - t0, 3),
               "anchor_pass_cpu_s": round(time.process_time() - c0, 3)}
        out.update(self._noise_floor(trainer, directions))
        return out

    @torch.no_grad()
    def _noise_floor(self, trainer, directions: torch.Tensor, n_batches: int = 4) -> dict[str, Any]:
        """The penalty at θ0 on batches of another composition (the samples in reverse order):
        later epochs reshuffle, so padding and batch shapes change; under bf16 that can move z0.
        Cached anchors whose relative error exceeds ``NOISE_TOLERANCE`` are replaced by online
        anchors (LoRA) or reported (full fine-tuning), and the run says so."""
        bs = trainer.args.per_device_train_batch_size
        order = list(range(len(trainer.train_dataset)))[::-1][: n_batches * bs]
        model, decoder = trainer.model, decoder_of(trainer.model)
        worst, total, scale = 0.0, 0.0, 0.0
        was_training = model.training
        model.eval()
        try:
            with original_weights(model):
                for batch in _batches_of(trainer, order):
                    with trainer.autocast_smart_context_manager():
                        hs = decoder(**forward_inputs(batch), output_hidden_states=True).hidden_states
                    mask = self.constrained_mask(batch["labels"])
                    z = response_projections(hs, mask, self.layers, directions)
                    z0 = self.anchors.get(batch["sample_idx"], mask.device)
                    diff = (z - z0).abs()
                    worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
                    total += float(diff.sum())
                    scale += float(z0.abs().sum())
        finally:
            model.train(was_training)
        relative = total / scale if scale > 0 else 0.0
        # ranks must agree on a fallback to online anchors
        relative = float(all_reduce(torch.tensor(relative, dtype=torch.float64), "max"))
        worst = float(all_reduce(torch.tensor(worst, dtype=torch.float64), "max"))
        report = {"noise_floor_max_abs": worst, "noise_floor_relative": relative}
        if relative > NOISE_TOLERANCE:
            msg = (f"procon: cached anchors are not exact under another batch composition (mean |z - z0| / |z0| = "
                   f"{relative:.2e} at the original weights; precision {model_precision(model)})")
            self._z0_std = self.anchors.values.to(torch.float64).std(dim=0).clamp_min(1e-12).to(torch.float32)
            if is_lora(model):
                self.config.anchor = "online"
                self.anchors = None
                report["anchor_fallback"] = "online (cached anchors were inexact across batch compositions)"
                log.warning("%s: falling back to online anchors (one extra forward pass per step)", msg)
            else:
                log.warning("%s; full fine-tuning keeps them (online would need a frozen copy)", msg)
        return report

    def _fill_anchors(self, trainer, cache: AnchorCache, directions: torch.Tensor, loader, indices) -> torch.Tensor:
        """z0 (original weights, eval mode) of the samples in ``loader``'s batches, or of the samples at
        ``indices``, into ``cache`` (a sample's first computation wins); returns which samples were filled.

        Eval mode keeps z0 deterministic; for models without dropout outside the (disabled) LoRA branch
        it is the training forward, so the trainer's own first-epoch batches reproduce the hidden states
        of step 0 bit for bit."""
        filled = torch.zeros(cache.n_samples, dtype=torch.bool)
        model = trainer.model
        decoder = decoder_of(model)
        was_training = model.training
        model.eval()
        try:
            with original_weights(model):
                for batch in (loader if loader is not None else _batches_of(trainer, list(indices))):
                    idx = batch["sample_idx"].cpu()
                    new = ~filled[idx]
                    with trainer.autocast_smart_context_manager():
                        hs = decoder(**forward_inputs(batch), output_hidden_states=True).hidden_states
                    mask = self.constrained_mask(batch["labels"])  # (B, T)
                    z0 = response_projections(hs, mask, self.layers, directions)  # (N, L_c)
                    keep = new.to(mask.device)[:, None].expand_as(mask)[mask]
                    cache.put(idx[new], z0[keep])
                    filled[idx] = True
        finally:
            model.train(was_training)
        return filled

    # -- the constrained positions ---------------------------------------------------------------

    def constrained_mask(self, labels: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` bool: the response tokens (labels kept), plus the last prompt token with
        ``positions=response_and_last_prompt``."""
        mask = labels != IGNORE_INDEX
        if self.config.positions == "response":
            return mask
        has = mask.any(dim=1)
        first = mask.int().argmax(dim=1)  # the first response position of each row
        if bool((has & (first == 0)).any()):
            raise RuntimeError("procon positions=response_and_last_prompt: a sample's response starts at position 0 "
                               "(no prompt token before it)")
        rows = torch.arange(labels.shape[0], device=labels.device)[has]
        mask = mask.clone()
        mask[rows, first[has] - 1] = True
        return mask

    def position_counts(self, trainer) -> list[int]:
        """Constrained tokens per training sample (the anchor cache's layout)."""
        counts = trainer.response_counts() if hasattr(trainer, "response_counts") else trainer.train_dataset.response_counts()
        if self.config.positions == "response":
            return counts
        return [c + 1 if c > 0 else 0 for c in counts]

    # -- the penalty -----------------------------------------------------------------------------

    def __call__(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        if self.directions is None or not self.layers:
            raise RuntimeError("procon: setup(trainer) must run before the penalty is computed")
        if outputs.hidden_states is None:
            raise RuntimeError("procon needs the forward run with output_hidden_states=True")
        mask = self.constrained_mask(inputs["labels"])  # (B, T)
        device = mask.device
        directions = self.directions[self.layers].to(device)  # (L_c, D)
        z = response_projections(outputs.hidden_states, mask, self.layers, directions)  # (N, L_c)
        z0 = self._anchors_for(inputs, mask, directions)
        if z0.shape != z.shape:
            raise RuntimeError(
                f"procon: the batch has {z.shape[0]} response tokens but the anchors cover {z0.shape[0]}; "
                "the anchor cache was built for a different tokenisation or max_length")
        owner = torch.arange(mask.shape[0], device=device)[:, None].expand_as(mask)[mask]  # (N,)
        return procon_penalty(z, z0, owner, n_samples=mask.shape[0], cfg=self.config, layer_scale=self.layer_scale,
                              units=self.units)

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
        if self._gap is not None:
            state["refusal_gap"] = self._gap
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "directions" in state:
            self.directions = state["directions"].to(torch.float32)
            self.layers = [int(l) for l in state["layers"].tolist()]
        if "refusal_gap" in state:
            self._gap = state["refusal_gap"].to(torch.float32)
        if "anchor_values" in state and self.config.anchor == "cached":
            self.anchors = AnchorCache(state["anchor_values"].to(torch.float32), state["anchor_offsets"].to(torch.long))


def _batches_of(trainer, indices: Sequence[int]):
    """The training samples at ``indices``, collated in batches of the per-device size, on the device."""
    bs, device = trainer.args.per_device_train_batch_size, trainer.args.device
    for start in range(0, len(indices), bs):
        batch = trainer.data_collator([trainer.train_dataset[i] for i in indices[start:start + bs]])
        yield {k: v.to(device) for k, v in batch.items()}


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
