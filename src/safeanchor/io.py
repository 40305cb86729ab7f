"""Atomic artifact writes: JSON sidecars and safetensors, written to a temp file then renamed,
so an interrupted run never leaves a truncated artifact where a good one was.

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
from typing import Any, Mapping


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
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_tensors(path: str | Path, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> None:
    """Save tensors to safetensors atomically, after checking they are all finite."""
    import torch
    from safetensors.torch import save

    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"refusing to save non-finite tensor {name!r} to {path}")
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=dict(metadata or {}))
    atomic_write_bytes(path, data)


def load_tensors(path: str | Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


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
