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
import functools
from pathlib import Path
from typing import Any, Iterable, Mapping


class ConfigError(ValueError):
    """A bad configuration: unknown key, bad value, malformed file. The message names file, line and key.

    ``key`` (when known): the config key the error is about; ``detail``: the message without the
    ``file:line`` prefix (what a caller that knows the key's real origin rewords)."""

    def __init__(self, message: str, *, key: str | None = None, detail: str | None = None):
        super().__init__(message)
        self.key = key
        self.detail = message if detail is None else detail


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
    _refuse_duplicate_keys(node, path)
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for key, _ in node.value:
            lines[str(key.value)] = key.start_mark.line + 1
    return data, lines


def _refuse_duplicate_keys(node: Any, path: Path) -> None:
    """YAML loaders keep the last of two equal keys without a word; a config must not (the first
    value would be silently ignored). Checked in every mapping of the file, nested ones too."""
    import yaml

    seen_nodes: set[int] = set()

    def walk(n: Any, prefix: str) -> None:
        if id(n) in seen_nodes:  # an alias repeats a node; a recursive one would loop
            return
        seen_nodes.add(id(n))
        if isinstance(n, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key, value in n.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may repeat
                        continue
                    ident = (key.tag, key.value)
                    line = key.start_mark.line + 1
                    if ident in first:
                        raise ConfigError(f"{path}:{line}: duplicate key {prefix + str(key.value)!r} (first at line "
                                          f"{first[ident]}); a YAML mapping keeps only the last value, so remove one",
                                          key=prefix + str(key.value))
                    first[ident] = line
                    walk(value, f"{prefix}{key.value}.")
                else:
                    walk(value, prefix)
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                walk(item, f"{prefix}{i}." if prefix else f"{i}.")

    walk(node, "")


def located(where: str, key: str, lines: Mapping[str, int] | None) -> str:
    """``file:line`` of ``key`` when its line is known, else ``where``."""
    line = (lines or {}).get(key)
    return f"{where}:{line}" if line else where


def error_key(message: str) -> str:
    """The key a value error is about: its first word (messages start with the key)."""
    import re

    key = re.match(r"[A-Za-z_][A-Za-z0-9_]*", message)
    return key.group(0) if key else ""


def located_error(message: str, where: str, lines: Mapping[str, int] | None) -> str:
    """Prefix a value error with ``file:line`` of the key it names first (messages start with the key)."""
    return f"{located(where, error_key(message), lines)}: {message}"


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



@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """A dataclass's field annotations, resolved (string annotations of ``from __future__ import
    annotations`` modules evaluated); a field whose annotation cannot be resolved maps to ``Any``."""
    import dataclasses
    import sys
    import typing

    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # one annotation names something only imported for type checkers: resolve one by one
        hints = {}
        for klass in reversed(cls.__mro__):
            namespace = vars(sys.modules.get(klass.__module__, typing))
            for name, ann in vars(klass).get("__annotations__", {}).items():
                if isinstance(ann, str):
                    try:
                        ann = eval(ann, dict(namespace))  # noqa: S307 - the class's own annotation text
                    except Exception:
                        ann = Any
                hints[name] = ann
    return {f.name: hints.get(f.name, f.type if not isinstance(f.type, str) else Any)
            for f in dataclasses.fields(cls)}


def matches_type(value: Any, annotation: Any) -> bool:
    """Whether ``value`` (as read from YAML: None, bool, int, float, str, list, dict) fits ``annotation``:
    ``int`` (a bool is not one), ``float`` (an int is one), ``str``, ``bool``, ``X | None``, ``Literal[...]``,
    ``list[X]``, ``tuple[X, ...]``, ``dict[K, V]``, an ``Enum`` (a member or its value) or another class
    (an instance). ``Any`` and annotations this check does not know accept everything.

    >>> matches_type(True, int), matches_type(3, float), matches_type(["a"], list[str] | None)
    (False, True, True)
    """
    import enum
    import types
    import typing

    if annotation is Any or annotation is object or isinstance(annotation, (str, typing.TypeVar)):
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        return any(matches_type(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (list, tuple, set, frozenset) or origin in (typing.Sequence, typing.List):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches_type(v, a) for v, a in zip(value, args))
        return not args or all(matches_type(v, args[0]) for v in value)
    if origin in (dict, typing.Mapping) or annotation is typing.Mapping:
        if not isinstance(value, dict):
            return False
        return len(args) != 2 or all(matches_type(k, args[0]) and matches_type(v, args[1]) for k, v in value.items())
    if origin is not None:  # Callable[...], Annotated[...] and friends: not checked here
        return True
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation in (list, tuple):
        return isinstance(value, (list, tuple))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return isinstance(value, annotation) or any(value == m.value for m in annotation)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def describe_type(annotation: Any) -> str:
    """What :func:`matches_type` accepts, in words: ``int | None`` -> ``an integer or null``."""
    import enum
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is None or annotation is type(None):
        return "null"
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        parts = [describe_type(a) for a in args if a is not type(None)]
        return " or ".join(dict.fromkeys(parts)) + (" or null" if type(None) in args else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, set, frozenset) or origin in (typing.Sequence, typing.List):
        return f"a list of {_plural(describe_type(args[0]))}" if args and args[0] is not Any else "a list"
    if origin in (dict, typing.Mapping):
        if len(args) == 2 and args[1] is not Any:
            return f"a mapping of {_plural(describe_type(args[0]))} to {_plural(describe_type(args[1]))}"
        return "a mapping"
    named = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
             tuple: "a list", dict: "a mapping"}
    if annotation in named:
        return named[annotation]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in annotation)
    return getattr(annotation, "__name__", str(annotation))


def _plural(words: str) -> str:
    for one, many in (("an integer", "integers"), ("a number", "numbers"), ("a string", "strings"),
                      ("true or false", "booleans"), ("a list", "lists"), ("a mapping", "mappings")):
        words = words.replace(one, many)
    return words


def check_annotated(obj: Any, *, prefix: str = "", types: Mapping[str, Any] | None = None,
                    skip: Iterable[str] = (), only: Iterable[str] | None = None) -> None:
    """:class:`ConfigError` for the first dataclass field of ``obj`` whose value does not fit its
    declared type (:func:`matches_type`; ``types`` overrides a field's annotation; ``skip`` / ``only``
    leave fields out / check just those). The message
    starts with the field name, says what is allowed and what was given.

    >>> import dataclasses
    >>> @dataclasses.dataclass
    ... class C:
    ...     seed: int = 0
    >>> check_annotated(C(seed="abc"))
    Traceback (most recent call last):
    ...
    safeanchor.configfile.ConfigError: seed must be an integer; got 'abc' (str)
    """
    import dataclasses

    hints = {**field_types(type(obj)), **dict(types or {})}
    skip = set(skip)
    only = None if only is None else set(only)
    for f in dataclasses.fields(obj):
        if not f.init or f.name in skip or (only is not None and f.name not in only):
            continue
        value = getattr(obj, f.name)
        annotation = hints.get(f.name, Any)
        if not matches_type(value, annotation):
            raise ConfigError(f"{prefix}{f.name} must be {describe_type(annotation)}; got {value!r} "
                              f"({type(value).__name__})", key=f.name)


__all__ = ["ConfigError", "check_annotated", "check_keys", "describe_type", "error_key", "field_types",
           "located", "located_error", "matches_type", "read_mapping"]
