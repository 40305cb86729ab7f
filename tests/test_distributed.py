"""More than one process: data-parallel training started by torchrun on CPU (gloo), as users start it.

Each test launches real processes (``torchrun --nproc_per_node 2``, one torch thread each) through
``tests/dist_worker.py`` or the CLI; the global batch is 4 in every run, so 1 and 2 processes
see the same samples per step and must agree step for step (parity).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("dist_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# fp32 on CPU: a 2-rank mean of per-rank means and gloo's gradient average differ from the one-process
# sum only in the last bits (measured: 4e-7 on adapter values of ~0.3 after 8 steps)
RTOL, ATOL = 1e-5, 1e-5


def launch(args: list[str], *, procs: int = 2, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = (TORCHRUN if procs == 2 else [sys.executable]) + args
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def steps(folder: Path) -> list[dict]:
    return json.loads((folder / "train_log.json").read_text())["steps"]


def report(folder: Path) -> dict:
    return json.loads((folder / "train_report.json").read_text())


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The tiny model and data, and one ProCon (cached anchors) run on 2 processes and on 1."""
    work = tmp_path_factory.mktemp("dist")
    launch([str(WORKER), "prepare", str(work)], procs=1)
    launch([str(WORKER), str(work), "two:procon", "--record"])
    launch([str(WORKER), str(work), "one:procon"], procs=1)
    return work


def test_two_processes_train_as_one_run_equal_to_one_process(work):
    one, two = work / "one", work / "two"
    r2 = report(two)
    assert r2["world_size"] == 2 and report(one)["world_size"] == 1
    assert r2["global_batch_size"] == 4
    # 16 samples, global batch 4, 2 epochs: the one-process step count, not 2 x 8
    assert r2["global_steps"] == report(one)["global_steps"] == 8
    s1, s2 = steps(one), steps(two)
    assert [r["step"] for r in s2] == list(range(8))
    for a, b in zip(s1, s2):  # CE and penalty averaged over ranks = the one-process values
        assert b["ce"] == pytest.approx(a["ce"], rel=RTOL)
        assert b["procon/raw"] == pytest.approx(a["procon/raw"], rel=RTOL, abs=1e-8)
    assert s2[0]["procon/raw"] == 0.0  # exact at step 0 on every rank (guard sums over ranks)
    assert all(r["procon/raw"] > 0 for r in s2[1:])
    A, B = adapter(one), adapter(two)
    assert A.keys() == B.keys()
    for k in A:
        torch.testing.assert_close(B[k], A[k], rtol=RTOL, atol=ATOL)
    assert max(float(A[k].abs().max()) for k in A) > 1e-2  # and training moved the adapter
    anchors = r2["regularizers"]["procon"]
    assert anchors["anchor_world_size"] == 2 and anchors["n_samples"] == 16
    # one writer: the main rank's report; each rank computed half the anchors (its shard)
    assert anchors["anchor_samples_this_rank"] == 8


def test_anchor_cache_is_global_not_rank_local(work):
    """In the second (reshuffled) epoch each rank looks up anchors of samples that only the other rank
    computed in the anchor pass; with a rank-local cache those lookups would miss (NaN -> error) or
    the penalty would differ from the one-process run (the parity test)."""
    per_rank = [json.loads((work / "two" / f"lookups-rank{r}.json").read_text()) for r in (0, 1)]
    first_epoch = [{s for row in rows if row["step"] < 4 for s in row["samples"]} for rows in per_rank]
    assert first_epoch[0].isdisjoint(first_epoch[1]) and len(first_epoch[0] | first_epoch[1]) == 16
    for r, rows in enumerate(per_rank):
        second = {s for row in rows if row["step"] >= 4 for s in row["samples"]}
        assert second - first_epoch[r], f"rank {r} looked up only its own first-epoch samples; the test proves nothing"


def test_every_method_on_two_processes(work):
    """sft, sft_safe, procon (online anchors), procon_safe, asft: one data-parallel run each."""
    runs = {"m_sft": "sft", "m_safe": "sft_safe", "m_online": "procon:online", "m_psafe": "procon_safe",
            "m_asft": "asft"}
    launch([str(WORKER), str(work), *[f"{k}:{v}" for k, v in runs.items()]])
    one = steps(work / "one")
    for name, method in runs.items():
        r, s = report(work / name), steps(work / name)
        n = 16 + (4 if "safe" in method else 0)
        assert r["world_size"] == 2 and r["global_steps"] == n // 4 * 2, name
        raw = [k for k in s[0] if k.endswith("/raw")]
        if method == "sft" or method == "sft_safe":
            assert not raw, name
            continue
        assert s[0][raw[0]] == 0.0 and all(row[raw[0]] > 0 for row in s[1:]), name
    # online anchors (adapters disabled each step) give the cached anchors' penalty
    for a, b in zip(one, steps(work / "m_online")):
        assert b["procon/raw"] == pytest.approx(a["procon/raw"], rel=1e-4, abs=1e-7)


def test_killed_two_process_run_resumes_to_the_uninterrupted_adapter(work):
    proc = launch([str(WORKER), str(work), "resumed:procon", "--stop-after", "3"], check=False)
    assert proc.returncode != 0  # killed right after checkpoint-3
    folder = work / "resumed"
    assert (folder / "checkpoint-3").is_dir() and not (folder / "train_report.json").exists()
    # a resume on another number of processes would change the global batch and the shards: refused
    wrong = launch([str(WORKER), str(work), "resumed:procon", "--resume"], procs=1, check=False)
    assert wrong.returncode != 0 and "world_size: 2 there, 1 here" in wrong.stderr
    launch([str(WORKER), str(work), "resumed:procon", "--resume"])
    assert report(folder)["global_steps"] == 8
    A, B = adapter(work / "two"), adapter(folder)
    for k in A:
        torch.testing.assert_close(B[k], A[k], rtol=RTOL, atol=ATOL)


def procon_cli_config(work: Path, folder: Path, out: str) -> Path:
    """A ProCon run config for ``safeanchor train`` on the tiny model (2 per device, 1 epoch), written to
    ``folder/c.yaml``; the run goes to ``folder/out``."""
    import yaml

    data = {k: f"file:{work / 'data' / (k + '.jsonl')}" for k in ("train", "harmful", "harmless")}
    cfg = {"model": str(work / "model"), "method": "procon", "alpha": 0.1, "output_dir": str(folder / out),
           "train_data": data["train"], "max_length": 64, "per_device_train_batch_size": 2, "num_train_epochs": 1,
           "report_to": "none", "save_strategy": "no",
           "regularizer_options": {"procon": {"direction_harmful": data["harmful"],
                                              "direction_harmless": data["harmless"], "direction_samples": 12}}}
    path = folder / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_under_torchrun_writes_once(work, tmp_path):
    path = procon_cli_config(work, tmp_path, "cli")
    proc = launch(["-m", "safeanchor", "train", "--config", str(path)])
    assert proc.stdout.count("wrote ") == 1 and "on 2 processes" in proc.stdout
    assert report(tmp_path / "cli")["global_steps"] == 4  # 16 samples / (2 x 2)


def test_processes_that_are_not_one_run_are_refused(monkeypatch):
    from safeanchor.distributed import DuplicatedRunError, check_one_run

    class Alone:  # a process that formed no process group
        world_size = 1

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DuplicatedRunError, match="started 2 processes, but this one trains as a run of world size 1"):
        check_one_run(Alone())
    monkeypatch.delenv("WORLD_SIZE")
    assert check_one_run(Alone()) == 1


def test_asft_refuses_a_sharded_lora_factor(tiny_model):
    from safeanchor.methods.asft import whole_factors
    from safeanchor.models import attach_lora

    model = attach_lora(tiny_model, r=2, alpha=4, dropout=0.0, target_modules=["q_proj"], seed=0)
    name, module = next((n, m) for n, m in model.named_modules() if n.endswith("q_proj") and hasattr(m, "lora_A"))
    B, A = whole_factors(name, module, "default")
    assert B.shape == (16, 2) and A.shape == (2, 16)
    module.lora_A["default"].weight = torch.nn.Parameter(torch.empty(0))  # what ZeRO-3 leaves outside forward
    with pytest.raises(RuntimeError, match=rf"LoRA factors of {name} are not whole.*lora_A has shape \(0,\)"):
        whole_factors(name, module, "default")


def test_direction_and_eval_shard_the_prompts(work, tmp_path):
    """``direction`` sums a shard of the prompts per rank (float64, all-reduced); ``eval`` generates a
    shard of the batches per rank and gathers the answers in prompt order: one artifact, equal to
    the one-process one."""
    h, b = f"file:{work / 'data' / 'harmful.jsonl'}", f"file:{work / 'data' / 'harmless.jsonl'}"
    direction = ["-m", "safeanchor", "direction", "--model", str(work / "model"), "--harmful", h, "--harmless", b,
                 "--no-auroc", "--out"]
    evaluate = ["-m", "safeanchor", "eval", "--model", str(work / "model"), "--harmful", h, "--harmless", b,
                "--task", "none", "--max-new-tokens", "6", "--batch-size", "4", "--quiet", "--out"]
    for procs in (1, 2):
        launch(direction + [str(tmp_path / f"d{procs}")], procs=procs)
        proc = launch(evaluate + [str(tmp_path / f"e{procs}")], procs=procs)
        assert proc.stderr.count("wrote ") == 1
    d1, d2 = load_file(tmp_path / "d1" / "direction.safetensors"), load_file(tmp_path / "d2" / "direction.safetensors")
    for k in d1:
        torch.testing.assert_close(d2[k], d1[k], rtol=1e-12, atol=1e-12)
    e1, e2 = (json.loads((tmp_path / f"e{p}" / "eval.json").read_text()) for p in (1, 2))
    assert e2["timing"]["world_size"] == 2 and e1["timing"]["world_size"] == 1
    assert [r["answer"] for r in e2["records"]] == [r["answer"] for r in e1["records"]]
    assert [r["id"] for r in e2["records"]] == [r["id"] for r in e1["records"]]
    assert e2["summary"] == e1["summary"]


def test_fsdp_that_cannot_run_is_refused_not_dropped(work):
    """On CPU, HF Trainer silently trains plain DDP when asked for FSDP; safeanchor says so and stops."""
    env_run = subprocess.run(TORCHRUN + [str(WORKER), str(work), "fsdp:sft"], capture_output=True, text=True,
                             timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "DIST_WORKER_FSDP": "2"})
    assert env_run.returncode != 0
    assert "FSDP needs accelerator devices" in env_run.stderr
    assert not (work / "fsdp" / "train_report.json").exists()


@pytest.mark.parametrize("case", ["same", "count", "names"])
def test_logged_numbers_are_averaged_over_ranks_and_other_names_refused(case):
    """Every rank gets the mean of the same names; ranks that log different names (another count,
    or the same count under other names) both stop with an error, never a partial sum."""
    proc = launch([str(WORKER.with_name("dist_mean_worker.py")), case], timeout=120)
    import re

    # the two ranks' lines may interleave on stdout: find each rank's result wherever it is
    said = dict(re.findall(r"rank (\d) (\{[^}]*\}|error ranks log different values)", proc.stdout))
    assert set(said) == {"0", "1"}, proc.stdout + proc.stderr
    for text in said.values():
        if case == "same":
            assert json.loads(text) == {"loss": 1.5, "procon/raw": 5.0}
        else:
            assert text.startswith("error"), proc.stdout


def test_trl_script_on_two_processes_logs_the_penalty_of_all_ranks(work, tmp_path):
    """A user's TRL script with ``SafeSFTTrainer`` under torchrun: the logged ProCon penalty is the
    mean over ranks (TRL logs rank 0's own average otherwise), so 1 and 2 processes log the same numbers."""
    worker = str(WORKER.with_name("dist_trl_worker.py"))
    for procs in (1, 2):
        launch([worker, str(work), str(tmp_path / f"p{procs}")], procs=procs)
    one, two = ([r for r in json.loads((tmp_path / f"p{p}" / "log_history.json").read_text()) if "procon/raw" in r]
                for p in (1, 2))
    assert len(one) == len(two) == 4 and one[0]["procon/raw"] == 0.0 and one[1]["procon/raw"] > 0
    for a, b in zip(one, two):
        assert b["procon/raw"] == pytest.approx(a["procon/raw"], rel=1e-4, abs=1e-8)
        assert b["ce"] == pytest.approx(a["ce"], rel=1e-4)


@pytest.mark.skipif(__import__("shutil").which("mpirun") is None,
                    reason="accelerate's multi-process CPU launch needs mpirun (Open MPI: apt-get install openmpi-bin)")
def test_accelerate_launch_on_cpu_through_mpi_is_one_run(work, tmp_path):
    """``accelerate launch --cpu --num_processes 2`` starts two processes only through MPI (a hostfile);
    the run they form is one data-parallel run, as under torchrun: half the steps, world size 2, one writer."""
    path = procon_cli_config(work, tmp_path, "mpi")
    (tmp_path / "hostfile").write_text("localhost slots=2\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}  # CI runs as root
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mpirun_hostfile", str(tmp_path / "hostfile"), "-m", "safeanchor", "train", "--config", str(path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.stdout.count("wrote ") == 1 and "on 2 processes" in proc.stdout
    r = report(tmp_path / "mpi")
    assert r["world_size"] == 2 and r["global_steps"] == 4  # 16 samples / (2 per device x 2 ranks)
    assert steps(tmp_path / "mpi")[1]["procon/raw"] > 0


def test_asft_under_real_fsdp2_sharding_refuses_naming_the_module():
    """This torch shards on CPU (FSDP2 over gloo), though HF Trainer does not use it there: on a model
    sharded per decoder layer, AsFT's factor check refuses the DTensor shards naming the module on
    every rank, while the sharded model itself trains (the failure is AsFT's, loud, not a zero penalty)."""
    proc = launch([str(WORKER.with_name("dist_fsdp_worker.py"))], timeout=180)
    import re

    refused = re.findall(r"rank (\d) refused asft: the LoRA factors of (\S+) are not whole on this process",
                         proc.stdout)
    assert sorted(r for r, _ in refused) == ["0", "1"], proc.stdout
    assert all(name.endswith("layers.0.self_attn.q_proj") for _, name in refused)
    trained = dict(re.findall(r"rank (\d) trained ([\d.]+)", proc.stdout))
    assert set(trained) == {"0", "1"} and trained["0"] == trained["1"]  # one model, the same loss on both ranks
