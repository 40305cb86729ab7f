"""The one record shape safeanchor reads and writes, and the file readers that produce it.

A record is either a prompt (``{"prompt": ...}``) or a prompt -> response pair
(``{"prompt": ..., "response": ...}``), or the chat form ``{"messages": [{"role", "content"}...]}``
whose final assistant message is the response. Optional fields: ``system`` (a system prompt),
``id``, and anything else, which is kept in ``meta``.

Files: ``.jsonl``, ``.json`` (a list of objects, or an object with a ``data`` list), ``.csv``,
``.parquet``, or a folder written by ``datasets.Dataset.save_to_disk``. Other column names are
mapped with ``columns={"prompt": "instruction", "response": "output"}``.

>>> r = Record.from_dict({"prompt": "Hi", "response": "Hello!"}, where="x.jsonl:1")
>>> r.messages()
[{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'}]
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

KNOWN_FIELDS = ("id", "prompt", "response", "messages", "system")


class DataError(ValueError):
    """Bad input data. The message starts with ``file:line`` and names the field."""


@dataclass
class Record:
    """One prompt, or one prompt -> response pair."""

    prompt: str
    response: str | None = None
    system: str | None = None
    id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(
        cls,
        row: Mapping[str, Any],
        *,
        where: str,
        columns: Mapping[str, str] | None = None,
        require_response: bool = False,
    ) -> "Record":
        """Validate one raw row. ``where`` (``file:line``) prefixes every error."""
        if not isinstance(row, Mapping):
            raise DataError(f"{where}: expected an object, got {type(row).__name__}")
        columns = dict(columns or {})
        unknown = set(columns) - set(KNOWN_FIELDS)
        if unknown:
            raise DataError(f"column mapping names unknown record fields {sorted(unknown)}; "
                            f"record fields are {list(KNOWN_FIELDS)}")

        def get(name: str) -> Any:
            return row.get(columns.get(name, name))

        def text(name: str, value: Any, *, required: bool) -> str | None:
            col = columns.get(name, name)
            if value is None or (isinstance(value, float) and value != value):  # None / NaN
                if required:
                    raise DataError(f"{where}: field '{col}' is missing")
                return None
            if not isinstance(value, str):
                raise DataError(f"{where}: field '{col}' must be a string, got {type(value).__name__}")
            if required and not value.strip():
                raise DataError(f"{where}: field '{col}' is empty")
            return value

        meta = {k: v for k, v in row.items() if k not in {columns.get(f, f) for f in KNOWN_FIELDS}}
        system = text("system", get("system"), required=False)
        rid = get("id")
        rid = None if rid is None else str(rid)
        messages = get("messages")
        if messages is not None:
            prompt, response, msys = _split_messages(messages, where, columns.get("messages", "messages"))
            if require_response and response is None:
                raise DataError(f"{where}: field 'messages' has no final assistant message (response)")
            return cls(prompt, response, system or msys, rid, meta)
        prompt = text("prompt", get("prompt"), required=True)
        response = text("response", get("response"), required=require_response)
        if response is not None and not response.strip():
            raise DataError(f"{where}: field '{columns.get('response', 'response')}' is empty")
        return cls(prompt, response, system, rid, meta)

    def messages(self, *, with_response: bool = True) -> list[dict[str, str]]:
        """Chat messages for ``tokenizer.apply_chat_template``."""
        msgs = []
        if self.system:
            msgs.append({"role": "system", "content": self.system})
        msgs.append({"role": "user", "content": self.prompt})
        if with_response and self.response is not None:
            msgs.append({"role": "assistant", "content": self.response})
        return msgs

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.id is not None:
            d["id"] = self.id
        if self.system is not None:
            d["system"] = self.system
        d["prompt"] = self.prompt
        if self.response is not None:
            d["response"] = self.response
        d.update(self.meta)
        return d


def _split_messages(messages: Any, where: str, col: str) -> tuple[str, str | None, str | None]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field '{col}' must be a non-empty list of {{role, content}}")
    system = None
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: field '{col}[{i}]' must be an object with string 'role' and 'content'")
        if m["role"] == "system" and i == 0:
            system = m["content"]
        else:
            turns.append(m)
    if not turns or turns[0]["role"] != "user":
        raise DataError(f"{where}: field '{col}' must start (after an optional system message) with a user turn")
    if len(turns) > 2 or (len(turns) == 2 and turns[1]["role"] != "assistant"):
        raise DataError(f"{where}: field '{col}': only single-turn chats (user, then assistant) are supported")
    if not turns[0]["content"].strip():
        raise DataError(f"{where}: field '{col}[0].content' (prompt) is empty")
    response = turns[1]["content"] if len(turns) == 2 else None
    if response is not None and not response.strip():
        raise DataError(f"{where}: field '{col}[-1].content' (response) is empty")
    return turns[0]["content"], response, system


# ---------------------------------------------------------------------------------------------
# File readers: each yields (where, row) so errors can name the file and line.
# ---------------------------------------------------------------------------------------------


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                        "save the file as UTF-8") from None


def _read_text(path: Path) -> str:
    """The whole file as UTF-8 text; a bad byte is a DataError naming the file and its line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = raw.count(b"\n", 0, e.start) + 1
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at column "
                        f"{e.start - line_start + 1}); save the file as UTF-8") from None


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode(raw, path, lineno)
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None


def _iter_json(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, Mapping) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}:1: expected a JSON list of records (or an object with a 'data' list)")
    for i, row in enumerate(data):
        yield f"{path}:record {i + 1}", row


def _iter_csv(path: Path) -> Iterator[tuple[str, Any]]:
    import io as _io

    with _io.StringIO(_read_text(path), newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"{path}:1: malformed CSV header ({e})") from None
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path}:{reader.line_num}: expected {len(header)} columns ({', '.join(header)}), got {len(row)}"
                )
            yield f"{path}:{reader.line_num}", {k: (v if v != "" else None) for k, v in zip(header, row)}


def _iter_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: unreadable Parquet file ({e})") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path}:row {i + 1}", row


def _iter_hf_dir(path: Path) -> Iterator[tuple[str, Any]]:
    from datasets import Dataset, DatasetDict, load_from_disk

    if not any((path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
        raise DataError(f"{path}: a folder that is not a saved Hugging Face dataset (save_to_disk); a file: source "
                        "names a .jsonl, .json, .csv or .parquet file, or such a dataset folder")
    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:  # datasets' own message names no remedy
        raise DataError(f"{path}: not a readable saved Hugging Face dataset ({e})") from None
    if isinstance(ds, DatasetDict):
        raise DataError(f"{path}: a DatasetDict; name a split, e.g. file:{path}/train")
    assert isinstance(ds, Dataset)
    for i, row in enumerate(ds):
        yield f"{path}:row {i + 1}", row


READERS = {".jsonl": _iter_jsonl, ".json": _iter_json, ".csv": _iter_csv, ".parquet": _iter_parquet}


def iter_rows(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, raw_row)`` from a data file or a saved HF dataset folder."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        return _iter_hf_dir(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(READERS)} or a dataset folder")
    return reader(path)


def read_records(
    path: str | Path,
    *,
    columns: Mapping[str, str] | None = None,
    require_response: bool = False,
) -> list[Record]:
    """Read and validate every record of a file.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "d.jsonl")
    >>> _ = open(p, "w").write('{"prompt": "2+2?", "response": "4"}\\n')
    >>> [r.response for r in read_records(p, require_response=True)]
    ['4']
    """
    return records_from_rows(iter_rows(path), columns=columns, require_response=require_response)


def records_from_rows(
    rows: Iterable[tuple[str, Any]],
    *,
    columns: Mapping[str, str] | None = None,
    require_response: bool = False,
) -> list[Record]:
    return [Record.from_dict(row, where=where, columns=columns, require_response=require_response) for where, row in rows]


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write rows as JSONL atomically (temp file + rename)."""
    from ..io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows))
