"""Facts about the process group the launcher (torchrun, accelerate) started, and the few
collectives safeanchor's own code needs around the engines' data parallelism.

Training itself is data-parallel through HF ``Trainer`` + ``accelerate`` (DDP, FSDP, DeepSpeed);
nothing here distributes a model. What lives here is what the engines do not do for us:
gathering ProCon's anchor shards, summing direction statistics, averaging logged numbers, and
refusing a run that was launched several times without a process group.

Every function works in a single process too (world size 1: a no-op or the identity).

>>> world_size(), rank(), is_main()
(1, 0, True)
>>> import torch; float(all_reduce(torch.tensor(2.0)))
2.0
"""

from __future__ import annotations

import os
import zlib

import torch


def _dist():
    return torch.distributed if torch.distributed.is_available() and torch.distributed.is_initialized() else None


def launched_world_size() -> int:
    """The number of processes the launcher says it started (``WORLD_SIZE``; MPI's sizes)."""
    for key in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(key, "").strip().isdigit():
            return int(os.environ[key])
    return 1


def is_multi_process_launch() -> bool:
    return launched_world_size() > 1


def world_size() -> int:
    d = _dist()
    return d.get_world_size() if d else 1


def rank() -> int:
    d = _dist()
    return d.get_rank() if d else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    d = _dist()
    if d:
        d.barrier()


def _on_backend(t: torch.Tensor) -> torch.Tensor:
    """Collectives run on the backend's device: CPU for gloo, the rank's GPU for nccl."""
    d = _dist()
    if d.get_backend() == "nccl" and t.device.type != "cuda":
        return t.to(torch.device("cuda", torch.cuda.current_device()))
    if d.get_backend() == "gloo" and t.device.type != "cpu":
        return t.cpu()
    return t


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """A reduced copy of ``t`` over all ranks (``sum``, ``min``, ``max``), on ``t``'s device."""
    d = _dist()
    if not d:
        return t.clone()
    ops = {"sum": d.ReduceOp.SUM, "min": d.ReduceOp.MIN, "max": d.ReduceOp.MAX}
    work = _on_backend(t.clone())
    d.all_reduce(work, op=ops[op])
    return work.to(t.device)


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """``src``'s value of ``t`` on every rank (shape and dtype must agree across ranks)."""
    d = _dist()
    if not d:
        return t
    work = _on_backend(t.clone().contiguous())
    d.broadcast(work, src=src)
    return work.to(t.device)


def all_gather_objects(obj):
    """Every rank's ``obj`` (picklable), in rank order."""
    d = _dist()
    if not d:
        return [obj]
    out = [None] * d.get_world_size()
    d.all_gather_object(out, obj)
    return out


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each number averaged over ranks (every rank must pass the same keys).

    Called on every logged step, so it costs two small tensor all-reduces and no object gather:
    first the key count and a fingerprint of the names (MAX of each and of its negative, so the
    ranks agree exactly when max == min), then the values. The check comes first because a SUM of
    tensors of different lengths is not reliably an error under gloo (one rank can get a result).
    """
    d = _dist()
    if not d or not values:
        return dict(values)
    keys = sorted(values)
    mark = float(zlib.crc32("\0".join(keys).encode()))  # < 2**32: exact in float64
    head = all_reduce(torch.tensor([len(keys), -len(keys), mark, -mark], dtype=torch.float64), op="max")
    if head[0] != -head[1] or head[2] != -head[3]:
        raise RuntimeError(f"ranks log different values: rank {rank()} has {keys}, another rank other names")
    t = all_reduce(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)) / d.get_world_size()
    mean = dict(zip(keys, t.tolist()))
    return {k: mean[k] for k in values}  # the caller's order


def join_launch() -> int:
    """Form the launcher's process group (through ``accelerate``, as ``Trainer`` does) when this
    process is one of several, and return the world size; a no-op in a single process. What the
    commands that shard work without a ``Trainer`` (``direction``, ``eval``) call first."""
    if is_multi_process_launch() and _dist() is None:
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())
    return check_one_run(None)


def shard(n: int) -> range:
    """The indices ``0..n-1`` this rank takes (round robin); all of them in a single process."""
    return range(rank(), n, world_size())


class DuplicatedRunError(RuntimeError):
    """Several processes were launched but they do not form one process group: each would train
    the whole data as a run of its own and all would write the same output folder."""


def check_one_run(config) -> int:
    """The world size this run trains with; raises :class:`DuplicatedRunError` when the launcher
    started several processes that are not one data-parallel run."""
    launched = launched_world_size()
    joined = int(getattr(config, "world_size", 1)) if config is not None else world_size()
    if launched > 1 and joined != launched:
        raise DuplicatedRunError(
            f"the launcher started {launched} processes, but this one trains as a run of world size {joined}: "
            "each process would train on the whole data and write the same output folder. Launch with torchrun "
            "or accelerate launch so that the processes join one process group (on CPU safeanchor uses gloo)")
    return joined


__all__ = ["DuplicatedRunError", "all_gather_objects", "all_reduce", "barrier", "broadcast", "check_one_run",
           "is_main", "is_multi_process_launch", "join_launch", "launched_world_size", "mean_over_ranks", "rank",
           "shard", "world_size"]
