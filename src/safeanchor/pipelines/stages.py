"""The stage runner every recipe uses: numbered stages that run once, atomically, and resume.

A stage is a function ``fn(folder) -> summary`` that writes its artifacts into ``folder``. The
runner gives it a temp folder (``.<name>.partial`` beside the final one), writes the summary with
its wall and CPU seconds to ``stage.json`` and renames the folder into place
(:func:`safeanchor.io.atomic_dir`). A rerun skips every stage that has a ``stage.json``; an
interrupted stage is started again from scratch.

>>> # stages = Stages(Path("runs/x"))
>>> # stages.run("01_data", lambda d: {"n": write_data(d)})
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from ..io import atomic_dir, read_json, write_json

console = Console()
STAGE_FILE = "stage.json"


class Stages:
    """Runs named stages once under ``out``; ``timings`` holds the wall seconds of the ones run now."""

    def __init__(self, out: Path, *, quiet: bool = False):
        self.out = Path(out)
        self.timings: dict[str, float] = {}
        self.quiet = quiet

    def done(self, name: str) -> bool:
        return (self.out / name / STAGE_FILE).is_file()

    def summary(self, name: str) -> dict[str, Any]:
        return read_json(self.out / name / STAGE_FILE)

    def run(self, name: str, fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        final = self.out / name
        if self.done(name):
            if not self.quiet:
                console.print(f"[dim]✓ {name} (done earlier, skipped)[/dim]")
            return self.summary(name)
        if not self.quiet:
            console.rule(f"[bold]{name}")

        def build(tmp: Path) -> dict[str, Any]:
            t0, c0 = time.perf_counter(), time.process_time()
            summary = fn(tmp)
            # CPU seconds beside wall seconds: on a shared machine wall time mostly measures the others
            summary = {**summary, "seconds": round(time.perf_counter() - t0, 1),
                       "cpu_seconds": round(time.process_time() - c0, 1)}
            write_json(tmp / STAGE_FILE, summary)
            return summary

        # an existing folder without stage.json is an unfinished earlier attempt: replaced
        summary = atomic_dir(final, build, if_exists="replace", tmp_name=f".{final.name}.partial")
        self.timings[name] = summary["seconds"]
        if not self.quiet:
            console.print(f"[green]✓ {name}[/green] in {summary['seconds']:.0f}s")
        return summary


__all__ = ["STAGE_FILE", "Stages"]
