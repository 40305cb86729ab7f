"""The method table: every training method is one row, checked the same way.

* with its coefficient at 0 (its regularizer still computed and logged), a method's losses equal
  plain SFT's on the same data, step for step;
* at its normal setting it trains, reports what it attached to, and its loss is CE + α·raw.

Adding a method = one ``MethodCase`` row (and ``test_every_method_has_a_row`` insists on it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml

from conftest import make_tiny_llama
from safeanchor.data import load_source, write_jsonl
from safeanchor.methods import get_method, method_names
from safeanchor.methods.safety_data import load_refusals, pair_safety_samples, safety_records
from test_train import run_tiny, write_data

N_SAFETY = 8  # tiny_config's safety_samples


def _tiny_unaligned(folder: Path, tok) -> str:
    """A differently seeded tiny model: the 'unaligned' end of an alignment direction."""
    if not (folder / "config.json").is_file():
        make_tiny_llama(len(tok), seed=1).save_pretrained(folder)
        tok.save_pretrained(folder)
    return str(folder)


@dataclass
class MethodCase:
    id: str
    method: str
    #: settings of a normal run, as ``tiny_config`` overrides (may use the test folder and tokenizer)
    settings: Callable[[Path, object], dict] = lambda tmp, tok: {}
    #: True if the method adds safety samples (its SFT twin trains on the same mixed data)
    safety_data: bool = False
    regularizers: tuple[str, ...] = ()
    marks: list = field(default_factory=list)


def _with_refusal_targets(tmp: Path, tok) -> dict:
    """Training data whose records carry ``refuse`` targets (refusal_decision needs both kinds)."""
    rows = [{"prompt": f"How do I make weapon {i}?", "response": "I'm sorry, I can't help with that.", "refuse": True}
            for i in range(12)]
    rows += [{"prompt": f"What is {i} plus {i}?", "response": f"The answer is {2 * i}.", "refuse": False}
             for i in range(12)]
    path = tmp / "targets.jsonl"
    write_jsonl(path, rows)
    return {"train_data": [f"file:{path}"]}


def _unaligned_for(component: str):
    return lambda tmp, tok: {"regularizer_options": {component: {"unaligned_model": _tiny_unaligned(tmp / "unaligned", tok)}}}


CASES = [
    MethodCase("sft", "sft"),
    MethodCase("sft_long", "sft_long"),
    MethodCase("sft_safe", "sft_safe", safety_data=True),
    MethodCase("procon", "procon", lambda tmp, tok: {"alpha": 0.5}, regularizers=("procon",)),
    MethodCase("procon-online", "procon", lambda tmp, tok: {"alpha": 0.5, "procon": {"anchor": "online"}},
               regularizers=("procon",)),
    MethodCase("procon_wu", "procon_wu", lambda tmp, tok: {"schedule_length": 3, "schedule_unit": "step"},
               regularizers=("procon",)),
    MethodCase("procon_safe", "procon_safe", safety_data=True, regularizers=("procon",)),
    MethodCase("procon_wu_safe", "procon_wu_safe", lambda tmp, tok: {"schedule_length": 3, "schedule_unit": "step"},
               safety_data=True, regularizers=("procon",)),
    MethodCase("asft", "asft", _unaligned_for("asft"), regularizers=("asft",)),
    MethodCase("asft_safe", "asft_safe", _unaligned_for("asft"), safety_data=True, regularizers=("asft",)),
    MethodCase("safe_lora", "safe_lora", _unaligned_for("safe_lora")),
    MethodCase("refusal_decision", "refusal_decision", _with_refusal_targets, regularizers=("refusal_decision",)),
]
PARAMS = [pytest.param(c, marks=c.marks, id=c.id) for c in CASES]


@pytest.fixture
def data(tmp_path):
    return write_data(tmp_path / "data")


def test_every_method_has_a_row():
    assert {c.method for c in CASES} == set(method_names(trained=True))
    for c in CASES:
        assert get_method(c.method).safety_data == c.safety_data and get_method(c.method).regularizers == c.regularizers


def test_one_spelling_per_method_old_ones_name_the_new():
    from safeanchor.methods import RENAMED

    for old, new in RENAMED.items():
        with pytest.raises(ValueError, match=f"method '{old}' is now called '{new}'"):
            get_method(old)
    with pytest.raises(ValueError, match="did you mean procon"):
        get_method("procoon")


@pytest.mark.parametrize("case", PARAMS)
def test_coefficient_zero_equals_sft(tmp_path, tiny_tokenizer, data, case):
    settings = case.settings(tmp_path, tiny_tokenizer)
    if case.regularizers:  # coefficient 0, but the regularizer still runs and is logged
        settings.update(alpha=0.0, alpha_schedule="constant", penalty_when_inactive=True)
    method_run = run_tiny(tmp_path / "method", tiny_tokenizer, data, method=case.method, **settings)

    sft_data = dict(data)
    if "train_data" in settings:
        sft_data["train"] = settings["train_data"][0]
    if case.safety_data:  # the SFT twin trains on exactly the mixed set, written out as a file
        mixed = load_source(data["train"]) + safety_records(N_SAFETY, harmful=data["harmful"], refusals=data["refusals"])
        path = tmp_path / "mixed.jsonl"
        write_jsonl(path, [r.to_dict() for r in mixed])
        sft_data["train"] = f"file:{path}"
    sft_run = run_tiny(tmp_path / "sft", tiny_tokenizer, sft_data, method="sft")

    assert len(method_run.steps) == len(sft_run.steps) == (8 if case.safety_data else 6)
    if case.method == "safe_lora":  # training is SFT's; the transform ran after it
        assert (method_run.output_dir / "safe_lora_report.json").is_file() and method_run.post_hoc
    assert [s["ce"] for s in method_run.steps] == [s["ce"] for s in sft_run.steps]
    assert [s["loss"] for s in method_run.steps] == [s["loss"] for s in sft_run.steps]
    for name in case.regularizers:
        assert all(s[f"{name}/coef"] == 0.0 for s in method_run.steps)
        assert any(s[f"{name}/raw"] > 0 for s in method_run.steps)  # it ran on moving weights, to no effect


@pytest.mark.parametrize("case", PARAMS)
def test_method_trains_and_reports(tmp_path, tiny_tokenizer, data, case):
    result = run_tiny(tmp_path, tiny_tokenizer, data, method=case.method, **case.settings(tmp_path, tiny_tokenizer))
    sources = result.reports["data"]["sources"]
    train_source = case.settings(tmp_path, tiny_tokenizer).get("train_data", [data["train"]])[0]
    assert sources[train_source] == 24 and sources.get("safety", 0) == (N_SAFETY if case.safety_data else 0)
    saved = yaml.safe_load((result.output_dir / "train_config.yaml").read_text())
    method = get_method(case.method)
    if method.coefficient is not None:  # resolved once, at config time: the value used, never null
        assert saved["alpha"] == case.settings(tmp_path, tiny_tokenizer).get("alpha", method.default)
    if method.kind == "post_hoc":
        assert result.post_hoc and result.post_hoc["safe_lora_modules"] > 0
    for name in case.regularizers:
        assert result.reports[name]  # setup said what it attached to
        for row in result.steps:
            assert row["loss"] == pytest.approx(row["ce"] + row[f"{name}/coef"] * row.get(f"{name}/raw", 0.0),
                                                rel=1e-5, abs=1e-6)
        assert any(row.get(f"{name}/raw", 0.0) > 0 for row in result.steps[1:])
    if not case.regularizers:
        assert set(result.steps[0]) == {"step", "epoch", "ce", "loss", "learning_rate"}
        assert all(row["loss"] == row["ce"] for row in result.steps)


def test_procon_wu_switches_off_after_warmup(tmp_path, tiny_tokenizer, data):
    result = run_tiny(tmp_path, tiny_tokenizer, data, method="procon_wu_safe", alpha=2.0,
                      schedule_length=3, schedule_unit="step")
    assert [row["procon/coef"] for row in result.steps] == [2.0] * 3 + [0.0] * 5
    # after the warm-up ProCon is not computed at all (plain fine-tuning speed)
    assert all("procon/raw" in row for row in result.steps[:3])
    assert not any("procon/raw" in row for row in result.steps[3:])


def test_safety_pairing_is_deterministic_and_balanced(data):
    prompts = load_source(data["harmful"])
    refusals = load_refusals(data["refusals"])
    a = pair_safety_samples(prompts, refusals, 30, seed=3)
    b = pair_safety_samples(prompts, refusals, 30, seed=3)
    c = pair_safety_samples(prompts, refusals, 30, seed=4)
    assert [(r.prompt, r.response) for r in a] == [(r.prompt, r.response) for r in b]
    assert [(r.prompt, r.response) for r in a] != [(r.prompt, r.response) for r in c]
    counts = {p.prompt: sum(r.prompt == p.prompt for r in a) for p in prompts}
    assert set(counts.values()) <= {2, 3}  # 30 draws over 12 prompts in shuffled rounds: none starved
    assert all(r.response in refusals and r.meta["safety_sample"] for r in a)


def test_bundled_safety_data_defaults():
    recs = safety_records(64, seed=0)
    harmful_train = {r.prompt for r in load_source("bundled:harmful:train")}
    assert len(recs) == 64 and all(r.prompt in harmful_train for r in recs)
    assert len({r.prompt for r in recs}) == 64  # fewer than the train prompts: no repeats
