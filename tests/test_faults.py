"""Bad inputs and faults, one row each: a clear error that names what is wrong and where, and
nothing already written is changed (issue 16's first causes: unchecked values, finished outputs
overwritten, loaded files not checked, mismatched resumes).

Each row builds its situation in a fresh folder, runs the action and checks the message; the
fixture then checks that every file that existed before the action is byte-identical after it.
"""

from __future__ import annotations

import os
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from conftest import make_tiny_llama
from test_train import run_tiny, write_data


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@dataclass
class Fault:
    id: str
    prepare: Callable[[Path, object], dict]  # builds the situation; returns what the action needs
    action: Callable[[Path, object, dict], object]
    error: type[BaseException]
    message: str


def _finished_run(tmp: Path, tok) -> dict:
    data = write_data(tmp / "data")
    run_tiny(tmp / "run", tok, data, method="sft")
    return {"data": data}


def _checkpointed_run(tmp: Path, tok) -> dict:
    data = write_data(tmp / "data")
    run_tiny(tmp / "run", tok, data, method="sft", save_strategy="steps", save_steps=2)
    return {"data": data}


def _bad_utf8(tmp: Path, tok) -> dict:
    path = tmp / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "ok", "response": "fine"}\n{"prompt": "caf\xe9", "response": "x"}\n')
    return {"path": path}


def _direction(tmp: Path, tok, *, corrupt: str) -> dict:
    import torch

    from safeanchor.direction.extract import ExtractConfig, extract_direction

    data = write_data(tmp / "data")
    model = make_tiny_llama(len(tok))
    rd = extract_direction(model, tok, ExtractConfig(harmful=data["harmful"], harmless=data["harmless"], limit=8))
    rd.save_pretrained(tmp / "dir")
    f = tmp / "dir" / "direction.safetensors"
    if corrupt == "truncated":
        f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    else:
        from safeanchor.io import load_tensors
        from safetensors.torch import save_file

        t = load_tensors(f)
        key = next(k for k, v in t.items() if v.is_floating_point())
        t[key] = t[key].clone()
        t[key].view(-1)[0] = float("nan")
        save_file(t, str(f))
    return {"dir": tmp / "dir", "torch": torch}


def _adapter_on(tmp: Path, tok, *, weights: bool = True) -> dict:
    from safeanchor.models import attach_lora

    for name, seed in (("base_a", 0), ("base_b", 1)):
        make_tiny_llama(len(tok), seed=seed).save_pretrained(tmp / name)
        tok.save_pretrained(tmp / name)
    from safeanchor.models import load_model

    model, _ = load_model(str(tmp / "base_a"), device="cpu")
    attach_lora(model, r=2).save_pretrained(tmp / "adapter")
    if not weights:
        for f in (tmp / "adapter").glob("adapter_model.*"):
            f.unlink()
    return {}


def _trained_then_base_replaced(tmp: Path, tok, **train_kw) -> dict:
    """A run trained on the folder ``base``, whose weights are then replaced by another model's (a
    rebuilt or overwritten base under the same name)."""
    from test_train import tiny_config
    from safeanchor.models import load_model
    from safeanchor.train import train

    data = write_data(tmp / "data")
    make_tiny_llama(len(tok), seed=0).save_pretrained(tmp / "base")
    tok.save_pretrained(tmp / "base")
    model, _ = load_model(str(tmp / "base"), device="cpu")
    train(tiny_config(tmp / "run", data, model=str(tmp / "base"), method="sft", **train_kw), model, tok)
    make_tiny_llama(len(tok), seed=1).save_pretrained(tmp / "base")
    return {"data": data}


def _resume_on(tmp: Path, tok, s: dict):
    from test_train import tiny_config
    from safeanchor.models import load_model
    from safeanchor.train import train

    model, _ = load_model(str(tmp / "base"), device="cpu")
    return train(tiny_config(tmp / "run", s["data"], model=str(tmp / "base"), method="sft", save_strategy="steps",
                             save_steps=2, resume_from_checkpoint="last"), model, tok)


def _load(path: str, **kw):
    from safeanchor.models import load_model

    return load_model(path, device="cpu", **kw)


def _yaml(text: str):
    """A training config file ``c.yaml`` holding ``text``."""
    def prepare(tmp: Path, tok) -> dict:
        (tmp / "c.yaml").write_text(text)
        return {"path": tmp / "c.yaml"}
    return prepare


def _load_config(tmp: Path, tok, s: dict):
    from safeanchor.train.config import load_config

    return load_config(s["path"], ["report_to=none"])


def _interrupted_run(tmp: Path, tok, *, edit_data: bool = False) -> dict:
    """A run stopped after its checkpoints were written (no train_report.json)."""
    s = _checkpointed_run(tmp, tok)
    (tmp / "run" / "out" / "train_report.json").unlink()
    if edit_data:  # the same path, other content
        f = Path(s["data"]["train"][len("file:"):])
        f.write_text(f.read_text().replace("The answer", "THE ANSWER"))
    return s


def _ckpt_kw(**kw) -> dict:
    return dict(method="sft", save_strategy="steps", save_steps=2, **kw)


def _train_missing_model(tmp: Path, tok, s: dict, **kw):
    """train() from a model name that does not exist: a check that fails first never loaded it."""
    from test_train import tiny_config
    from safeanchor.train import train

    data = s.get("data") or write_data(tmp / "data2")
    return train(tiny_config(tmp / "run", data, model=str(tmp / "no-such-model"), method="sft", **kw))


def _with_user_file(tmp: Path, tok) -> dict:
    s = _finished_run(tmp, tok)
    (tmp / "run" / "out" / "notes.txt").write_text("my notes")
    return s


def _bench_yaml(text: str):
    def prepare(tmp: Path, tok) -> dict:
        (tmp / "bench.yaml").write_text(text)
        return {"path": tmp / "bench.yaml"}
    return prepare


class CliFailed(Exception):
    """A CLI invocation that exited non-zero; the message is its output."""


def _cli(*args: str):
    from typer.testing import CliRunner

    from safeanchor.cli import app

    res = CliRunner().invoke(app, list(args))
    if res.exit_code != 0:
        raise CliFailed(" ".join(res.output.split()))
    return res


FAULTS = [
    Fault("train into a finished run's folder", _finished_run,
          lambda tmp, tok, s: run_tiny(tmp / "run", tok, s["data"], method="procon", alpha=0.5),
          FileExistsError, r"already holds another run \(differs in: method: 'sft' -> 'procon'"),
    Fault("train the same run again", _finished_run,
          lambda tmp, tok, s: run_tiny(tmp / "run", tok, s["data"], method="sft"),
          FileExistsError, r"already holds this same run, finished; nothing was changed"),
    Fault("resume with another method", _checkpointed_run,
          lambda tmp, tok, s: run_tiny(tmp / "run", tok, s["data"], method="procon", alpha=0.5, save_strategy="steps",
                                       save_steps=2, resume_from_checkpoint="last"),
          ValueError, r"cannot resume from .*checkpoint-6: it was trained with other settings \(method: 'sft' -> 'procon'"),
    Fault("data file that is not UTF-8", _bad_utf8,
          lambda tmp, tok, s: __import__("safeanchor.data", fromlist=["read_records"]).read_records(s["path"]),
          ValueError, r"latin1\.jsonl:2: not UTF-8 text \(byte 0xe9 at column 16\)"),
    Fault("truncated direction file", lambda tmp, tok: _direction(tmp, tok, corrupt="truncated"),
          lambda tmp, tok, s: __import__("safeanchor.direction.artifact", fromlist=["RefusalDirection"])
          .RefusalDirection.from_pretrained(s["dir"]),
          ValueError, r"direction\.safetensors: not a readable safetensors file"),
    Fault("direction file with a NaN", lambda tmp, tok: _direction(tmp, tok, corrupt="nan"),
          lambda tmp, tok, s: __import__("safeanchor.direction.artifact", fromlist=["RefusalDirection"])
          .RefusalDirection.from_pretrained(s["dir"]),
          ValueError, r"direction\.safetensors: tensor '.*' holds non-finite values"),
    Fault("model path that does not exist", lambda tmp, tok: {},
          lambda tmp, tok, s: _load(str(tmp / "no" / "such" / "model")),
          FileNotFoundError, r"model folder not found: .*no/such/model \(a local path; it is not looked up on the hub\)"),
    Fault("hub id that is not cached, offline", lambda tmp, tok: {},
          lambda tmp, tok, s: _load("nobody-xyz/not-a-model"),
          FileNotFoundError, r"neither a local folder nor in the Hugging Face cache"),
    Fault("adapter applied to another base", _adapter_on,
          lambda tmp, tok, s: _load(str(tmp / "base_b"), adapter=str(tmp / "adapter")),
          ValueError, r"was trained on .*base_a, not on .*base_b"),
    Fault("adapter on a base of the same name whose weights changed", _trained_then_base_replaced,
          lambda tmp, tok, s: _load(str(tmp / "base"), adapter=str(tmp / "run" / "out")),
          ValueError, r"was trained on a base with weights fingerprint \w+ \(.*train_report\.json\), but .*base has "
          r"fingerprint \w+: the same name holds other weights now"),
    Fault("checkpoint adapter on a base whose weights changed",
          lambda tmp, tok: _trained_then_base_replaced(tmp, tok, save_strategy="steps", save_steps=2),
          lambda tmp, tok, s: _load(str(tmp / "base"), adapter=str(tmp / "run" / "out" / "checkpoint-6")),
          ValueError, r"checkpoint-6 was trained on a base with weights fingerprint .*safeanchor_state\.json"),
    Fault("resume on a base whose weights changed",
          lambda tmp, tok: _trained_then_base_replaced(tmp, tok, save_strategy="steps", save_steps=2),
          _resume_on, ValueError, r"cannot resume from .*checkpoint-6: it was trained with other settings \(base "
          r"weights fingerprint: \w+ there, \w+ here\)"),
    Fault("adapter folder without weights", lambda tmp, tok: _adapter_on(tmp, tok, weights=False),
          lambda tmp, tok, s: _load(str(tmp / "base_a"), adapter=str(tmp / "adapter")),
          FileNotFoundError, r"adapter_config\.json but no adapter_model\.safetensors"),
    # config values checked by type and range before any work, with the file's line
    Fault("optimizer setting out of range", _yaml("method: sft\nadam_beta1: 5\n"), _load_config,
          ValueError, r"c\.yaml:2: adam_beta1 must be a number in \[0, 1\); got 5"),
    Fault("seed that is not an integer", _yaml("method: sft_safe\nsafety_seed: abc\n"), _load_config,
          ValueError, r"c\.yaml:2: safety_seed must be an integer in \[0, 4294967295\]; got 'abc'"),
    Fault("an integer where a boolean is declared", _yaml("use_lora: 1\n"), _load_config,
          ValueError, r"c\.yaml:1: use_lora must be true or false; got 1 \(int\)"),
    Fault("column mapping that is not a mapping", _yaml("train_columns: prompt\n"), _load_config,
          ValueError, r"c\.yaml:1: train_columns must be a mapping record field -> column name"),
    Fault("duplicate key in a YAML config", _yaml("method: procon\nalpha: 0.1\nalpha: 5\n"), _load_config,
          ValueError, r"c\.yaml:3: duplicate key 'alpha' \(first at line 2\)"),
    # "the same run": every setting but the output/logging ones, and the data's content
    Fault("finished run with another optimizer setting", _finished_run,
          lambda tmp, tok, s: run_tiny(tmp / "run", tok, s["data"], method="sft", adam_beta2=0.5),
          FileExistsError, r"already holds another run \(differs in: adam_beta2: 0\.999 -> 0\.5\)"),
    Fault("resume with another optimizer setting", _interrupted_run,
          lambda tmp, tok, s: run_tiny(tmp / "run", tok, s["data"], **_ckpt_kw(label_smoothing_factor=0.5,
                                                                               resume_from_checkpoint="last")),
          ValueError, r"cannot resume from .*checkpoint-6: .*\(label_smoothing_factor: 0\.0 -> 0\.5\)"),
    Fault("resume after the training data file was edited", lambda tmp, tok: _interrupted_run(tmp, tok, edit_data=True),
          lambda tmp, tok, s: run_tiny(tmp / "run", tok, s["data"], **_ckpt_kw(resume_from_checkpoint="last")),
          ValueError, r"cannot resume from .*checkpoint-6: .*content of file:.*train\.jsonl: sha256 \w+… -> \w+… "
          r"\(the file changed\)"),
    Fault("fresh run into an interrupted run's folder, other settings", _interrupted_run,
          lambda tmp, tok, s: run_tiny(tmp / "run", tok, s["data"], **_ckpt_kw(learning_rate=0.5, lora_r=4)),
          FileExistsError, r"holds an interrupted run with other settings \(differs in: learning_rate: 0\.01 -> 0\.5; "
          r"lora_r: 8 -> 4\), last saved at checkpoint-6; .*set resume_from_checkpoint=last to continue it, "
          r"overwrite_output_dir=true to start over, or choose another output_dir"),
    Fault("fresh run into an interrupted run's folder, same settings", _interrupted_run,
          lambda tmp, tok, s: run_tiny(tmp / "run", tok, s["data"], **_ckpt_kw()),
          FileExistsError, r"holds an interrupted run with these same settings, .*resume_from_checkpoint=last"),
    Fault("resume a finished run", _checkpointed_run,
          lambda tmp, tok, s: run_tiny(tmp / "run", tok, s["data"], **_ckpt_kw(resume_from_checkpoint="last")),
          FileExistsError, r"already holds this run, finished \(train_report\.json\): there is nothing left to resume; "
          r"nothing was changed"),
    Fault("resume with no checkpoint, found before the model load", lambda tmp, tok: {},
          lambda tmp, tok, s: _train_missing_model(tmp, tok, s, resume_from_checkpoint="last"),
          ValueError, r"resume_from_checkpoint=last: no checkpoint found in .*run/out"),
    Fault("resume from a checkpoint path that does not exist", lambda tmp, tok: {},
          lambda tmp, tok, s: _train_missing_model(tmp, tok, s, resume_from_checkpoint=str(tmp / "nope" / "checkpoint-4")),
          ValueError, r"resume_from_checkpoint: checkpoint folder not found: .*nope/checkpoint-4"),
    Fault("overwrite a folder that also holds a user's file", _with_user_file,
          lambda tmp, tok, s: run_tiny(tmp / "run", tok, s["data"], method="sft", overwrite_output_dir=True),
          FileExistsError, r"also holds files that no training run writes \(notes\.txt\); nothing was changed"),
    # bench: lists without duplicates, everything checked before the first stage
    Fault("bench seed listed twice", _bench_yaml("preset: quick\nseeds: [0, 0]\n"),
          lambda tmp, tok, s: __import__("safeanchor.pipelines.experiment", fromlist=["x"]).ExperimentConfig
          .from_yaml(s["path"]),
          ValueError, r"bench\.yaml:2: seeds: 0 listed more than once"),
    Fault("bench method listed twice", _bench_yaml("methods: [start, sft, sft]\n"),
          lambda tmp, tok, s: __import__("safeanchor.pipelines.experiment", fromlist=["x"]).ExperimentConfig
          .from_yaml(s["path"]),
          ValueError, r"bench\.yaml:1: methods: 'sft' listed more than once"),
    Fault("data show with a negative count", lambda tmp, tok: {"data": write_data(tmp / "data")},
          lambda tmp, tok, s: _cli("data", "show", s["data"]["train"], "-n", "-3"),
          CliFailed, r"Invalid value for '-n'"),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
def test_fault_gives_a_clear_error_and_changes_nothing(tmp_path, tiny_tokenizer, fault):
    state = fault.prepare(tmp_path, tiny_tokenizer)
    before = snapshot(tmp_path)
    with pytest.raises(fault.error, match=fault.message):
        fault.action(tmp_path, tiny_tokenizer, state)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing written before was touched


def test_cli_prints_one_line_for_a_user_mistake(tmp_path):
    """The installed command: no traceback for a bad config value, exit code 2."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", "from safeanchor.cli import app; app()", "train", "--set",
                          "num_train_epochs=0", "--set", "report_to=none", "--set", f"output_dir={tmp_path / 'o'}"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr + res.stdout
    assert "num_train_epochs must be a number > 0" in res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr


@pytest.mark.parametrize("command, existing", [
    (["eval", "--model", "{model}", "--out", "{out}"], "eval.json"),
    (["direction", "--model", "{model}", "--out", "{out}"], "direction.json"),
])
def test_cli_refuses_to_overwrite_a_finished_artifact(tmp_path, tiny_model_dir, command, existing):
    """eval / direction into a folder that holds another result: refused before any work, unchanged."""
    from typer.testing import CliRunner

    from safeanchor.cli import app

    out = tmp_path / "out"
    out.mkdir()
    (out / existing).write_text('{"a finished": "result"}')
    before = snapshot(out)
    args = [a.format(model=tiny_model_dir, out=out) for a in command]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())  # the console wraps long lines
    assert "already holds a finished" in text and "--force" in text
    assert snapshot(out) == before


def test_debug_flag_shows_the_traceback_of_a_user_mistake(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("num_train_epochs: -2\n")
    cmd = [sys.executable, "-m", "safeanchor", "train", "--config", str(bad)]
    plain = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "SAFEANCHOR_DEBUG": ""})
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, env={**os.environ, "SAFEANCHOR_DEBUG": ""})
    assert plain.returncode == 2 and "Traceback" not in plain.stdout + plain.stderr
    assert "num_train_epochs must be a number > 0" in plain.stdout + plain.stderr
    assert debug.returncode != 0 and "ConfigError" in debug.stdout + debug.stderr


def test_cli_train_of_a_finished_run_is_a_noop(tmp_path, tiny_model_dir):
    """``safeanchor train`` of the same finished run again, or resuming it: exit 0, "nothing to do",
    and the folder byte-identical (a different run into it is refused, exit 2)."""
    from typer.testing import CliRunner

    from safeanchor.cli import app

    data = write_data(tmp_path / "data")
    base = ["train", "--set", f"model={tiny_model_dir}", "--set", f"train_data={data['train']}", "--set",
            f"output_dir={tmp_path / 'run'}", "--set", "report_to=none", "--set", "max_length=64", "--set",
            "per_device_train_batch_size=8", "--set", "num_train_epochs=1", "--set", "method=sft"]
    first = CliRunner().invoke(app, base)
    assert first.exit_code == 0, first.output
    before = snapshot(tmp_path / "run")
    for extra in ([], ["--set", "resume_from_checkpoint=last"]):
        again = CliRunner().invoke(app, base + extra)
        assert again.exit_code == 0 and "nothing to do" in again.output, again.output
        assert snapshot(tmp_path / "run") == before
    other = CliRunner().invoke(app, base + ["--set", "learning_rate=0.5"])
    assert other.exit_code == 2 and "already holds another run" in " ".join(other.output.split())
    assert snapshot(tmp_path / "run") == before
