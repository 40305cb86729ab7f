"""The experiment commands: ``safeanchor demo`` and ``safeanchor bench`` (see :mod:`safeanchor.pipelines.experiment`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

JOBS_HELP = ("runs at once, each in its own process: on a CPU each gets its share of the threads "
             "(2 on 2 cores: ~1.1-1.2x faster), with as many GPUs one GPU each")


def demo(
    out: Path = typer.Option(Path("runs/demo"), help="output folder (a rerun resumes finished stages)"),
    quick: bool = typer.Option(False, help="a tiny smoke run (minutes)"),
    jobs: int = typer.Option(1, min=1, help=JOBS_HELP),
) -> None:
    """Aligned start -> r-direction -> SFT, SFT + safety data, ProCon_wu_safe on a bundled task -> eval -> drift -> report."""
    from ..pipelines.experiment import ExperimentConfig, run_experiment

    cfg = ExperimentConfig.preset("quick" if quick else "demo")
    run_experiment(cfg, out, kind="demo", jobs=jobs)


def bench(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="bench.yaml (keys of ExperimentConfig)"),
    out: Path = typer.Option(Path("runs/bench"), help="output folder (a rerun resumes finished stages)"),
    quick: bool = typer.Option(False, help="the quick preset (smoke run)"),
    report_only: bool = typer.Option(False, help="write results.json and the report from the runs finished so far "
                                                 "(an interrupted or running bench), without running anything"),
    jobs: int = typer.Option(1, min=1, help=JOBS_HELP),
) -> None:
    """The full matrix: start, SFT, SFT+safety, Safe LoRA, AsFT, ProCon_s/_wu(_safe) × benign/attack × seeds."""
    from ..pipelines.experiment import ExperimentConfig, report_finished, run_experiment

    base = ExperimentConfig.preset("quick" if quick else "bench")  # a mistake: one line, exit 2 (the command guard)
    cfg = ExperimentConfig.from_yaml(config, base=base) if config else base
    if report_only:
        report_finished(cfg, out, kind="bench")
        typer.echo(f"wrote {out / 'results.json'} and {out / 'report'}")
        return
    run_experiment(cfg, out, kind="bench", jobs=jobs)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
    app.command("bench")(bench)
