"""``safeanchor train``: fine-tune from a YAML config, with ``--set key=value`` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rich.console import Console
from rich.table import Table

console = Console()


def train_command(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run config (keys of SafeTrainingConfig)"),
    set_: List[str] = typer.Option([], "--set", "-s", help="override a key: --set alpha=0.2 --set "
                                   "regularizer_options.procon.anchor=online (values are YAML)"),
    show_config: bool = typer.Option(False, "--show-config", help="print the resolved config and exit"),
) -> None:
    """Fine-tune a chat model with a method of the table (sft, sft_safe, procon, procon_wu_safe, asft, ...;
    `safeanchor methods` lists them).

    Writes the adapter (or full model) with save_pretrained to output_dir, plus train_config.yaml
    (resolved), train_log.json (per-step CE, raw penalties, coefficients) and train_report.json.
    """
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import yaml

    from ..distributed import is_main
    from ..train.config import load_config
    from ..train.run import train

    cfg = load_config(config, set_)  # a user mistake: one line, exit 2 (the command guard, cli/__init__.py)
    if show_config:
        console.print(yaml.safe_dump(cfg.to_yaml_dict(), sort_keys=False))
        return
    from ..train.run import RunFinished

    try:
        result = train(cfg)
    except RunFinished as e:  # the same run again, or a resume of a finished one: nothing to do, nothing changed
        console.print(f"[yellow]nothing to do:[/yellow] {e}")
        return
    if not is_main():  # one process prints the summary, as one wrote the artifacts
        return
    steps = result.steps
    world = f" on {cfg.world_size} processes" if cfg.world_size > 1 else " on 1 process"  # what ran, whatever was asked
    t = Table(title=f"{cfg.method}: {len(steps)} steps in {result.runtime_s:.1f} s{world}", show_header=True)
    t.add_column("value")
    t.add_column("first step", justify="right")
    t.add_column("last step", justify="right")
    if steps:
        for key in [k for k in steps[-1] if k not in ("step", "epoch", "learning_rate")]:
            t.add_row(key, f"{steps[0].get(key, float('nan')):.4g}", f"{steps[-1][key]:.4g}")
    console.print(t)
    console.print(f"wrote [bold]{result.output_dir}[/bold] (train_config.yaml, train_log.json, train_report.json)")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
