"""Atomic artifact writes: files (JSON sidecars, safetensors) and whole folders are written under a
temp name and renamed, so an interrupted run never leaves a truncated artifact where a good one was.

>>> import tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "a.json")
>>> write_json(p, {"x": 1}); read_json(p)
{'x': 1}
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
import shutil
from typing import Any, Callable, Mapping, TypeVar

T = TypeVar("T")
IF_EXISTS = ("error", "replace", "keep")


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _umask_mode()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600; artifacts get the usual umask'd 0644
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_dir(target: str | Path, build: Callable[[Path], T], *, if_exists: str = "error",
               tmp_name: str | None = None, resume: bool = False) -> T | None:
    """Run ``build(tmp)`` in a fresh sibling folder, then rename it to ``target``; return what it returned.

    The one routine for every folder artifact (a converted model, a built start model, a stage of
    a recipe): a crash or an exception leaves ``target`` as it was and removes the temp folder.
    ``if_exists`` says what happens when ``target`` exists once the build is done: ``error``
    (:class:`FileExistsError`, nothing is overwritten), ``replace`` (the old folder is swapped out
    only after the new one is complete) or ``keep`` (a concurrent builder finished first: ours is
    discarded and None returned). ``tmp_name``: a fixed temp name (removed first if an interrupted
    attempt left it), so paths recorded inside the artifact are predictable; default a unique one.
    ``resume`` (with ``tmp_name``): a build that resumes its own work (a recipe of stages) keeps
    the temp folder on failure and finds it again on the next call.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> atomic_dir(root / "out", lambda d: (d / "x.txt").write_text("hi"))
    2
    >>> sorted(p.name for p in root.iterdir())
    ['out']
    """
    if if_exists not in IF_EXISTS:
        raise ValueError(f"if_exists must be one of {', '.join(IF_EXISTS)}; got {if_exists!r}")
    if resume and tmp_name is None:
        raise ValueError("resume needs a fixed tmp_name to find the unfinished build again")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if tmp_name is not None:
        tmp = target.parent / tmp_name
        if tmp.exists() and not resume:
            shutil.rmtree(tmp)
        tmp.mkdir(exist_ok=resume)
    else:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    old: Path | None = None
    done = False
    try:
        result = build(tmp)
        if target.exists():
            if if_exists == "error":
                raise FileExistsError(f"{target} already exists; nothing was overwritten")
            if if_exists == "keep":
                return None
            old = target.parent / f".old-{target.name}-{os.getpid()}"
            os.rename(target, old)
        os.rename(tmp, target)
        done = True
        return result
    finally:
        if tmp.exists() and (done or not resume):
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists():
            shutil.rmtree(old, ignore_errors=True)


def claim_output_folder(folder: str | Path, finished: tuple[str, ...], *, force: bool = False,
                        what: str = "result", flag: str = "--force") -> Path:
    """Before any work: refuse ``folder`` when it already holds a finished ``what`` (any of the
    ``finished`` file names) unless ``force``, and check it can be written -- by a real write into
    it, or into the nearest folder above it that exists when it does not exist yet (it is not
    created here, so a command that stops on a later check leaves nothing behind)."""
    folder = Path(folder)
    done = [name for name in finished if (folder / name).exists()]
    if done and not force:
        raise FileExistsError(f"{folder} already holds a finished {what} ({', '.join(done)}); nothing was changed. "
                              f"Choose another folder, or pass {flag} to replace it")
    here = folder
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise FileExistsError(f"{folder}: cannot create the output folder ({here} is a file, not a folder)")
    try:  # a real write, not os.access: root passes that check on a read-only folder, and so does a read-only mount
        fd, probe = tempfile.mkstemp(dir=here, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        verb = "is not writable" if here == folder else f"cannot be created ({here} is not writable)"
        raise PermissionError(f"{folder}: the output folder {verb} ({e.strerror})") from None
    return folder


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        try:
            return obj.item()
        except (ValueError, RuntimeError):
            pass
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically. Non-finite floats become ``null``."""
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any:
    """A JSON file's content; a missing, non-UTF-8 or malformed file is an error naming the file (and line)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno}); a damaged or "
                            "hand-edited file?") from None


def save_tensors(path: str | Path, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> None:
    """Save tensors to safetensors atomically, after checking they are all finite."""
    import torch
    from safetensors.torch import save

    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"refusing to save non-finite tensor {name!r} to {path}")
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=dict(metadata or {}))
    atomic_write_bytes(path, data)


class ArtifactError(ValueError):
    """A file safeanchor wrote (or should have) is missing, truncated, corrupt or holds non-finite values."""


def load_tensors(path: str | Path, *, check_finite: bool = True) -> dict[str, Any]:
    """Load a safetensors file; a missing, truncated or corrupt file, or a non-finite float tensor,
    is an :class:`ArtifactError` naming the file (and the tensor)."""
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error type, naming no file
        raise ArtifactError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None
    if check_finite:
        for name, t in tensors.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ArtifactError(f"{path}: tensor {name!r} holds non-finite values (NaN or inf)")
    return tensors


def provenance(**extra: Any) -> dict[str, Any]:
    """Library and framework versions, for every artifact's JSON sidecar."""
    import platform

    import torch
    import transformers

    from . import __version__

    info: dict[str, Any] = {
        "safeanchor_version": __version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python_version": platform.python_version(),
    }
    try:
        import peft

        info["peft_version"] = peft.__version__
    except ImportError:  # pragma: no cover - peft is a hard dependency
        pass
    info.update(extra)
    return info
