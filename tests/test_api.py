"""The README's Python API section, name for name, on the tiny model: extract a direction, train
with ProCon, evaluate, read the drift."""

from __future__ import annotations

import safeanchor as sa
from safeanchor.train import train
from conftest import make_tiny_llama
from test_train import write_data


def test_the_readme_python_api(tmp_path, tiny_tokenizer):
    data = write_data(tmp_path / "data")
    model, tok = make_tiny_llama(len(tiny_tokenizer)), tiny_tokenizer  # README: sa.load_model(...)
    rd = sa.extract_direction(model, tok, sa.ExtractConfig(harmful=data["harmful"], harmless=data["harmless"], limit=12))
    rd.save_pretrained(tmp_path / "direction")
    result = train(sa.SafeTrainingConfig(
        method="procon_wu_safe", output_dir=str(tmp_path / "procon"), train_data=data["train"], num_train_epochs=2.5,
        per_device_train_batch_size=4, safety_samples=4, safety_harmful=data["harmful"],
        safety_refusals=data["refusals"], report_to="none", progress=False, max_length=64,
        regularizer_options={"procon": {"direction": str(tmp_path / "direction")}}), model, tok)
    scores = sa.evaluate_model(result.model, result.tokenizer, sa.EvalConfig(
        harmful=(data["harmful"],), harmless=(data["harmless"],), tasks=(), max_new_tokens=4, progress=False))
    drift = sa.drift_report(rd, result.model, result.tokenizer)
    assert result.steps[0]["procon/raw"] == 0.0 and result.steps[1]["procon/raw"] > 0
    assert 0.0 <= scores["summary"]["harmful"][data["harmful"]]["asr"] <= 1.0
    assert len(drift["cos"]) == rd.n_layers


def test_subpackages_load_on_first_use_from_the_package_root():
    """``import safeanchor`` then ``safeanchor.train.train`` (the package docstring's example) works in a
    fresh interpreter, and a name that is neither an export nor a submodule is an AttributeError."""
    import subprocess
    import sys

    code = ("import safeanchor as sa\n"
            "assert callable(sa.train.train) and 'procon' in sa.methods.METHODS\n"
            "try:\n    sa.no_such_name\nexcept AttributeError as e:\n    print(e)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "has no attribute 'no_such_name'" in res.stdout
