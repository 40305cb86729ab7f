"""``safeanchor eval`` end to end on the embedded SmolLM2 instruct model (which does not refuse)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner


@pytest.mark.slow
def test_eval_embedded_instruct(embedded_cache, tmp_path, monkeypatch):
    from safeanchor.cli import app
    from safeanchor.evaluate.results import read_eval

    monkeypatch.delenv("SAFEANCHOR_JUDGE_URL", raising=False)
    out = tmp_path / "eval"
    res = CliRunner().invoke(app, ["eval", "--model", "embedded:smollm2-135m-instruct", "--limit", "4",
                                   "--task-limit", "2", "--max-new-tokens", "24", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    r = read_eval(out)
    harmful = r["summary"]["harmful"]["bundled:harmful:test"]
    harmless = r["summary"]["harmless"]["bundled:harmless:test"]
    # SmolLM2-135M-Instruct complies with harmful requests and answers harmless ones
    assert harmful["n"] == 4 and harmful["asr"] >= 0.75
    assert harmless["n"] == 4 and harmless["over_refusal"] <= 0.25
    assert set(r["summary"]["tasks"]) == {"arithmetic", "topic"}
    assert all(t["n"] == 2 and 0.0 <= t["accuracy"] <= 1.0 for t in r["summary"]["tasks"].values())
    assert r["model"]["name"] == "embedded:smollm2-135m-instruct" and len(r["model"]["fingerprint"]) == 16
    assert all(x["answer"] for x in r["records"])  # the model produced text for every prompt
