"""ProCon (METHODS.md §2): z = z0 at step 0, growth when hidden states move, cached == online,
the formula and its options, layer handling, the anchor cache, and (slow) a few steps on the
embedded model."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_llama
from safeanchor.data import SFTCollator
from safeanchor.methods.base import RegularizerSetupError
from safeanchor.methods.procon import AnchorCache, ProCon, ProConConfig, procon_penalty, response_projections
from safeanchor.data.batches import forward_inputs
from safeanchor.models import Precision
from safeanchor.train.data import build_train_dataset
from safeanchor.train.run import prepare_model
from safeanchor.train.trainer import SafeTrainer
from test_train import run_tiny, tiny_config, write_data

BF16_AUTOCAST = Precision(torch.float32, torch.bfloat16)  # the CPU training precision of the embedded model


@pytest.fixture
def data(tmp_path):
    return write_data(tmp_path / "data")


def make_trainer(tmp_path, tok, data, *, anchor="cached", use_lora=True, precision=None, padding_side="right",
                 lora_dropout=0.0, **procon):
    """A SafeTrainer with ProCon set up (anchors computed) but not trained.

    LoRA dropout defaults to 0 here so that two forward passes can be compared value for value
    once B != 0 (with dropout each pass draws its own mask)."""
    cfg = tiny_config(tmp_path, data, method="procon", alpha=1.0, use_lora=use_lora, padding_side=padding_side,
                      lora_dropout=lora_dropout, procon={"anchor": anchor, **procon})
    model = make_tiny_llama(len(tok))
    if precision is not None:
        model.safeanchor_precision = precision
    model, tok = prepare_model(cfg, model, tok)
    ds, _ = build_train_dataset(cfg, tok)
    reg = ProCon(ProConConfig(**cfg.regularizer_options["procon"]))
    trainer = SafeTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok,
                          data_collator=SFTCollator(tok.pad_token_id, padding_side),
                          regularizers={"procon": (reg, cfg.schedule())})
    trainer.setup_regularizers()
    return trainer, reg


def penalty_on(trainer, reg, batch, train_mode=True):
    """ProCon on ``batch`` with the trainer's model, in training mode and precision."""
    model = trainer.model
    model.train(train_mode)
    with trainer.autocast_smart_context_manager():
        out = model(**forward_inputs(batch), labels=batch["labels"], output_hidden_states=True)
        return reg(model, batch, out)


def first_batch(trainer):
    return next(iter(trainer.get_train_dataloader()))


def nudge_lora(model, scale: float, seed: int = 1):
    """Move every LoRA B away from 0 (as training would)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(scale * torch.randn(p.shape, generator=g))


# ---------------------------------------------------------------------------------------------
# z == z0 at step 0, and growth
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("anchor", ["cached", "online"])
@pytest.mark.parametrize("precision", [None, BF16_AUTOCAST], ids=["fp32", "bf16-autocast"])
def test_penalty_is_exactly_zero_at_step0_and_grows(tmp_path, tiny_tokenizer, data, anchor, precision):
    trainer, reg = make_trainer(tmp_path, tiny_tokenizer, data, anchor=anchor, precision=precision, lora_dropout=0.05)
    batch = first_batch(trainer)
    assert float(penalty_on(trainer, reg, batch)) == 0.0  # LoRA B = 0 and dropout only on that branch
    values = []
    for scale in (0.01, 0.1, 0.5):
        nudge_lora(trainer.model, scale)
        values.append(float(penalty_on(trainer, reg, batch, train_mode=False)))
    assert 0 < values[0] < values[1] < values[2]


def test_step0_is_exact_for_every_first_epoch_batch_in_training(tmp_path, tiny_tokenizer, data):
    res = run_tiny(tmp_path, tiny_tokenizer, data, method="procon", alpha=1.0, precision=BF16_AUTOCAST,
                   learning_rate=0.0, zero_penalty_guard_steps=0, lr_scheduler_type="constant")
    # with lr 0 the weights never move: every step of the first epoch sees its cached anchors exactly
    assert [s["procon/raw"] for s in res.steps] == [0.0] * 6


def test_full_finetuning_cached_and_online_agree(tmp_path, tiny_tokenizer, data):
    cached, reg_c = make_trainer(tmp_path / "c", tiny_tokenizer, data, anchor="cached", use_lora=False)
    online, reg_o = make_trainer(tmp_path / "o", tiny_tokenizer, data, anchor="online", use_lora=False)
    assert online.reports["procon"]["online_reference"] == "frozen copy of the original model"
    batch = first_batch(cached)
    for trainer in (cached, online):
        with torch.no_grad():
            for p in trainer.model.model.layers[1].self_attn.v_proj.parameters():
                p.mul_(1.5)
    p_c, p_o = penalty_on(cached, reg_c, batch), penalty_on(online, reg_o, batch)
    assert float(p_c) > 0 and float(p_c) == float(p_o)


# ---------------------------------------------------------------------------------------------
# cached == online, shuffling and padding
# ---------------------------------------------------------------------------------------------


def test_cached_and_online_anchors_give_the_same_penalty(tmp_path, tiny_tokenizer, data):
    cached, reg_c = make_trainer(tmp_path / "c", tiny_tokenizer, data, anchor="cached", precision=BF16_AUTOCAST)
    online, reg_o = make_trainer(tmp_path / "o", tiny_tokenizer, data, anchor="online", precision=BF16_AUTOCAST)
    torch.testing.assert_close(reg_c.directions, reg_o.directions, rtol=0, atol=0)
    batches = list(cached.get_train_dataloader())
    for trainer in (cached, online):
        nudge_lora(trainer.model, 0.2)
    for batch in batches:  # the batches the cache was built from: bit-identical
        p_c, p_o = penalty_on(cached, reg_c, batch), penalty_on(online, reg_o, batch)
        assert float(p_c) > 0 and float(p_c) == float(p_o)
    # a batch composed differently (other samples, other padding): equal up to float rounding
    mixed = SFTCollator(tiny_tokenizer.pad_token_id)([cached.train_dataset[i] for i in (23, 0, 11, 5, 17)])
    torch.testing.assert_close(penalty_on(cached, reg_c, mixed), penalty_on(online, reg_o, mixed),
                               rtol=2e-2, atol=1e-4)


def test_cached_anchors_are_robust_to_shuffling_and_padding_side(tmp_path, tiny_tokenizer, data):
    trainer, reg = make_trainer(tmp_path, tiny_tokenizer, data)
    nudge_lora(trainer.model, 0.2)
    items = [trainer.train_dataset[i] for i in (3, 9, 14, 20)]
    reference = penalty_on(trainer, reg, SFTCollator(tiny_tokenizer.pad_token_id, "right")(items))
    for order, side in (((3, 2, 1, 0), "right"), ((0, 1, 2, 3), "left"), ((2, 0, 3, 1), "left")):
        batch = SFTCollator(tiny_tokenizer.pad_token_id, side)([items[i] for i in order])
        torch.testing.assert_close(penalty_on(trainer, reg, batch), reference, rtol=1e-5, atol=1e-6)


def test_cached_anchors_need_sample_idx(tmp_path, tiny_tokenizer, data):
    trainer, reg = make_trainer(tmp_path, tiny_tokenizer, data)
    batch = first_batch(trainer)
    del batch["sample_idx"]
    with pytest.raises(RuntimeError, match="needs 'sample_idx'"):
        penalty_on(trainer, reg, batch)


# ---------------------------------------------------------------------------------------------
# The formula and its options
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    {},  # paper: abs, sum over layers and tokens, mean over samples
    {"norm": "square"},
    {"token_reduction": "mean", "layer_reduction": "mean"},
    {"sample_reduction": "sum", "layers": [2]},
])
def test_penalty_matches_the_formula(tmp_path, tiny_tokenizer, data, options):
    trainer, reg = make_trainer(tmp_path, tiny_tokenizer, data, anchor="online", **options)
    batch = first_batch(trainer)
    model = trainer.model
    with torch.no_grad():
        with model.disable_adapter():
            hs0 = model(**forward_inputs(batch), output_hidden_states=True).hidden_states
        nudge_lora(model, 0.3)
        hs = model(**forward_inputs(batch), output_hidden_states=True).hidden_states
    layers = options.get("layers", [1, 2])  # layer 0 (embeddings) has no direction: skipped under "all"
    assert reg.layers == layers
    r = reg.directions.double()
    per_sample = []
    for b in range(batch["input_ids"].shape[0]):
        tokens = (batch["labels"][b] != -100).nonzero().flatten().tolist()
        dist = torch.tensor([[float(r[l] @ (hs[l][b, t].double() - hs0[l][b, t].double())) for l in layers]
                             for t in tokens])  # (tokens, layers)
        dist = dist.abs() if options.get("norm", "abs") == "abs" else dist.square()
        dist = dist.sum(1) if options.get("layer_reduction", "sum") == "sum" else dist.mean(1)
        per_sample.append(dist.sum() if options.get("token_reduction", "sum") == "sum" else dist.mean())
    expected = torch.stack(per_sample)
    expected = expected.mean() if options.get("sample_reduction", "mean") == "mean" else expected.sum()
    with torch.no_grad():
        got = penalty_on(trainer, reg, batch)
    assert float(got) > 0
    assert float(got) == pytest.approx(float(expected), rel=1e-4)


def test_penalty_reduction_by_hand():
    z = torch.tensor([[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]])  # (tokens, layers)
    z0 = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    owner = torch.tensor([0, 0, 1])
    assert float(procon_penalty(z, z0, owner, n_samples=2, cfg=ProConConfig())) == pytest.approx((3 + 1.5 + 2) / 2)
    sq = ProConConfig(norm="square", token_reduction="mean", sample_reduction="sum")
    assert float(procon_penalty(z, z0, owner, n_samples=2, cfg=sq)) == pytest.approx((5 + 1.25) / 2 + 4)


def test_projections_use_response_tokens_only():
    hs = [torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)]  # (B=2, T=3, D=2)
    mask = torch.tensor([[False, True, True], [False, False, True]])
    z = response_projections(hs, mask, [0], torch.tensor([[1.0, 0.0]]))
    assert z.flatten().tolist() == [2.0, 4.0, 10.0]


# ---------------------------------------------------------------------------------------------
# Setup: direction, layers, anchors
# ---------------------------------------------------------------------------------------------


def test_direction_is_the_original_models_and_fixed(tmp_path, tiny_tokenizer, data):
    from safeanchor.direction.extract import ExtractConfig, extract_direction

    trainer, reg = make_trainer(tmp_path, tiny_tokenizer, data)
    base = make_tiny_llama(len(tiny_tokenizer))
    ref = extract_direction(base, tiny_tokenizer, ExtractConfig(harmful=data["harmful"], harmless=data["harmless"],
                                                                limit=12))
    torch.testing.assert_close(reg.directions, ref.unit(), rtol=0, atol=1e-6)
    assert reg.directions[0].abs().sum() == 0  # embeddings at the last template token: no direction
    rep = trainer.reports["procon"]
    assert rep["layers"] == [1, 2] and rep["skipped_zero_direction_layers"] == [0]
    assert rep["n_samples"] == 24 and rep["n_anchor_tokens"] == sum(trainer.train_dataset.response_counts())
    # training moves the adapter, never r
    before = reg.directions.clone()
    nudge_lora(trainer.model, 0.5)
    penalty_on(trainer, reg, first_batch(trainer))
    assert torch.equal(before, reg.directions)


@pytest.mark.parametrize("layers, message", [
    ([0], r"layers \[0\] have a zero refusal direction"),
    ([7], r"layers \[7\] out of range: the model has layers 0..2"),
])
def test_bad_layers_are_setup_errors(tmp_path, tiny_tokenizer, data, layers, message):
    with pytest.raises(RegularizerSetupError, match=message):
        make_trainer(tmp_path, tiny_tokenizer, data, layers=layers)


def test_procon_config_validation():
    with pytest.raises(ValueError, match="procon.anchor must be one of cached, online"):
        ProConConfig(anchor="sometimes")
    with pytest.raises(ValueError, match="procon.layers must be 'all' or a non-empty list"):
        ProConConfig(layers=[-1])
    assert ProConConfig(layers=3).layers == [3]


def test_anchor_cache_rows_follow_sample_idx():
    cache = AnchorCache.empty([2, 1, 3], n_layers=1)
    cache.values[:, 0] = torch.arange(6, dtype=torch.float32)  # sample 0: 0,1  sample 1: 2  sample 2: 3,4,5
    assert cache.get(torch.tensor([2, 0]), torch.device("cpu")).flatten().tolist() == [3, 4, 5, 0, 1]
    cache.put(torch.tensor([1]), torch.tensor([[9.0]]))
    assert cache.get(torch.tensor([1]), torch.device("cpu")).item() == 9.0


def test_state_dict_round_trip_skips_recomputation(tmp_path, tiny_tokenizer, data):
    trainer, reg = make_trainer(tmp_path / "a", tiny_tokenizer, data)
    state = reg.state_dict()
    assert set(state) == {"directions", "layers", "anchor_values", "anchor_offsets", "refusal_gap"}
    fresh = ProCon(ProConConfig(**reg.config.__dict__))
    fresh.load_state_dict(state)
    other, _ = make_trainer(tmp_path / "b", tiny_tokenizer, data)
    report = fresh.setup(other)
    assert report["anchors_restored_from_checkpoint"] and report["direction_restored_from_checkpoint"]
    assert torch.equal(fresh.anchors.values, reg.anchors.values)


# ---------------------------------------------------------------------------------------------
# Slow: the embedded model
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_procon_on_embedded_model(tmp_path, embedded_cache):
    """A few ProCon steps on SmolLM2-135M (CPU default precision): exact 0 at step 0, then > 0."""
    from safeanchor.train import SafeTrainingConfig, train

    cfg = SafeTrainingConfig(
        output_dir=str(tmp_path / "out"), method="procon", alpha=0.1, train_data="task:arithmetic:train",
        max_train_samples=8, max_length=96, per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3,
        report_to="none", save_strategy="no", progress=False,
        regularizer_options={"procon": {"direction_samples": 16}})
    res = train(cfg)
    raw = [s["procon/raw"] for s in res.steps]
    assert raw[0] == 0.0 and all(v > 0 for v in raw[1:])
    rep = res.reports["procon"]
    assert rep["n_layers"] == 29 and rep["skipped_zero_direction_layers"] == [0]
    assert rep["n_samples"] == 8 and rep["step0_raw"] == 0.0
    assert (res.output_dir / "adapter_model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------
# The paper's warm-up placement: m epochs with their own learning-rate schedule, then a fresh one
# ---------------------------------------------------------------------------------------------


def test_warmup_before_restarts_the_learning_rate_after_the_warmup(tmp_path, tiny_tokenizer, data):
    # 24 samples / batch 4 = 6 updates per epoch; m = 1 epoch of α before n = 2 epochs: 18 updates
    res = run_tiny(tmp_path, tiny_tokenizer, data, method="procon_wu", num_train_epochs=3, schedule_length=1,
                   lr_scheduler_type="linear", warmup_steps=0)
    assert tiny_config(tmp_path, data, method="procon_wu", num_train_epochs=3).warmup_placement == "before"
    lr = [s["learning_rate"] for s in res.steps]
    coef = [s["procon/coef"] for s in res.steps]
    assert len(lr) == 18 and coef == [1.0] * 6 + [0.0] * 12
    base = 1e-2
    assert lr[:6] == pytest.approx([base * (1 - k / 6) for k in range(6)])  # the warm-up's own linear decay
    assert lr[6:] == pytest.approx([base * (1 - k / 12) for k in range(12)])  # a fresh schedule for the n epochs


def test_warmup_inside_keeps_one_schedule_and_before_needs_a_longer_run(tmp_path, tiny_tokenizer, data):
    from safeanchor.configfile import ConfigError

    res = run_tiny(tmp_path, tiny_tokenizer, data, method="procon_wu", num_train_epochs=2, schedule_length=1,
                   warmup_placement="inside", lr_scheduler_type="linear", warmup_steps=0)
    assert [s["learning_rate"] for s in res.steps] == pytest.approx([1e-2 * (1 - k / 12) for k in range(12)])
    with pytest.raises(ConfigError, match="num_train_epochs=1 must exceed schedule_length=1"):
        tiny_config(tmp_path, data, method="procon_wu", num_train_epochs=1, schedule_length=1)
    with pytest.raises(ConfigError, match="warmup_placement=before needs alpha_schedule=warmup"):
        tiny_config(tmp_path, data, method="procon", warmup_placement="before")


# ---------------------------------------------------------------------------------------------
# Scale options (extensions): alpha_units, layer_scale, huber; the gradient; α changes the update
# ---------------------------------------------------------------------------------------------


def test_penalty_scale_options_formula():
    z0 = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    z = z0 + torch.tensor([[0.5, 5.0], [0.05, -0.5], [-1.0, 10.0]])
    owner = torch.tensor([0, 0, 1])
    paper = procon_penalty(z, z0, owner, n_samples=2, cfg=ProConConfig())
    assert float(paper) == pytest.approx(((0.5 + 5 + 0.05 + 0.5) + (1 + 10)) / 2)
    scaled = procon_penalty(z, z0, owner, n_samples=2, cfg=ProConConfig(), layer_scale=torch.tensor([1.0, 10.0]),
                            units=4.0)
    assert float(scaled) == pytest.approx(((0.5 + 0.5 + 0.05 + 0.05) + (1 + 1)) / 2 / 4)
    huber = procon_penalty(z, z0, owner, n_samples=2, cfg=ProConConfig(norm="huber", huber_delta=0.1))
    # |d| < 0.1 is quadratic (0.05 -> 0.5 * 0.05**2 / 0.1), the rest linear (|d| - 0.05)
    want = ((0.45 + 4.95 + 0.0125 + 0.45) + (0.95 + 9.95)) / 2
    assert float(huber) == pytest.approx(want)
    with pytest.raises(ValueError, match="layer_scale=z0_std reads the anchor cache"):
        ProConConfig(layer_scale="z0_std", anchor="online")
    with pytest.raises(ValueError, match="alpha_units must be one of"):
        ProConConfig(alpha_units="token")


def test_per_token_layer_units_and_layer_scales_at_setup(tmp_path, tiny_tokenizer, data):
    plain, reg_p = make_trainer(tmp_path / "p", tiny_tokenizer, data)
    units, reg_u = make_trainer(tmp_path / "u", tiny_tokenizer, data, alpha_units="per_token_layer",
                                layer_scale="z0_std")
    counts = units.train_dataset.response_counts()
    assert reg_u.units == pytest.approx(len(reg_u.layers) * sum(counts) / len(counts))
    assert reg_u.layer_scale.shape == (len(reg_u.layers),) and bool((reg_u.layer_scale > 0).all())
    batch = first_batch(plain)
    for trainer in (plain, units):
        nudge_lora(trainer.model, 0.2)
    p, u = float(penalty_on(plain, reg_p, batch, False)), float(penalty_on(units, reg_u, batch, False))
    assert p > 0 and u > 0 and u != pytest.approx(p)
    scale = reg_u.layer_scale
    reg_u.layer_scale = torch.ones_like(scale)  # the same model and anchors: only the divisors differ
    assert float(penalty_on(units, reg_u, batch, False)) == pytest.approx(p / reg_u.units, rel=1e-5)
    reg_u.layer_scale = scale
    gap, reg_g = make_trainer(tmp_path / "g", tiny_tokenizer, data, layer_scale="refusal_gap")
    assert reg_g.layer_scale.shape == (len(reg_g.layers),) and bool((reg_g.layer_scale > 0).all())


def test_penalty_gradient_matches_finite_differences(tmp_path, tiny_tokenizer, data):
    trainer, reg = make_trainer(tmp_path, tiny_tokenizer, data, norm="square")
    nudge_lora(trainer.model, 0.1)
    batch = first_batch(trainer)
    param = next(p for n, p in trainer.model.named_parameters() if "lora_B" in n)
    trainer.model.eval()
    value = penalty_on(trainer, reg, batch, train_mode=False)
    (grad,) = torch.autograd.grad(value, [param])
    g = torch.Generator().manual_seed(3)
    direction = torch.randn(param.shape, generator=g)
    direction /= direction.norm()
    eps = 1e-2
    with torch.no_grad():
        param.add_(eps * direction)
        up = float(penalty_on(trainer, reg, batch, train_mode=False))
        param.sub_(2 * eps * direction)
        down = float(penalty_on(trainer, reg, batch, train_mode=False))
        param.add_(eps * direction)
    numeric = (up - down) / (2 * eps)
    analytic = float((grad * direction).sum())
    assert analytic != 0 and numeric == pytest.approx(analytic, rel=2e-2)


def test_alpha_changes_the_update(tmp_path, tiny_tokenizer, data):
    def adapter(alpha, sub):
        res = run_tiny(tmp_path / sub, tiny_tokenizer, data, method="procon", alpha=alpha, zero_penalty_guard_steps=0,
                       max_steps=3)
        return {n: p.detach().clone() for n, p in res.model.named_parameters() if "lora_" in n}, res
    a0, r0 = adapter(0.0, "a0")
    a1, r1 = adapter(1.0, "a1")
    assert [s["ce"] for s in r0.steps][0] == [s["ce"] for s in r1.steps][0]  # same first batch
    assert r1.steps[1]["procon/raw"] > 0 and "procon/ratio" in r1.steps[1]
    assert any(not torch.equal(a0[n], a1[n]) for n in a0)


@pytest.mark.parametrize("anchor", ["cached", "online"])
def test_last_prompt_position_is_anchored_too(tmp_path, tiny_tokenizer, data, anchor):
    trainer, reg = make_trainer(tmp_path, tiny_tokenizer, data, anchor=anchor, positions="response_and_last_prompt")
    batch = first_batch(trainer)
    mask = reg.constrained_mask(batch["labels"])
    response = batch["labels"] != -100
    assert int(mask.sum()) == int(response.sum()) + int(response.any(dim=1).sum())
    for row in range(mask.shape[0]):
        first = int(response[row].int().argmax())
        assert bool(mask[row, first - 1]) and not bool(response[row, first - 1])
    assert float(penalty_on(trainer, reg, batch)) == 0.0  # exact at step 0 with the extra position
    nudge_lora(trainer.model, 0.2)
    assert float(penalty_on(trainer, reg, batch, train_mode=False)) > 0


def test_direction_folder_is_checked_by_fingerprint(tmp_path, tiny_tokenizer, data):
    from safeanchor.direction.extract import ExtractConfig, extract_direction
    from safeanchor.data import load_source

    def saved(seed: int):
        model = make_tiny_llama(len(tiny_tokenizer), seed=seed)
        rd = extract_direction(model, tiny_tokenizer, ExtractConfig(limit=12, batch_size=4),
                               harmful=load_source(data["harmful"]), harmless=load_source(data["harmless"]))
        rd.save_pretrained(tmp_path / f"rd{seed}")
        return str(tmp_path / f"rd{seed}")

    own, other = saved(0), saved(1)  # the trained model is make_tiny_llama(seed 0); seed 1 has the same shapes
    trainer, reg = make_trainer(tmp_path / "own", tiny_tokenizer, data, direction=own)
    assert trainer.reports["procon"]["direction_source"] == f"loaded from {own}"
    with pytest.raises(RegularizerSetupError, match="fingerprint .* but the model being trained has"):
        make_trainer(tmp_path / "other", tiny_tokenizer, data, direction=other)
    trainer, _ = make_trainer(tmp_path / "allowed", tiny_tokenizer, data, direction=other, allow_direction_mismatch=True)
    assert trainer.reports["procon"]["direction_source"] == f"loaded from {other}"


@pytest.mark.parametrize("precision", [None, BF16_AUTOCAST], ids=["fp32", "bf16-autocast"])
def test_noise_floor_is_measured_and_inexact_anchors_fall_back(tmp_path, tiny_tokenizer, data, precision, monkeypatch):
    import safeanchor.methods.procon as procon_mod

    trainer, reg = make_trainer(tmp_path / "a", tiny_tokenizer, data, precision=precision)
    report = trainer.reports["procon"]
    assert report["noise_floor_relative"] >= 0 and "noise_floor_max_abs" in report
    if report["noise_floor_relative"] <= procon_mod.NOISE_TOLERANCE:
        assert reg.config.anchor == "cached" and reg.anchors is not None and "anchor_fallback" not in report
    # a tolerance of -1 marks any composition as inexact: LoRA runs fall back to online anchors and say so
    monkeypatch.setattr(procon_mod, "NOISE_TOLERANCE", -1.0)
    trainer, reg = make_trainer(tmp_path / "b", tiny_tokenizer, data, precision=precision)
    assert reg.config.anchor == "online" and reg.anchors is None
    assert trainer.reports["procon"]["anchor_fallback"].startswith("online")
    assert float(penalty_on(trainer, reg, first_batch(trainer))) == 0.0  # online anchors are exact at θ0
