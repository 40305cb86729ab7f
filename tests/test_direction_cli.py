"""``safeanchor direction`` / ``direction auroc`` / ``direction steer`` / ``drift`` on the tiny model folder."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from safeanchor.cli import app
from safeanchor.cli.direction import _label, parse_layers
from safeanchor.direction.drift import OPTIONAL_FIELDS, REQUIRED_FIELDS, drift_report, read_drift, write_drift

runner = CliRunner()


def _text(result) -> str:
    return " ".join(result.output.split())  # rich wraps long lines at the terminal width


def _run(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def direction_dir(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("direction")
    _run("direction", "--model", tiny_model_dir, "--out", out, "--limit", 6, "--batch-size", 4,
         "--auroc-limit", 5, "--select", "--select-layers", "1-2", "--select-limit", 3,
         "--select-all-prompts")  # the tiny model refuses nothing: the reference's prompt filter would leave none
    return out


def test_direction_writes_the_artifact(direction_dir, tiny_model_dir):
    info = json.loads((direction_dir / "direction.json").read_text())
    assert info["model"] == str(tiny_model_dir) and info["n_layers"] == 3 and info["hidden_size"] == 16
    assert info["data"]["harmful"] == {**info["data"]["harmful"], "source": "bundled:harmful:train", "count": 6}
    assert len(info["auroc"]["per_layer"]) == 3 and info["auroc"]["n_harmful"] == 5
    assert info["selected"]["layer"] in (1, 2) and {c["layer"] for c in info["selection"]["candidates"]} == {1, 2}
    for png in ("auroc.png", "selection.png"):
        assert (direction_dir / png).stat().st_size > 1000


def test_direction_twice_gives_identical_vectors(direction_dir, tiny_model_dir, tmp_path):
    _run("direction", "--model", tiny_model_dir, "--out", tmp_path, "--limit", 6, "--batch-size", 4, "--no-auroc")
    a, b = load_file(direction_dir / "direction.safetensors"), load_file(tmp_path / "direction.safetensors")
    assert set(a) == {"unit", "mean_diff", "norms", "harmful_mean", "harmless_mean"}
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_drift_of_the_model_against_itself(direction_dir, tiny_model_dir, tmp_path):
    res = _run("drift", "--reference", direction_dir, "--checkpoint", tiny_model_dir, "--out", tmp_path)
    report = read_drift(tmp_path / tiny_model_dir.name / "drift.json")  # checks the schema
    assert report["same_weights"] and report["adapter"] is None and report["model"] == str(tiny_model_dir)
    assert report["label"] == tiny_model_dir.name and report["checkpoint"] == str(tiny_model_dir)
    assert report["reference"] == str(direction_dir) and report["pos"] == -1
    assert report["cos"][0] is None and report["undefined_layers"] == [0]  # no direction at block 0's last token
    assert report["cos"][1:] == pytest.approx([1.0, 1.0], abs=1e-12) and report["cos_min"] == pytest.approx(1.0)
    assert report["positions"] == [-1] and report["cos_by_position"] == {"-1": report["cos"]}
    assert (tmp_path / "drift_heatmap.png").is_file() and (tmp_path / "drift_lines.png").is_file()
    assert "1.0000" in _text(res)


def test_drift_cli_writes_the_experiments_schema(direction_dir, tiny_model_dir, tmp_path):
    """The CLI's drift.json == what the experiment's drift stage writes with the same builder: the same
    required fields and the same floats, plus the optional positions / label / checkpoint."""
    import warnings

    from safeanchor.direction.artifact import RefusalDirection
    from safeanchor.models import load_model

    _run("drift", "--reference", direction_dir, "--checkpoint", tiny_model_dir, "--out", tmp_path / "cli")
    cli = read_drift(tmp_path / "cli" / tiny_model_dir.name)
    ref = RefusalDirection.from_pretrained(direction_dir)
    model, tok = load_model(str(tiny_model_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the body proposed for the experiment's _stage_drift
        report = drift_report(ref, model, tok, reference_path=direction_dir, model_name=str(tiny_model_dir), adapter=None)
    exp = read_drift(write_drift(tmp_path / "exp", report))
    assert set(exp) == set(REQUIRED_FIELDS) and set(cli) == set(REQUIRED_FIELDS) | set(OPTIONAL_FIELDS)
    for key in ("cos", "undefined_layers", "cos_mean", "cos_min", "cos_argmin", "reference", "model", "adapter",
                "fingerprint", "same_weights", "data", "pos"):
        assert cli[key] == exp[key], key


def test_drift_of_a_lora_adapter(direction_dir, tiny_model_dir, tmp_path):
    from safeanchor.models import attach_lora, load_model

    model, _ = load_model(str(tiny_model_dir))
    model = attach_lora(model, r=2, seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    model.save_pretrained(tmp_path / "adapter")
    _run("drift", "--reference", direction_dir, "--checkpoint", tmp_path / "adapter",
         "--checkpoint", tiny_model_dir, "--checkpoint", tiny_model_dir, "--out", tmp_path / "drift")
    labels = ["adapter", tiny_model_dir.name, f"{tiny_model_dir.name}#2"]
    rows = [read_drift(tmp_path / "drift" / label) for label in labels]
    assert [r["label"] for r in rows] == labels
    assert rows[0]["adapter"] == str(tmp_path / "adapter") and rows[0]["model"] == str(tiny_model_dir)
    assert not rows[0]["same_weights"] and rows[0]["cos_min"] < 0.999
    assert rows[1]["adapter"] is None and rows[1]["cos_min"] == pytest.approx(1.0) and rows[2]["cos"] == rows[1]["cos"]


def test_drift_unknown_position_exit_2(direction_dir, tiny_model_dir, tmp_path):
    res = runner.invoke(app, ["drift", "--reference", str(direction_dir), "--checkpoint", str(tiny_model_dir),
                              "--out", str(tmp_path), "--pos", "-3"])
    assert res.exit_code == 2 and "position -3 was not extracted" in _text(res)
    assert not any(tmp_path.iterdir())


def test_auroc_and_steer_commands(direction_dir, tmp_path):
    res = _run("direction", "auroc", "--direction", direction_dir, "--limit", 4, "--out", tmp_path)
    a = json.loads((tmp_path / "auroc.json").read_text())
    assert a["n_harmful"] == 4 and len(a["per_layer"]) == 3 and a["per_layer"][0] == 0.5
    assert "best AUROC" in _text(res)

    _run("direction", "steer", "--direction", direction_dir, "--out", tmp_path, "--limit", 2,
         "--max-new-tokens", 4, "--coef", "3.5", "--layer", 1)
    s = json.loads((tmp_path / "steering.json").read_text())
    assert s["layer"] == 1 and s["coef"] == 3.5 and s["n_harmless"] == 2
    assert set(s["rates"]) == {"baseline", "ablated", "added"}


def test_user_errors_exit_2(tmp_path, tiny_model_dir):
    res = runner.invoke(app, ["direction", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--model and --out are required" in _text(res)
    res = runner.invoke(app, ["drift", "--reference", str(tmp_path), "--checkpoint", str(tiny_model_dir),
                              "--out", str(tmp_path / "d")])
    assert res.exit_code == 2 and "not a refusal-direction artifact" in _text(res)
    res = runner.invoke(app, ["direction", "--model", str(tiny_model_dir), "--out", str(tmp_path),
                              "--positions", "first"])
    assert res.exit_code == 2 and "positions must be one of" in _text(res)


def test_unknown_family_cli_error(tmp_path, tiny_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tiny_tokenizer))).save_pretrained(tmp_path / "gpt2")
    tiny_tokenizer.save_pretrained(tmp_path / "gpt2")
    res = runner.invoke(app, ["direction", "--model", str(tmp_path / "gpt2"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "'gpt2' is not supported" in _text(res)


def test_parse_layers():
    assert parse_layers("1-3,7") == [1, 2, 3, 7] and parse_layers(None) is None


def test_label_is_a_folder_name(tmp_path, monkeypatch):
    assert _label("runs/ckpt-100", []) == "ckpt-100" and _label("org/model", ["model"]) == "model#2"
    monkeypatch.chdir(tmp_path)
    assert _label(".", []) == tmp_path.name and _label("./", []) == tmp_path.name
