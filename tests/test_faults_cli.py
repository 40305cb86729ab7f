"""Bad inputs and faults at the command line, one row per case and every command that loads or
writes: the command exits 2 with one line naming what is wrong (no traceback), before any slow work,
and every file that existed before is byte-identical after (nothing finished is replaced, nothing
half-written is left). The library-level rows are in ``test_faults.py``; ``serve``'s own cases in
``test_serve_faults.py``.

Each row runs in a fresh copy of a small workspace (the tiny model, a second tiny model with other
weights, an adapter trained on the first, a direction of the first, data files).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from typer.testing import CliRunner

from conftest import make_tiny_llama
from test_faults import snapshot
from test_train import write_data


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_tokenizer) -> Path:
    from safeanchor.direction.extract import ExtractConfig, extract_direction
    from safeanchor.models import attach_lora, load_model

    ws = tmp_path_factory.mktemp("faults_cli")
    data = write_data(ws / "data")
    for name, seed in (("model", 0), ("other", 1)):
        make_tiny_llama(len(tiny_tokenizer), seed=seed).save_pretrained(ws / name)
        tiny_tokenizer.save_pretrained(ws / name)
    model, tok = load_model(str(ws / "model"), device="cpu")
    rd = extract_direction(model, tok, ExtractConfig(harmful=data["harmful"], harmless=data["harmless"], limit=8))
    rd.save_pretrained(ws / "direction")
    other, _ = load_model(str(ws / "other"), device="cpu")
    extract_direction(other, tok, ExtractConfig(harmful=data["harmful"], harmless=data["harmless"], limit=8)
                      ).save_pretrained(ws / "other_direction")
    attach_lora(model, r=2, seed=0).save_pretrained(ws / "adapter")
    (ws / "empty.jsonl").write_text("")
    (ws / "a_file").write_text("not a folder")
    return ws


@dataclass
class CliFault:
    id: str
    args: list[str]  # {ws} is the row's workspace copy
    message: str  # a substring of the one-line error (whitespace-normalised)
    prepare: Callable[[Path], None] | None = None
    env: dict[str, str] | None = None


def _finished(name: str, *files: str) -> Callable[[Path], None]:
    def prepare(ws: Path) -> None:
        (ws / name).mkdir(parents=True, exist_ok=True)
        for f in files:
            (ws / name / f).parent.mkdir(parents=True, exist_ok=True)
            (ws / name / f).write_text('{"a finished": "result"}\n')
    return prepare


def _truncated_model(ws: Path) -> None:
    shutil.copytree(ws / "model", ws / "broken")
    f = ws / "broken" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _nan_model(ws: Path) -> None:
    from safetensors.torch import load_file, save_file

    shutil.copytree(ws / "model", ws / "broken")
    f = ws / "broken" / "model.safetensors"
    t = load_file(str(f))
    key = next(k for k in sorted(t) if "layers.1" in k and t[k].dim() == 2)
    t[key][0, 0] = float("nan")
    save_file(t, str(f), metadata={"format": "pt"})


def _garbage_adapter(ws: Path) -> None:
    (ws / "adapter" / "adapter_model.safetensors").write_bytes(b"\x00\xff" * 150)


def _edit_direction_info(change: Callable[[dict], str | dict]) -> Callable[[Path], None]:
    def prepare(ws: Path) -> None:
        f = ws / "direction" / "direction.json"
        new = change(json.loads(f.read_text()))
        f.write_text(new if isinstance(new, str) else json.dumps(new))
    return prepare


def _without(info: dict, key: str) -> dict:
    info.pop(key)
    return info


EVAL = ["eval", "--model", "{ws}/model", "--harmful", "file:{ws}/data/harmful.jsonl", "--harmless", "none",
        "--task", "none", "--limit", "2", "--max-new-tokens", "2", "--quiet"]
DIRECTION = ["direction", "--model", "{ws}/model", "--harmful", "file:{ws}/data/harmful.jsonl",
             "--harmless", "file:{ws}/data/harmless.jsonl", "--limit", "4", "--no-auroc"]
DRIFT = ["drift", "--reference", "{ws}/direction", "--checkpoint", "{ws}/adapter", "--base", "{ws}/model"]
SAFE_LORA = ["safe-lora", "--adapter", "{ws}/adapter", "--base", "{ws}/model", "--unaligned", "{ws}/other"]
STEER = ["direction", "steer", "--direction", "{ws}/direction", "--harmful", "file:{ws}/data/harmful.jsonl",
         "--harmless", "file:{ws}/data/harmless.jsonl", "--limit", "2", "--max-new-tokens", "2", "--coef", "1"]
ALIGN = ["align", "--base", "{ws}/model", "--n-harmful", "4", "--n-harmless", "4", "--extra-harmful", "none",
         "--epochs", "0.5", "--eval-limit", "2"]

FAULTS = [
    CliFault("eval: model weights truncated", EVAL[:2] + ["{ws}/broken"] + EVAL[3:],
             "broken/model.safetensors: not a readable safetensors file (truncated or corrupt?)", _truncated_model),
    CliFault("eval: model weights with a NaN", EVAL[:2] + ["{ws}/broken"] + EVAL[3:],
             "weight 'model.layers.1.", _nan_model),
    CliFault("eval: --llm-judge on without a judge URL", EVAL + ["--llm-judge", "on"],
             "llm_judge='on' but no judge URL", env={"SAFEANCHOR_JUDGE_URL": ""}),
    CliFault("eval: a task that does not exist", EVAL[:-6] + ["--task", "no_such_task", "--limit", "2", "--quiet"],
             "no_such_task"),
    CliFault("eval: 'none' mixed with a source", EVAL + ["--harmless", "none", "--harmless", "bundled:harmless:test"],
             "--harmless none means no source; it cannot be combined with others"),
    CliFault("eval: an empty data file", EVAL[:3] + ["--harmful", "file:{ws}/empty.jsonl"] + EVAL[5:], "empty.jsonl"),
    CliFault("eval: a device this machine lacks", EVAL + ["--device", "cuda:7"], "device 'cuda:7'"),
    CliFault("eval: --out inside a file", EVAL + ["--out", "{ws}/a_file/out"], "a_file is a file, not a folder"),
    CliFault("eval: an adapter whose weights are garbage", EVAL + ["--adapter", "{ws}/adapter"],
             "adapter/adapter_model.safetensors: not a readable safetensors file", _garbage_adapter),
    CliFault("direction: the same prompts on both sides",
             DIRECTION[:5] + ["--harmless", "file:{ws}/data/harmful.jsonl"] + DIRECTION[7:] + ["--out", "{ws}/d"],
             "the harmful and harmless prompts are the same"),
    CliFault("direction: --select-layers beyond the model",
             DIRECTION + ["--out", "{ws}/d", "--select", "--select-layers", "100-200"], "this model has layers 0-2"),
    CliFault("direction: an unknown AUROC source", DIRECTION[:-1] + ["--auroc-harmful", "nope:x", "--out", "{ws}/d"],
             "unknown data source 'nope:x'"),
    CliFault("direction auroc: --out holds a finished AUROC check",
             ["direction", "auroc", "--direction", "{ws}/direction", "--limit", "2", "--out", "{ws}/done"],
             "already holds a finished AUROC check (auroc.json)", _finished("done", "auroc.json")),
    CliFault("direction steer: --out holds a finished steering check", STEER + ["--out", "{ws}/done"],
             "already holds a finished steering check (steering.json)", _finished("done", "steering.json")),
    CliFault("drift: --out holds a finished drift report", DRIFT + ["--out", "{ws}/done"],
             "already holds a finished drift report (adapter/drift.json)", _finished("done", "adapter/drift.json")),
    CliFault("drift: the reference comes from another model",
             ["drift", "--reference", "{ws}/other_direction", "--checkpoint", "{ws}/adapter", "--base", "{ws}/model",
              "--out", "{ws}/d"], "is not the model the reference direction was extracted from"),
    CliFault("drift: a later checkpoint that does not exist", DRIFT + ["--checkpoint", "{ws}/gone", "--out", "{ws}/d"],
             "model folder not found"),
    CliFault("drift: direction.json is not JSON", DRIFT + ["--out", "{ws}/d"],
             "direction/direction.json:1: not valid JSON", _edit_direction_info(lambda info: "{garbage")),
    CliFault("drift: direction.json lacks a field", DRIFT + ["--out", "{ws}/d"],
             "direction.json: missing field(s) n_layers", _edit_direction_info(lambda info: _without(info, "n_layers"))),
    CliFault("safe-lora: --out holds a finished projection", SAFE_LORA + ["--out", "{ws}/done"],
             "already holds a finished Safe LoRA projection", _finished("done", "safe_lora_report.json")),
    CliFault("safe-lora: --out holds other files", SAFE_LORA + ["--out", "{ws}/done"],
             "holds files that are not a Safe LoRA result (notes.txt)", _finished("done", "notes.txt")),
    CliFault("safe-lora: a threshold that is not a cosine", SAFE_LORA + ["--out", "{ws}/s", "--tau", "5"],
             "threshold must be a cosine in [-1, 1], got 5.0"),
    CliFault("align --force: --out holds a user's files", ALIGN + ["--out", "{ws}/done", "--force"],
             "holds files that are not a model built by safeanchor align (notes.txt)", _finished("done", "notes.txt")),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
def test_cli_fault_is_one_line_exit_2_and_changes_nothing(workspace, tmp_path, monkeypatch, fault):
    from safeanchor.cli import app

    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws)
    cfg = ws / "adapter" / "adapter_config.json"  # the copy's adapter sits on the copy's model
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "base_model_name_or_path": str(ws / "model")}))
    if fault.prepare:
        fault.prepare(ws)
    for k, v in (fault.env or {}).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("SAFEANCHOR_DEBUG", raising=False)
    before = snapshot(ws)
    res = CliRunner().invoke(app, [a.format(ws=ws) for a in fault.args])
    text = " ".join(res.output.split())
    assert res.exit_code == 2, res.output + repr(res.exception)
    assert fault.message in text, text
    assert "Traceback" not in res.output
    assert snapshot(ws) == before  # nothing written before changed, nothing new was left behind
