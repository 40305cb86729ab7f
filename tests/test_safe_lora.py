"""Safe LoRA: similarity and projection against a dense reference, both modes, report, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import make_tiny_llama
from safeanchor.methods.weight_direction import ModuleAnchor, lora_modules
from safeanchor.methods.safe_lora import (
    REPORT_FILE,
    apply_safe_lora,
    module_similarity,
    save_projected_adapter,
    select_modules,
)


def dense_similarity(B, A, V):
    C = V @ V.T / torch.linalg.matrix_norm(V)  # out×out, reference only
    dW = (B @ A).detach()
    return float(torch.nn.functional.cosine_similarity((C @ dW).reshape(1, -1), dW.reshape(1, -1)))


@pytest.mark.parametrize("out_f,in_f,r", [(8, 5, 2), (5, 8, 3), (16, 16, 4), (9, 4, 1)])
def test_similarity_equals_dense(out_f, in_f, r):
    g = torch.Generator().manual_seed(out_f + in_f + r)
    V, B, A = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((out_f, in_f), (out_f, r), (r, in_f)))
    sim, norm = module_similarity(B, A, ModuleAnchor.from_direction(V))
    assert sim == pytest.approx(dense_similarity(B, A, V), abs=1e-12)
    assert norm == pytest.approx(float(torch.linalg.matrix_norm(B @ A)), rel=1e-12)


def test_similarity_edge_cases():
    V = torch.zeros(4, 3, dtype=torch.float64)
    V[0, 0] = 1.0
    A = torch.ones(1, 3, dtype=torch.float64)
    assert module_similarity(torch.zeros(4, 1, dtype=torch.float64), A, ModuleAnchor.from_direction(V)) == (None, 0.0)
    off = torch.tensor([[0.0], [1.0], [0.0], [0.0]], dtype=torch.float64)  # ΔW orthogonal to V's column space
    assert module_similarity(off, A, ModuleAnchor.from_direction(V))[0] == 0.0


def test_select_modules_modes():
    sims = {"a": 0.9, "b": 0.1, "c": 0.4, "d": None, "e": 0.4}
    assert select_modules(sims, "threshold", 0.5, 0) == {"b", "c", "e"}
    assert select_modules(sims, "number", 0.0, 2) == {"b", "c"}  # ties broken by name
    assert select_modules(sims, "number", 0.0, 10) == {"a", "b", "c", "e"}  # None is never projected
    with pytest.raises(ValueError, match="threshold, number"):
        select_modules(sims, "median", 0.5, 1)


# ---------------------------------------------------------------------------------------------
# On a tiny PEFT model
# ---------------------------------------------------------------------------------------------


def _setup(tmp_path, tokenizer, model_dir):
    """Unaligned checkpoint + PEFT model whose LoRA updates are half inside the direction."""
    from safeanchor.models import attach_lora, load_model

    unaligned = make_tiny_llama(len(tokenizer))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in unaligned.named_parameters():
            if name.endswith("proj.weight"):  # a rank-2 difference, like a LoRA alignment stage
                p.add_(0.1 * torch.randn(p.shape[0], 2, generator=g) @ torch.randn(2, p.shape[1], generator=g))
    udir = tmp_path / "unaligned"
    unaligned.save_pretrained(udir)
    tokenizer.save_pretrained(udir)

    model, _ = load_model(str(model_dir), device="cpu", precision="fp32")
    peft_model = attach_lora(model, r=2, alpha=4, dropout=0.0, seed=0)
    u_sd = unaligned.state_dict()
    directions = {}
    with torch.no_grad():
        for i, (name, module) in enumerate(sorted(lora_modules(peft_model).items())):
            V = module.get_base_layer().weight.double() - u_sd[f"{name}.weight"].double()
            directions[name] = V
            B = module.lora_B["default"].weight
            if i % 2 == 0:  # inside the direction's column space: high similarity
                B.copy_((V[:, : B.shape[1]] + 0.01 * torch.randn(B.shape, generator=g)).float())
            else:  # random: low similarity
                B.copy_(torch.randn(B.shape, generator=g))
    return peft_model, udir, directions


def _dense_expectations(peft_model, directions):
    sims, projected_b = {}, {}
    for name, module in lora_modules(peft_model).items():
        B, A = module.lora_B["default"].weight.double(), module.lora_A["default"].weight.double()
        V = directions[name]
        sims[name] = dense_similarity(B, A, V)
        projected_b[name] = V @ V.T @ B / torch.linalg.matrix_norm(V)
    return sims, projected_b


def test_threshold_mode_projects_below_tau(tmp_path, tiny_tokenizer, tiny_model_dir):
    peft_model, udir, directions = _setup(tmp_path, tiny_tokenizer, tiny_model_dir)
    sims, projected_b = _dense_expectations(peft_model, directions)
    before = {n: m.lora_B["default"].weight.detach().clone() for n, m in lora_modules(peft_model).items()}
    report = apply_safe_lora(peft_model, None, str(udir), mode="threshold", threshold=0.5)
    low = {n for n, s in sims.items() if s < 0.5}
    assert 0 < len(low) < len(sims)  # the fixture gives a mix
    assert {m.module for m in report.modules if m.projected} == low
    assert report.n_projected == len(low) and report.mode == "threshold" and report.threshold == 0.5 and report.k is None
    for entry in report.modules:
        assert entry.similarity == pytest.approx(sims[entry.module], abs=1e-5)
        B = lora_modules(peft_model)[entry.module].lora_B["default"].weight.double()
        want = projected_b[entry.module] if entry.projected else before[entry.module].double()
        torch.testing.assert_close(B, want, rtol=1e-4, atol=1e-6)


def test_number_mode_projects_k_lowest_and_saves(tmp_path, tiny_tokenizer, tiny_model_dir):
    from peft import PeftModel

    from safeanchor.models import load_model

    peft_model, udir, directions = _setup(tmp_path, tiny_tokenizer, tiny_model_dir)
    sims, projected_b = _dense_expectations(peft_model, directions)
    report = apply_safe_lora(peft_model, str(tiny_model_dir), str(udir), mode="number", k=3)
    lowest = set(sorted(sims, key=sims.get)[:3])
    assert {m.module for m in report.modules if m.projected} == lowest and report.k == 3

    out = save_projected_adapter(peft_model, report, tmp_path / "projected")
    saved = json.loads((out / REPORT_FILE).read_text())
    assert saved["n_projected"] == 3 and saved["n_modules"] == 12 and saved["mode"] == "number"
    assert {m["module"] for m in saved["modules"] if m["projected"]} == lowest
    assert "safeanchor_version" in saved["provenance"]
    assert not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(FileExistsError):
        save_projected_adapter(peft_model, report, out)

    base, _ = load_model(str(tiny_model_dir), device="cpu", precision="fp32")
    reloaded = PeftModel.from_pretrained(base, str(out))
    for name in lowest:
        B = lora_modules(reloaded)[name].lora_B["default"].weight.double()
        torch.testing.assert_close(B, projected_b[name], rtol=1e-4, atol=1e-6)


def test_cli_safe_lora(tmp_path, tiny_tokenizer, tiny_model_dir):
    from safeanchor.cli import app

    peft_model, udir, directions = _setup(tmp_path, tiny_tokenizer, tiny_model_dir)
    sims, _ = _dense_expectations(peft_model, directions)
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    out = tmp_path / "safe"
    res = CliRunner().invoke(app, ["safe-lora", "--adapter", str(tmp_path / "adapter"), "--base", str(tiny_model_dir),
                                   "--unaligned", str(udir), "--out", str(out), "--mode", "threshold", "--tau", "0.5"])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / REPORT_FILE).read_text())
    assert {m["module"] for m in saved["modules"] if m["projected"]} == {n for n, s in sims.items() if s < 0.5}
    assert (out / "adapter_model.safetensors").is_file()
    assert "projected" in res.output

    bad = CliRunner().invoke(app, ["safe-lora", "--adapter", str(tmp_path / "adapter"), "--base", str(tiny_model_dir),
                                   "--unaligned", str(udir), "--out", str(tmp_path / "x"), "--mode", "median"])
    assert bad.exit_code != 0 and "threshold" in bad.output


def test_direction_stats_and_the_isotropic_baseline():
    from safeanchor.methods.safe_lora import direction_stats
    from safeanchor.methods.weight_direction import ModuleAnchor

    g = torch.Generator().manual_seed(0)
    V = torch.randn(64, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 32, generator=g, dtype=torch.float64)
    norm, pr, iso = direction_stats(V)
    s = torch.linalg.svdvals(V)
    assert norm == pytest.approx(float(s.square().sum().sqrt()))
    assert pr == pytest.approx(float(s.square().sum() ** 2 / s.pow(4).sum())) and 1 <= pr <= 3 + 1e-9
    assert iso == pytest.approx((pr / 64) ** 0.5)
    # the mean similarity of random (isotropic) updates is close to the predicted baseline
    anchor = ModuleAnchor.from_direction(V)
    sims = [module_similarity(torch.randn(64, 4, generator=g, dtype=torch.float64),
                              torch.randn(4, 32, generator=g, dtype=torch.float64), anchor)[0] for _ in range(200)]
    assert sum(sims) / len(sims) == pytest.approx(iso, rel=0.15)
    assert direction_stats(torch.zeros(4, 4)) == (0.0, None, None)


def test_relative_mode_and_report_fields(tmp_path, tiny_tokenizer, tiny_model_dir):
    peft_model, udir, directions = _setup(tmp_path, tiny_tokenizer, tiny_model_dir)
    sims, _ = _dense_expectations(peft_model, directions)
    report = apply_safe_lora(peft_model, None, str(udir), mode="relative", threshold=1.0)
    for m in report.modules:
        assert m.v_norm > 0 and m.v_effective_rank >= 1 and 0 < m.isotropic_cos <= 1
        assert m.projected == (sims[m.module] < m.isotropic_cos)
    assert report.mode == "relative" and report.threshold == 1.0
    with pytest.raises(ValueError, match="relative threshold must be >= 0"):
        apply_safe_lora(peft_model, None, str(udir), mode="relative", threshold=-1.0)
