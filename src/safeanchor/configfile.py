"""The one config loader: YAML mappings checked against a dataclass's keys, with one error type.

Every config file safeanchor reads (a training run, an experiment, the alignment recipe's
options) goes through :func:`read_mapping` and :func:`check_keys`, so a bad file always fails the
same way: a :class:`ConfigError` that names the file, the line and the key, with close-match hints
for a typo and the new name for a renamed key.

>>> import tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "c.yaml")
>>> _ = open(p, "w").write("epochs: 2\\nlearnign_rate: 0.1\\n")
>>> data, lines = read_mapping(p)
>>> check_keys(data, ["epochs", "learning_rate"], where=p, lines=lines)
Traceback (most recent call last):
...
safeanchor.configfile.ConfigError: ...c.yaml:2: unknown config key 'learnign_rate'; did you mean learning_rate?
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable, Mapping


class ConfigError(ValueError):
    """A bad configuration: unknown key, bad value, malformed file. The message names file, line and key."""


def read_mapping(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """A YAML file's top-level mapping and the 1-based line of each key (empty file: ``{}``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: malformed YAML ({getattr(e, 'problem', None) or e})") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping of config keys at the top level, got {type(data).__name__}")
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for key, _ in node.value:
            lines[str(key.value)] = key.start_mark.line + 1
    return data, lines


def located(where: str, key: str, lines: Mapping[str, int] | None) -> str:
    """``file:line`` of ``key`` when its line is known, else ``where``."""
    line = (lines or {}).get(key)
    return f"{where}:{line}" if line else where


def located_error(message: str, where: str, lines: Mapping[str, int] | None) -> str:
    """Prefix a value error with ``file:line`` of the key it names first (messages start with the key)."""
    import re

    key = re.match(r"[A-Za-z_][A-Za-z0-9_]*", message)
    return f"{located(where, key.group(0) if key else '', lines)}: {message}"


def check_keys(data: Mapping[str, Any], known: Iterable[str], *, where: str, lines: Mapping[str, int] | None = None,
               renamed: Mapping[str, str] | None = None) -> None:
    """:class:`ConfigError` for the first key of ``data`` that is not in ``known``.

    ``renamed`` maps an old key to a sentence saying what replaced it.
    """
    known = list(known)
    for key in data:
        if key in known:
            continue
        loc = located(where, str(key), lines)
        if renamed and key in renamed:
            raise ConfigError(f"{loc}: config key {key!r} was renamed: {renamed[key]}")
        close = difflib.get_close_matches(str(key), known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(sorted(known))}"
        raise ConfigError(f"{loc}: unknown config key {key!r}{hint}")


_SCALARS = {"int": int, "float": (int, float), "str": str, "bool": bool, "list": (list, tuple), "dict": dict,
            "tuple": (list, tuple)}


def check_types(obj: Any, *, prefix: str = "") -> None:
    """:class:`ConfigError` for the first dataclass field of ``obj`` whose value does not match its
    annotation (``int``, ``float``, ``str``, ``bool``, ``list``, ``dict``, ``tuple[...]``, ``X | None``;
    other annotations are not checked). A bool is not an int here, and an int is a float."""
    import dataclasses

    for f in dataclasses.fields(obj):
        kinds = [k.strip().split("[")[0] for k in str(f.type).split("|")]
        value = getattr(obj, f.name)
        if value is None and "None" in kinds:
            continue
        allowed = [_SCALARS[k] for k in kinds if k in _SCALARS]
        if not allowed or len(allowed) != len([k for k in kinds if k != "None"]):
            continue  # an annotation this check does not understand: the field validates itself
        ok = any(isinstance(value, a) for a in allowed)
        if ok and isinstance(value, bool) and "bool" not in kinds:
            ok = False
        if not ok:
            want = " or ".join(k for k in kinds if k != "None") + (" or null" if "None" in kinds else "")
            raise ConfigError(f"{prefix}{f.name} must be {want}; got {value!r} ({type(value).__name__})")


__all__ = ["ConfigError", "check_keys", "check_types", "located", "located_error", "read_mapping"]
