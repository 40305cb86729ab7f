"""Refusal direction on the tiny model: extraction, artifact, AUROC, selection, steering, drift."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from conftest import make_tiny_llama
from safeanchor.data import Record, encode_prompt
from safeanchor.direction.artifact import IncompatibleDirectionError, RefusalDirection
from safeanchor.direction.drift import (DRIFT_FORMAT, OPTIONAL_FIELDS, REQUIRED_FIELDS, DriftFileError, compute_drift,
                                        cosine_per_layer, drift_report, read_drift, write_drift)
from safeanchor.direction.extract import (ExtractConfig, auroc, extract_direction, layer_auroc, mean_activations,
                                          post_instruction_offsets)

WORDS = "bread flour sea sky wind rain poem safe online password topic sports science answer help".split()


def _records(n: int, seed: int, suffix: str = "") -> list[Record]:
    rng = random.Random(seed)
    return [Record(" ".join(rng.choices(WORDS, k=rng.randint(2, 9))) + suffix) for _ in range(n)]


HARMFUL = _records(7, 1, "?")
HARMLESS = _records(6, 2, ".")


@pytest.fixture
def rd(tiny_model, tiny_tokenizer) -> RefusalDirection:
    return extract_direction(tiny_model, tiny_tokenizer, ExtractConfig(positions="post-instruction", batch_size=4),
                             harmful=HARMFUL, harmless=HARMLESS)


# ---- extraction ------------------------------------------------------------------------------


def test_means_match_unbatched_hidden_states(tiny_model, tiny_tokenizer):
    """Batched, padded, early-stopped capture == one prompt at a time through HF hidden_states."""
    offsets = [-3, -1]
    got = mean_activations(tiny_model, tiny_tokenizer, HARMFUL, offsets=offsets, batch_size=3)  # (P, L, D)
    ref = torch.zeros(2, 3, 16, dtype=torch.float64)
    with torch.no_grad():
        for r in HARMFUL:
            ids = torch.tensor([encode_prompt(tiny_tokenizer, r)])
            hs = tiny_model(input_ids=ids, output_hidden_states=True).hidden_states
            for p, o in enumerate(offsets):
                for layer in range(3):
                    ref[p, layer] += hs[layer][0, o].double()
    torch.testing.assert_close(got, ref / len(HARMFUL), rtol=0, atol=1e-5)


@pytest.mark.parametrize("batch_size,side", [(1, "left"), (2, "right"), (5, "left"), (13, "right")])
def test_batch_size_and_padding_side_do_not_matter(tiny_model, tiny_tokenizer, rd, batch_size, side):
    other = extract_direction(tiny_model, tiny_tokenizer,
                              ExtractConfig(positions="post-instruction", batch_size=batch_size, padding_side=side),
                              harmful=HARMFUL, harmless=HARMLESS)
    assert other.positions == rd.positions
    torch.testing.assert_close(other.mean_diff, rd.mean_diff, rtol=0, atol=1e-5)
    torch.testing.assert_close(other.harmful_mean, rd.harmful_mean, rtol=0, atol=1e-5)


def test_post_instruction_positions_are_the_template_suffix(tiny_tokenizer):
    offsets = post_instruction_offsets(tiny_tokenizer, HARMFUL)  # every HARMFUL prompt ends with "?"
    tail = encode_prompt(tiny_tokenizer, HARMFUL[0])[offsets[0]:]
    assert offsets == list(range(-len(tail), 0))
    # the probes keep the shared "?" out: the suffix is exactly the template after the content
    assert tiny_tokenizer.decode(tail) == "<|im_end|>\n<|im_start|>assistant\n"


def test_direction_shapes_and_units(rd):
    P, L, D = len(rd.positions), 3, 16
    assert rd.mean_diff.shape == (P, L, D) and rd.mean_diff.dtype == torch.float64
    units = rd.unit()  # (L, D), last position
    assert units.shape == (L, D) and units.dtype == torch.float32
    # block 0's input at a template token is that token's embedding, equal for every prompt
    assert torch.all(units[0] == 0) and rd.norms[-1, 0] == 0
    torch.testing.assert_close(units[1:].norm(dim=-1), torch.ones(L - 1))
    torch.testing.assert_close(rd.unit(2, pos=-2), (rd.mean_diff[-2, 2] / rd.mean_diff[-2, 2].norm()).float())
    assert rd.layers == [0, 1, 2] and rd.n_layers == 3 and rd.hidden_size == 16
    u = rd.unit(2).double()
    assert rd.harmful_projection(2) == pytest.approx(float(u @ rd.harmful_mean[-1, 2]))
    with pytest.raises(ValueError, match="not extracted"):
        rd.unit(pos=-99)


def test_extract_config_validation():
    with pytest.raises(ValueError, match="positions must be one of last, post-instruction"):
        ExtractConfig(positions="first")
    with pytest.raises(ValueError, match="padding_side"):
        ExtractConfig(padding_side="middle")
    with pytest.raises(ValueError, match="limit"):
        ExtractConfig(limit=0)


# ---- artifact --------------------------------------------------------------------------------


def test_artifact_roundtrip(rd, tmp_path):
    rd.info["selected"] = {"layer": 2, "pos": -1}
    rd.save_pretrained(tmp_path)
    info = json.loads((tmp_path / "direction.json").read_text())
    for key in ("fingerprint", "n_layers", "hidden_size", "positions", "data", "seed", "provenance"):
        assert key in info
    assert info["data"]["harmful"]["count"] == len(HARMFUL) and info["provenance"]["safeanchor_version"]
    back = RefusalDirection.from_pretrained(tmp_path)
    assert torch.equal(back.harmful_mean, rd.harmful_mean) and torch.equal(back.mean_diff, rd.mean_diff)
    assert back.positions == rd.positions and back.selected == (2, -1) and back.best_layer() == 2
    from safetensors.torch import load_file

    t = load_file(tmp_path / "direction.safetensors")
    assert t["unit"].shape == (len(rd.positions), 3, 16) and t["norms"].shape == (len(rd.positions), 3)
    torch.testing.assert_close(t["unit"][-1], rd.unit())


def test_artifact_missing_or_corrupt(tmp_path, rd):
    with pytest.raises(FileNotFoundError, match="not a refusal-direction artifact"):
        RefusalDirection.from_pretrained(tmp_path)
    rd.save_pretrained(tmp_path)
    info = json.loads((tmp_path / "direction.json").read_text())
    info["n_layers"] = 7
    (tmp_path / "direction.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="disagree"):
        RefusalDirection.from_pretrained(tmp_path)


def test_fingerprint_and_shape_checks(rd, tiny_model, tiny_tokenizer):
    rd.check_compatible(tiny_model)  # same weights: silent
    other = make_tiny_llama(len(tiny_tokenizer), seed=1)
    with pytest.raises(IncompatibleDirectionError, match="fingerprint .* differs.*derivative=True"):
        rd.check_compatible(other)
    with pytest.warns(UserWarning, match="derivative"):
        rd.check_compatible(other, derivative=True)
    # a LoRA adapter on the direction's own base is a verified derivative: no warning to act on
    import warnings

    from safeanchor.models import attach_lora

    tuned = attach_lora(make_tiny_llama(len(tiny_tokenizer)), r=2, alpha=4, dropout=0.0, target_modules=["q_proj"], seed=0)
    with torch.no_grad():
        for n, p in tuned.named_parameters():
            if "lora_B" in n:
                p.add_(0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rd.check_compatible(tuned, derivative=True)
    with pytest.raises(IncompatibleDirectionError, match="differs"):
        rd.check_compatible(tuned)  # still not the same weights
    # merged into its base by merge_adapter (as the bench does before evaluating): verified, silent
    from safeanchor.models import merge_adapter, model_fingerprint

    merged = merge_adapter(tuned)
    assert not hasattr(merged, "peft_config") and model_fingerprint(merged) != rd.info["fingerprint"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rd.check_compatible(merged, derivative=True)
    # merged into another base: still a warning
    stranger = merge_adapter(attach_lora(other, r=2, alpha=4, dropout=0.0, target_modules=["q_proj"], seed=0))
    with pytest.warns(UserWarning, match="derivative"):
        rd.check_compatible(stranger, derivative=True)
    deeper = make_tiny_llama(len(tiny_tokenizer), layers=4)
    with pytest.raises(IncompatibleDirectionError, match="3 layers x 16 .* 4 x 16"):
        rd.check_compatible(deeper, derivative=True)


# ---- AUROC -----------------------------------------------------------------------------------


def test_auroc_matches_pairwise_count():
    g = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 6, (40,), generator=g).double()  # many ties
    neg = torch.randint(0, 5, (30,), generator=g).double()
    pairs = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
    assert auroc(pos, neg) == pytest.approx(float(pairs.mean()), abs=1e-12)
    assert auroc([2, 3], [0, 1]) == 1.0 and auroc([0, 1], [2, 3]) == 0.0
    with pytest.raises(ValueError):
        auroc([], [1.0])


def test_layer_auroc_on_training_prompts(rd, tiny_model, tiny_tokenizer):
    per_layer = layer_auroc(tiny_model, tiny_tokenizer, rd, HARMFUL, HARMLESS, batch_size=4)
    assert len(per_layer) == 3
    assert per_layer[0] == 0.5  # zero direction: every projection ties
    # the training prompts sit on their own side of their own mean difference on average
    assert all(0.5 < a <= 1.0 for a in per_layer[1:])


# ---- drift -----------------------------------------------------------------------------------


def _perturb(model) -> None:
    w = model.model.layers[1].mlp.down_proj.weight
    with torch.no_grad():
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)))


def test_drift_of_a_model_against_itself_is_one(rd, tiny_model, tiny_tokenizer):
    cos = compute_drift(rd, tiny_model, tiny_tokenizer, harmful=HARMFUL, harmless=HARMLESS)  # (P, L)
    assert cos.shape == (len(rd.positions), 3)
    assert torch.isnan(cos[:, 0]).all()  # no direction at block 0's template tokens
    assert torch.allclose(cos[:, 1:], torch.ones_like(cos[:, 1:]), atol=1e-12)


def test_drift_of_a_perturbed_model(rd, tiny_model, tiny_tokenizer):
    _perturb(tiny_model)
    with pytest.warns(UserWarning, match="derivative"):
        cos = compute_drift(rd, tiny_model, tiny_tokenizer, harmful=HARMFUL, harmless=HARMLESS)[-1]
    assert cos[1] == pytest.approx(1.0, abs=1e-12)  # block 1's input comes before the change
    assert cos[2] < 0.99


def test_drift_report_has_the_experiments_numbers(rd, tiny_model, tiny_tokenizer):
    """cos / cos_mean / cos_min are exactly the floats the experiment's drift stage computed before."""
    _perturb(tiny_model)
    with pytest.warns(UserWarning, match="derivative"):
        report = drift_report(rd, tiny_model, tiny_tokenizer, harmful=HARMFUL, harmless=HARMLESS,
                              reference_path="runs/02_direction", model_name="tiny", adapter="runs/04_train/x")
    with pytest.warns(UserWarning, match="derivative"):
        cos = compute_drift(rd, tiny_model, tiny_tokenizer, harmful=HARMFUL, harmless=HARMLESS)[rd.pos_index(-1)]
    per_layer = [float(c) if math.isfinite(float(c)) else None for c in cos]  # the old _stage_drift, verbatim
    defined = [c for c in per_layer if c is not None]
    assert report["cos"] == per_layer and per_layer[0] is None and len(per_layer) == 3
    assert report["undefined_layers"] == [0]
    assert report["cos_mean"] == sum(defined) / len(defined) and report["cos_min"] == min(defined)
    assert report["cos_argmin"] == 2 and report["cos"][1] == pytest.approx(1.0, abs=1e-12) and report["cos"][2] < 0.99
    assert set(report) == set(REQUIRED_FIELDS) and report["format"] == DRIFT_FORMAT
    assert (report["reference"], report["model"], report["adapter"], report["pos"]) == \
        ("runs/02_direction", "tiny", "runs/04_train/x", -1)
    assert not report["same_weights"] and report["fingerprint"] != report["reference_fingerprint"]
    assert report["data"]["harmful"] == {"source": None, "count": len(HARMFUL)}


def test_drift_report_by_position_and_other_positions(rd, tiny_model, tiny_tokenizer):
    report = drift_report(rd, tiny_model, tiny_tokenizer, harmful=HARMFUL, harmless=HARMLESS, pos=-2, by_position=True)
    assert set(report) == set(REQUIRED_FIELDS) | {"positions", "cos_by_position"}
    assert report["positions"] == rd.positions and list(report["cos_by_position"]) == [str(q) for q in rd.positions]
    assert report["cos"] == report["cos_by_position"]["-2"] and report["pos"] == -2
    assert report["same_weights"] and report["cos"][1:] == pytest.approx([1.0, 1.0], abs=1e-12)
    assert report["reference"] is None and report["adapter"] is None
    with pytest.raises(ValueError, match="position 7 was not extracted"):
        drift_report(rd, tiny_model, tiny_tokenizer, harmful=HARMFUL, harmless=HARMLESS, pos=7)
    with pytest.raises(ValueError, match="does not record where its harmful prompts came from"):
        drift_report(rd, tiny_model, tiny_tokenizer)  # extracted from in-memory records


def test_drift_json_round_trip(rd, tiny_model, tiny_tokenizer, tmp_path):
    _perturb(tiny_model)
    with pytest.warns(UserWarning, match="derivative"):
        report = drift_report(rd, tiny_model, tiny_tokenizer, harmful=HARMFUL, harmless=HARMLESS, by_position=True)
    path = write_drift(tmp_path / "run", report)
    assert path == tmp_path / "run" / "drift.json"
    assert json.loads(path.read_text())["cos"][0] is None
    assert read_drift(path) == report == read_drift(tmp_path / "run")  # the file or its folder; floats exact


def test_bad_drift_files_give_a_clear_error(tmp_path):
    good = {name: None for name in REQUIRED_FIELDS} | {"format": DRIFT_FORMAT, "cos": [None, 0.5],
                                                       "undefined_layers": [0]}
    assert read_drift(write_drift(tmp_path, good)) == good

    def bad(obj, text: str | None = None):
        path = tmp_path / "bad" / "drift.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text if text is not None else json.dumps(obj))
        return path

    path = bad({k: v for k, v in good.items() if k != "cos_mean"})
    with pytest.raises(DriftFileError, match="missing field 'cos_mean'") as e:
        read_drift(path)
    assert str(path) in str(e.value)
    old = {"reference": "r", "adapter": "a", "cos": [None, 0.5], "undefined_layers": [0]}  # the old experiment file
    with pytest.raises(DriftFileError, match=r"drift\.json: not a drift report: missing field 'format'"):
        read_drift(bad(old))
    with pytest.raises(DriftFileError, match="unknown format 'safeanchor.drift/0'"):
        read_drift(bad({**good, "format": "safeanchor.drift/0"}))
    with pytest.raises(DriftFileError, match="'undefined_layers' .* disagrees"):
        read_drift(bad({**good, "undefined_layers": []}))
    with pytest.raises(DriftFileError, match="'cos' must be a list"):
        read_drift(bad({**good, "cos": "0.5"}))
    with pytest.raises(DriftFileError, match="not valid JSON"):
        read_drift(bad(None, text="{"))
    with pytest.raises(DriftFileError, match="a JSON object is expected"):
        read_drift(bad([1, 2]))
    with pytest.raises(FileNotFoundError, match="no drift report there"):
        read_drift(tmp_path / "nowhere")
    with pytest.raises(DriftFileError, match="missing field 'cos'"):  # nothing written
        write_drift(tmp_path / "never", {k: v for k, v in good.items() if k != "cos"})
    assert not (tmp_path / "never").exists()


def test_cosine_per_layer():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = torch.tensor([[2.0, 0.0], [-1.0, -1.0], [1.0, 0.0]])
    c = cosine_per_layer(a, b)
    assert c[:2].tolist() == [1.0, pytest.approx(-1.0)] and torch.isnan(c[2])
