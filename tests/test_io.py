"""Atomic artifact writes: complete files or none, with normal permissions."""

from __future__ import annotations

import os
import stat

import pytest

from safeanchor.io import atomic_write_text, read_json, write_json


def test_atomic_write_has_umask_permissions_not_mkstemp_0600(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    p = tmp_path / "report.html"
    atomic_write_text(p, "<html></html>")
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask
    assert [f.name for f in tmp_path.iterdir()] == ["report.html"]  # no temp file left behind


def test_failed_write_keeps_the_previous_file(tmp_path):
    p = tmp_path / "a.json"
    write_json(p, {"x": 1})
    with pytest.raises(TypeError):
        write_json(p, {"x": object()})  # not serialisable: fails before the rename
    assert read_json(p) == {"x": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"]
