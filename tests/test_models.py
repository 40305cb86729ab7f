"""Model loading: local folders, unsupported families, LoRA attach, atomic embedded builds,
and (slow) the embedded SmolLM2 conversion and its cache."""

from __future__ import annotations

import time

import pytest
import torch

from safeanchor import models
from safeanchor.families import UnsupportedModelError, family_of, get_blocks


def test_load_local_folder(tiny_model_dir):
    model, tok = models.load_model(str(tiny_model_dir), device="cpu")
    assert model.config.model_type == "llama" and not model.training
    assert model.safeanchor_precision.dtype == torch.float32
    assert model.safeanchor_precision.autocast is None  # CPU default: plain fp32 (faster here than bf16 autocast)
    assert tok.pad_token is not None and tok.chat_template
    assert len(get_blocks(model)) == 3


def test_precision_choices():
    assert models.choose_precision("cpu", "fp32") == models.Precision(torch.float32, None)
    assert models.choose_precision("cpu", "bf16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        models.choose_precision("cpu", "int3")


def test_unknown_family_is_clear():
    with pytest.raises(UnsupportedModelError, match="'gpt2' is not supported; supported: .*llama"):
        family_of("gpt2")


def test_attach_lora_defaults_and_fingerprint(tiny_model):
    fp_before = models.model_fingerprint(tiny_model)
    assert models.model_fingerprint(tiny_model) == fp_before  # stable
    peft_model = models.attach_lora(tiny_model, r=4, alpha=8, seed=0)
    cfg = peft_model.peft_config["default"]
    assert cfg.r == 4 and set(cfg.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 3 * 4 * 2  # layers x modules x (A, B)
    assert models.model_fingerprint(peft_model) != fp_before  # adapter weights are part of it
    with pytest.raises(ValueError, match="matched no module"):
        models.attach_lora(models_tiny_copy(tiny_model), target_modules=["nonexistent_proj"])


def models_tiny_copy(model):
    import copy

    return copy.deepcopy(model.get_base_model() if hasattr(model, "get_base_model") else model)


def test_atomic_dir_leaves_nothing_on_crash_and_never_overwrites(tmp_path):
    from safeanchor.io import atomic_dir

    target = tmp_path / "m"

    def crash(d):
        (d / "config.json").write_text("{}")
        raise KeyboardInterrupt("simulated crash mid-conversion")

    with pytest.raises(KeyboardInterrupt):
        atomic_dir(target, crash)
    assert not target.exists() and list(tmp_path.iterdir()) == []

    def ok(d):
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"x")
        return "built"

    assert atomic_dir(target, ok) == "built" and models.is_built(target)
    with pytest.raises(FileExistsError):
        atomic_dir(target, ok)  # a finished result is never overwritten by default
    assert atomic_dir(target, ok, if_exists="keep") is None  # a concurrent builder won
    (target / "model.safetensors").write_bytes(b"old")
    atomic_dir(target, ok, if_exists="replace")
    assert (target / "model.safetensors").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no .tmp-/.old- left over


def test_the_loader_never_trains_a_missing_safe_model(tmp_path, monkeypatch):
    """Loading embedded:smollm2-135m-safe with an empty cache fails at once and says how to build it."""
    import sys
    import time

    monkeypatch.setenv("SAFEANCHOR_CACHE", str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("safeanchor.pipelines")]:
        monkeypatch.delitem(sys.modules, name)
    t0 = time.perf_counter()
    with pytest.raises(models.ModelNotBuiltError, match=r"safeanchor align \(about 11 min"):
        models.load_model("embedded:smollm2-135m-safe", device="cpu")
    assert time.perf_counter() - t0 < 5
    assert not [m for m in sys.modules if m.startswith("safeanchor.pipelines")]  # nothing imported the recipe
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_stale_safe_build_is_rebuilt_by_the_recipe_not_the_loader(tmp_path, monkeypatch):
    """The recipe check sits next to the build: ensure_safe_start_model rebuilds a build of an older
    recipe (replacing it only when the new one is done) and reuses a current one; load_model loads
    whatever is cached."""
    import json
    from dataclasses import asdict

    from safeanchor.pipelines import safety_alignment as align

    monkeypatch.setenv("SAFEANCHOR_CACHE", str(tmp_path))
    target = models.embedded_dir("smollm2-135m-safe")
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"old")
    (target / models.BUILD_INFO_FILE).write_text('{"recipe": "align-1"}')
    assert models.ensure_embedded("smollm2-135m-safe") == target  # the loader loads it as it is
    assert not align.is_current(target)
    calls = []

    def fake_build(base, out, *, force=False, **opts):
        calls.append((base, out, force))
        (out / "model.safetensors").write_bytes(b"new")
        (out / models.BUILD_INFO_FILE).write_text(json.dumps({"recipe": align.RECIPE, "config": asdict(align.AlignConfig())}))

    monkeypatch.setattr(align, "build_safe_model", fake_build)
    assert align.ensure_safe_start_model() == target
    assert calls == [(align.DEFAULT_BASE, target, True)] and align.is_current(target)
    align.ensure_safe_start_model()
    assert len(calls) == 1  # current: reused


def test_recipe_marker(tmp_path):
    from safeanchor.pipelines.safety_alignment import RECIPE, is_current

    assert not is_current(tmp_path)  # no alignment.json: an old or foreign build
    (tmp_path / models.BUILD_INFO_FILE).write_text('{"recipe": "align-1"}')
    assert not is_current(tmp_path)
    import json
    from dataclasses import asdict

    from safeanchor.pipelines.safety_alignment import AlignConfig

    (tmp_path / models.BUILD_INFO_FILE).write_text(f'{{"recipe": "{RECIPE}"}}')
    assert not is_current(tmp_path)  # no settings recorded: not known to be the default build
    defaults = json.loads(json.dumps(asdict(AlignConfig(device="cpu", progress=False))))
    (tmp_path / models.BUILD_INFO_FILE).write_text(json.dumps({"recipe": RECIPE, "config": defaults}))
    assert is_current(tmp_path)  # runtime fields (device, progress) do not matter
    (tmp_path / models.BUILD_INFO_FILE).write_text(json.dumps({"recipe": RECIPE, "config": {**defaults, "epochs": 1}}))
    assert not is_current(tmp_path)  # a build with other options is not the embedded model


def test_unknown_embedded_name():
    with pytest.raises(ValueError, match="unknown embedded model 'nope'; available: smollm2-135m-instruct"):
        models.resolve_model_path("embedded:nope")


@pytest.mark.slow
def test_embedded_model_converts_once_and_loads_from_cache(embedded_cache):
    target = models.embedded_dir("smollm2-135m-instruct")
    was_built = models.is_built(target)
    t0 = time.perf_counter()
    model, tok = models.load_model("embedded:smollm2-135m-instruct", device="cpu")
    first = time.perf_counter() - t0
    assert models.is_built(target)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert not hasattr(model.config, "quantization_config")
    mtime = (target / "config.json").stat().st_mtime
    t0 = time.perf_counter()
    model2, _ = models.load_model("embedded:smollm2-135m-instruct", device="cpu")
    second = time.perf_counter() - t0
    assert (target / "config.json").stat().st_mtime == mtime  # no re-conversion
    assert models.model_fingerprint(model) == models.model_fingerprint(model2)
    if not was_built:
        assert second < first
    print(f"embedded load: first {first:.1f}s (converted={not was_built}), cached {second:.1f}s")
    ids = tok.apply_chat_template([{"role": "user", "content": "Say hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        logits = model(**ids).logits
    assert torch.isfinite(logits).all()


def test_missing_adapter_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        models.load_model(str(tiny_model_dir), device="cpu", adapter=str(tmp_path / "not-trained"))


def test_base_fingerprints_match_across_precisions_and_differ_for_other_weights(tiny_model):
    """What an adapter records of its base: the same weights loaded in fp32, bf16 or fp16 share a
    fingerprint with the fp32 record (an adapter trained in fp32 loads onto the bf16 base); other
    weights share none; LoRA weights are left out."""
    import copy

    import torch

    record = models.base_fingerprints(tiny_model)
    loads = {dtype: models.base_fingerprints(copy.deepcopy(tiny_model).to(dtype))
             for dtype in (torch.float32, torch.bfloat16, torch.float16)}
    for here in loads.values():
        assert models.same_base(record, here) and models.same_base(here, record)
    # fp32-stored weights loaded once in bf16, once in fp16 round differently: undecidable, never "other weights"
    assert models.same_base(loads[torch.bfloat16], loads[torch.float16]) in (True, None)
    assert loads[torch.float16]["dtype"] == "float16"
    assert models.model_fingerprint(tiny_model) != models.model_fingerprint(copy.deepcopy(tiny_model).to(torch.bfloat16))
    assert models.base_fingerprints(models.attach_lora(copy.deepcopy(tiny_model), r=2)) == record
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        next(other.parameters()).view(-1)[::7] += 0.5
    assert not models.same_base(record, models.base_fingerprints(other))
