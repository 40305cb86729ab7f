"""AsFT: the factored penalty equals the dense formula, modules attach by name, errors are clear."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conftest import make_tiny_llama
from safeanchor.methods.weight_direction import ModuleAnchor, lora_modules
from safeanchor.methods.asft import AsFT, AsFTConfig, asft_module_penalty
from safeanchor.methods.base import RegularizerSetupError

SHAPES = [(8, 5, 2), (5, 8, 3), (16, 16, 4), (7, 3, 1), (12, 20, 6)]  # (out, in, r)


def dense_penalty(B, A, P, scaling=1.0):
    """‖(I - P) ΔW‖_F² with the out×out matrix formed explicitly (the reference formula)."""
    dW = scaling * B @ A
    return torch.linalg.matrix_norm((torch.eye(P.shape[0], dtype=P.dtype) - P) @ dW) ** 2


@pytest.mark.parametrize("out_f,in_f,r", SHAPES)
@pytest.mark.parametrize("scaling", [1.0, 2.5])
def test_factored_penalty_equals_dense(out_f, in_f, r, scaling):
    g = torch.Generator().manual_seed(out_f * 100 + in_f * 10 + r)
    V, B, A = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((out_f, in_f), (out_f, r), (r, in_f)))
    C = V @ V.T / torch.linalg.matrix_norm(V)  # Frobenius, not squared (METHODS.md §3)
    got = asft_module_penalty(B, A, ModuleAnchor.from_direction(V), scaling)
    torch.testing.assert_close(got, dense_penalty(B, A, C, scaling), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("out_f,in_f,r", SHAPES)
def test_rank_k_equals_dense_projector(out_f, in_f, r):
    g = torch.Generator().manual_seed(7 + out_f)
    V, B, A = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((out_f, in_f), (out_f, r), (r, in_f)))
    k = min(3, min(out_f, in_f))
    U = torch.linalg.svd(V).U[:, :k]
    P = U @ U.T
    torch.testing.assert_close(P @ P, P)  # a true projector, unlike C
    got = asft_module_penalty(B, A, ModuleAnchor.from_direction(V, rank=k))
    torch.testing.assert_close(got, dense_penalty(B, A, P), rtol=1e-10, atol=1e-10)


def test_rank_k_is_zero_inside_span_but_c_is_not():
    g = torch.Generator().manual_seed(3)
    V = torch.randn(10, 6, generator=g, dtype=torch.float64)
    U = torch.linalg.svd(V).U[:, :2]
    B = U @ torch.randn(2, 4, generator=g, dtype=torch.float64)  # columns inside span(U_2)
    A = torch.randn(4, 6, generator=g, dtype=torch.float64)
    assert float(asft_module_penalty(B, A, ModuleAnchor.from_direction(V, rank=2))) == pytest.approx(0.0, abs=1e-20)
    # C = VVᵀ/‖V‖_F is not idempotent, so the paper's penalty does not vanish there
    assert float(asft_module_penalty(B, A, ModuleAnchor.from_direction(V))) > 1e-3


def test_penalty_is_differentiable_and_zero_for_zero_b():
    V = torch.randn(6, 5, dtype=torch.float64)
    B = torch.zeros(6, 2, dtype=torch.float64, requires_grad=True)
    A = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    p = asft_module_penalty(B, A, ModuleAnchor.from_direction(V))
    assert float(p.detach()) == 0.0
    B2 = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    asft_module_penalty(B2, A, ModuleAnchor.from_direction(V)).backward()
    assert B2.grad.abs().sum() > 0 and A.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# On a tiny PEFT model: attach by name, report, errors
# ---------------------------------------------------------------------------------------------


def _unaligned_dir(tmp_path, tokenizer, scale=0.05, skip=()):
    """A copy of the tiny model with every projection perturbed: the 'unaligned' checkpoint."""
    model = make_tiny_llama(len(tokenizer))
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.add_(scale * torch.randn(p.shape, generator=g))
    sd = {k: v for k, v in model.state_dict().items() if not any(s in k for s in skip)}
    d = tmp_path / "unaligned"
    model.save_pretrained(d, state_dict=sd)
    tokenizer.save_pretrained(d)
    return d


def _peft(model_dir, r=4, alpha=8, targets=None):
    from safeanchor.models import attach_lora, load_model

    model, _ = load_model(str(model_dir), device="cpu", precision="fp32")
    return attach_lora(model, r=r, alpha=alpha, dropout=0.0, target_modules=targets, seed=0)


def _randomise_b(peft_model, seed=5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def _dense_total(peft_model, aligned_dir, unaligned_dir, names, scaling_on=False):
    from safetensors.torch import load_file

    a = load_file(str(aligned_dir / "model.safetensors"))
    u = load_file(str(unaligned_dir / "model.safetensors"))
    total = torch.zeros((), dtype=torch.float64)
    for name, module in lora_modules(peft_model).items():
        if name not in names:
            continue
        V = (a[f"{name}.weight"].double() - u[f"{name}.weight"].double())
        C = V @ V.T / torch.linalg.matrix_norm(V)
        B, A = module.lora_B["default"].weight.double(), module.lora_A["default"].weight.double()
        total += dense_penalty(B, A, C, module.scaling["default"] if scaling_on else 1.0)
    return total


def test_setup_attaches_by_name_and_matches_dense(tmp_path, tiny_tokenizer, tiny_model_dir):
    unaligned = _unaligned_dir(tmp_path, tiny_tokenizer)
    peft_model = _peft(tiny_model_dir, targets=["q_proj", "v_proj", "down_proj"])
    reg = AsFT(AsFTConfig(unaligned_model=str(unaligned), target_modules=("q_proj", "v_proj")))
    report = reg.setup(SimpleNamespace(model=peft_model))
    expected = [f"model.layers.{i}.self_attn.{p}" for i in range(3) for p in ("q_proj", "v_proj")]
    assert sorted(report["modules"]) == sorted(expected)
    assert report["n_modules"] == 6 and report["zero_direction_modules"] == []
    assert report["aligned_model"] == "<the model being fine-tuned>"

    assert float(reg(peft_model, {}, None)) == 0.0  # B = 0 at init
    _randomise_b(peft_model)
    got = reg(peft_model, {}, None)
    want = _dense_total(peft_model, tiny_model_dir, unaligned, set(expected))
    assert float(want) > 0
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-8)

    got.backward()
    for name, p in peft_model.named_parameters():
        if "lora_" in name and ("q_proj" in name or "v_proj" in name):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        if "down_proj" in name and "lora_" in name:
            assert p.grad is None  # not a target of the penalty


def test_lora_scaling_switch_and_rank_option(tmp_path, tiny_tokenizer, tiny_model_dir):
    unaligned = _unaligned_dir(tmp_path, tiny_tokenizer)
    peft_model = _peft(tiny_model_dir, r=4, alpha=12)
    _randomise_b(peft_model)
    trainer = SimpleNamespace(model=peft_model)
    raw = AsFT(unaligned_model=str(unaligned))
    raw.setup(trainer)
    scaled = AsFT(unaligned_model=str(unaligned), include_lora_scaling=True)
    scaled.setup(trainer)
    torch.testing.assert_close(scaled(peft_model, {}, None), raw(peft_model, {}, None) * (12 / 4) ** 2)
    names = set(lora_modules(peft_model))
    torch.testing.assert_close(scaled(peft_model, {}, None).double(),
                               _dense_total(peft_model, tiny_model_dir, unaligned, names, scaling_on=True),
                               rtol=1e-4, atol=1e-8)

    ranked = AsFT(unaligned_model=str(unaligned), rank=2)
    rep = ranked.setup(trainer)
    assert rep["rank"] == 2 and float(ranked(peft_model, {}, None)) > 0
    with pytest.raises(RegularizerSetupError, match="rank must be in 1..16"):
        AsFT(unaligned_model=str(unaligned), rank=99).setup(trainer)


def test_setup_errors_when_no_name_matches(tmp_path, tiny_tokenizer, tiny_model_dir):
    peft_model = _peft(tiny_model_dir)
    trainer = SimpleNamespace(model=peft_model)
    unaligned = _unaligned_dir(tmp_path, tiny_tokenizer, skip=("v_proj",))
    with pytest.raises(RegularizerSetupError, match="matched none of the LoRA modules"):
        AsFT(unaligned_model=str(unaligned), target_modules=("gate_proj",)).setup(trainer)
    # the unaligned checkpoint lacks v_proj: every missing module is named, no silent skip
    with pytest.raises(RegularizerSetupError, match=r"no weights for 3 of 12 .*model\.layers\.0\.self_attn\.v_proj"):
        AsFT(unaligned_model=str(unaligned)).setup(trainer)
    with pytest.raises(RegularizerSetupError, match="needs unaligned_model"):
        AsFT().setup(trainer)
    with pytest.raises(RegularizerSetupError, match="direction is zero"):
        AsFT(unaligned_model=str(tiny_model_dir)).setup(trainer)
    with pytest.raises(RuntimeError, match="setup"):
        AsFT(unaligned_model=str(unaligned))(peft_model, {}, None)


def test_explicit_aligned_model_equals_default(tmp_path, tiny_tokenizer, tiny_model_dir):
    unaligned = _unaligned_dir(tmp_path, tiny_tokenizer)
    peft_model = _peft(tiny_model_dir)
    _randomise_b(peft_model)
    trainer = SimpleNamespace(model=peft_model)
    a = AsFT(unaligned_model=str(unaligned))
    b = AsFT(unaligned_model=str(unaligned), aligned_model=str(tiny_model_dir))
    a.setup(trainer), b.setup(trainer)
    torch.testing.assert_close(a(peft_model, {}, None), b(peft_model, {}, None))


@pytest.mark.parametrize("kwargs,match", [
    ({"rank": 0}, "asft.rank"),
    ({"direction_dtype": "float64x"}, "asft.direction_dtype must be one of float32, bfloat16, float16"),
    ({"unaligned_model": " "}, "asft.unaligned_model"),
    ({"target_modules": ()}, "asft.target_modules"),
])
def test_config_validation_names_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AsFTConfig(**kwargs)


def test_training_with_asft_keeps_updates_near_the_direction(tmp_path, tiny_tokenizer):
    """Through the real trainer: the off-direction energy Σ‖(I - C)ΔW‖² after training is far
    smaller with AsFT (λ = 10) than after plain SFT on the same data and seed."""
    from test_train import run_tiny, write_data

    data = write_data(tmp_path / "data")
    udir = tmp_path / "unaligned"
    make_tiny_llama(len(tiny_tokenizer), seed=1).save_pretrained(udir)
    options = {"asft": {"unaligned_model": str(udir)}}
    sft = run_tiny(tmp_path / "sft", tiny_tokenizer, data, method="sft")
    asft = run_tiny(tmp_path / "asft", tiny_tokenizer, data, method="asft", alpha=10.0, regularizer_options=options)
    assert asft.reports["asft"]["n_modules"] == 12 and asft.reports["asft"]["step0_raw"] == 0.0

    def off_direction(result):
        reg = AsFT(unaligned_model=str(udir))
        reg.setup(SimpleNamespace(model=result.model))
        return float(reg(result.model, {}, None).detach())

    sft_off, asft_off = off_direction(sft), off_direction(asft)
    assert sft_off > 0 and asft_off < 0.1 * sft_off, (sft_off, asft_off)
    assert asft.steps[-1]["asft/raw"] == pytest.approx(asft_off, rel=0.5)  # the logged value is that energy
