"""The direction commands: ``safeanchor direction`` (extract [+ select]), ``direction auroc``, ``direction steer``, ``drift``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from rich.console import Console
from rich.table import Table

console = Console()

direction_app = typer.Typer(
    help="Extract the refusal direction of a model (difference in means, every layer) and check it.",
    invoke_without_command=True,
    no_args_is_help=False,
)


def parse_layers(text: str | None) -> list[int] | None:
    """``"4-8,12"`` -> ``[4, 5, 6, 7, 8, 12]``; empty/None -> None (all).

    >>> parse_layers("4-6,10")
    [4, 5, 6, 10]
    """
    if not text:
        return None
    out: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
        except ValueError:
            raise typer.BadParameter(f"expected layers like 4-8,12; got {text!r}") from None
    return sorted(set(out))


def parse_positions(text: str) -> list[int] | None:
    """``"last"`` -> ``[-1]``, ``"-5,-1"`` -> ``[-5, -1]``, ``"auto"``/``"all"`` -> None (the
    caller resolves them: auto = all on a GPU and last on CPU, all = every extracted position).

    >>> parse_positions("-5,-1")
    [-5, -1]
    """
    if text == "last":
        return [-1]
    if text in ("all", "auto"):
        return None
    try:
        return [int(p) for p in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"expected last, all, auto or offsets like -5,-1; got {text!r}") from None


def _load(model_name: str, precision: str):
    from ..models import load_model

    with console.status(f"loading {model_name}"):
        return load_model(model_name, precision=precision)


# ---------------------------------------------------------------------------------------------
# safeanchor direction
# ---------------------------------------------------------------------------------------------


@direction_app.callback()
def direction(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model: hub id, folder, .gguf or embedded:<name>"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="artifact folder (direction.safetensors + direction.json)"),
    harmful: str = typer.Option("bundled:harmful:train", help="harmful prompts"),
    harmless: str = typer.Option("bundled:harmless:train", help="harmless prompts"),
    limit: int = typer.Option(128, min=1, help="prompts per set (seeded sample; reference: 128)"),
    seed: int = typer.Option(0, help="seed of the prompt sample"),
    positions: str = typer.Option("last", help="'last' (ProCon) or 'post-instruction' (every template token, Arditi)"),
    batch_size: int = typer.Option(32, min=1, help="prompts per forward pass"),
    max_length: int = typer.Option(512, min=1, help="prompt tokens kept (left-truncated)"),
    precision: str = typer.Option("auto", help="auto, fp32, bf16 or fp16"),
    auroc: bool = typer.Option(True, "--auroc/--no-auroc", help="per-layer AUROC on held-out prompts (last token)"),
    auroc_harmful: str = typer.Option("bundled:harmful:test", help="held-out harmful prompts for the AUROC"),
    auroc_harmless: str = typer.Option("bundled:harmless:test", help="held-out harmless prompts for the AUROC"),
    auroc_limit: Optional[int] = typer.Option(None, min=1, help="held-out prompts per set (default all)"),
    select: bool = typer.Option(False, "--select", help="Arditi et al. selection of one (layer, position)"),
    select_layers: Optional[str] = typer.Option(None, help="layers to scan, e.g. 6-20 (default every layer < 0.8·L)"),
    select_positions: str = typer.Option("auto", help="positions to scan: auto (all on GPU, last on CPU), last, all, or -5,-1"),
    select_limit: int = typer.Option(32, min=1, help="validation prompts per set for selection"),
    select_all_prompts: bool = typer.Option(False, help="selection: keep harmful prompts the model does not refuse "
                                                        "and harmless ones it does (the reference leaves them out)"),
    force: bool = typer.Option(False, "--force", help="replace a direction already in --out"),
) -> None:
    """Extract the refusal direction: mean(harmful) - mean(harmless) block inputs, every layer.

    Writes OUT/direction.safetensors + direction.json (+ auroc.png, selection.png).
    Subcommands: auroc, steer.
    """
    if ctx.invoked_subcommand is not None:
        return
    if model is None or out is None:
        console.print("[red]error:[/red] --model and --out are required (or use a subcommand: auroc, steer)")
        raise typer.Exit(2)
    from ..direction.artifact import INFO_FILE, TENSORS_FILE
    from ..distributed import is_main, join_launch
    from ..io import claim_output_folder

    join_launch()  # under torchrun: the ranks share the prompts (sums all-reduced); the main one writes
    if is_main():
        claim_output_folder(out, (TENSORS_FILE, INFO_FILE), force=force, what="refusal direction")
    from ..data import load_source
    from ..report.plots import plot_layer_auroc, plot_selection_scores
    from ..direction.extract import ExtractConfig, extract_direction, layer_auroc
    from ..direction.select import SelectConfig, select_direction

    cfg = ExtractConfig(harmful=harmful, harmless=harmless, limit=limit, seed=seed, positions=positions,
                        batch_size=batch_size, max_length=max_length)
    sel_cfg = SelectConfig(limit=select_limit, layers=parse_layers(select_layers),
                           positions=parse_positions(select_positions), batch_size=batch_size,
                           filter_prompts=not select_all_prompts) if select else None
    from ..direction.extract import load_prompts

    for source in (harmful, harmless):  # the data before the model: an unknown or empty source costs seconds
        load_prompts(source, limit=limit, seed=seed)
    if auroc:
        h, b = load_source(auroc_harmful, limit=auroc_limit), load_source(auroc_harmless, limit=auroc_limit)
    m, tok = _load(model, precision)
    if sel_cfg is not None and sel_cfg.layers:
        n_layers = m.config.num_hidden_layers
        if not all(0 <= l < n_layers for l in sel_cfg.layers):
            raise typer.BadParameter(f"{select_layers!r}: this model has layers 0-{n_layers - 1}",
                                     param_hint="--select-layers")
    timing = {}
    t0 = time.perf_counter()
    with console.status("extracting"):
        rd = extract_direction(m, tok, cfg)
    timing["extract_s"] = round(time.perf_counter() - t0, 2)
    if auroc:
        t0 = time.perf_counter()
        with console.status("held-out AUROC"):
            per_layer = layer_auroc(m, tok, rd, h, b, pos=-1, batch_size=batch_size)
        rd.info["auroc"] = _auroc_info(auroc_harmful, auroc_harmless, h, b, -1, per_layer)
        timing["auroc_s"] = round(time.perf_counter() - t0, 2)
    if sel_cfg is not None:
        if select_positions == "all":
            sel_cfg.positions = rd.positions
        t0 = time.perf_counter()
        rd = select_direction(m, tok, rd, sel_cfg, progress=True)
        timing["select_s"] = round(time.perf_counter() - t0, 2)
    rd.info["timing"] = timing
    if not is_main():
        return
    rd.save_pretrained(out)
    if auroc:
        plot_layer_auroc(rd.info["auroc"]["per_layer"], out / "auroc.png",
                         title=f"AUROC per layer: {auroc_harmful} vs {auroc_harmless}")
    if select:
        plot_selection_scores({**rd.info["selection"], "selected": rd.info["selected"]}, out / "selection.png")
    _print_direction(rd)
    console.print(f"wrote [bold]{out}[/bold] ({', '.join(f'{k} {v} s' for k, v in timing.items())})")


def _auroc_info(harmful: str, harmless: str, h: list, b: list, pos: int, per_layer: list[float]) -> dict:
    best = max(range(len(per_layer)), key=lambda l: per_layer[l])
    return {"harmful": harmful, "harmless": harmless, "n_harmful": len(h), "n_harmless": len(b), "pos": pos,
            "per_layer": per_layer, "best_layer": best, "best": per_layer[best]}


def _print_direction(rd) -> None:
    pos = -1
    norms = rd.norms[rd.pos_index(pos)].tolist()
    per_layer = (rd.info.get("auroc") or {}).get("per_layer")
    cands = {c["layer"]: c for c in (rd.info.get("selection") or {}).get("candidates", []) if c["pos"] == pos}
    t = Table(title=f"refusal direction of {rd.info.get('model')} (last prompt token)")
    t.add_column("layer", justify="right")
    t.add_column("‖r‖", justify="right")
    if per_layer:
        t.add_column("AUROC held-out", justify="right")
    if cands:
        for name in ("bypass", "induce", "KL", "kept"):
            t.add_column(name, justify="right")
    for l in rd.layers:
        row = [str(l), f"{norms[l]:.3f}"]
        if per_layer:
            row.append(f"{per_layer[l]:.3f}")
        if cands:
            c = cands.get(l)
            if c and c["bypass"] is not None:
                row += [f"{c['bypass']:.3f}", f"{c['induce']:.3f}", f"{c['kl']:.4f}", "yes" if c["passed"] else "no"]
            else:
                row += ["", "", "", ""]
        t.add_row(*row)
    console.print(t)
    if per_layer:
        a = rd.info["auroc"]
        console.print(f"best held-out AUROC {a['best']:.3f} at layer {a['best_layer']} "
                      f"({a['n_harmful']} + {a['n_harmless']} prompts)")
    if rd.selected is not None:
        sel = rd.info["selection"]
        note = "" if sel["passed_filters"] else (f" [yellow](no candidate passed every filter; dropped: "
                                                 f"{sel['dropped_filters']})[/yellow]")
        console.print(f"selected layer {rd.selected[0]}, position {rd.selected[1]}{note}")


# ---------------------------------------------------------------------------------------------
# safeanchor direction auroc / steer
# ---------------------------------------------------------------------------------------------


@direction_app.command("auroc")
def auroc_command(
    direction_dir: Path = typer.Option(..., "--direction", "-d", help="artifact folder from `safeanchor direction`"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model (default: the one the direction came from)"),
    harmful: str = typer.Option("bundled:harmful:test", help="held-out harmful prompts"),
    harmless: str = typer.Option("bundled:harmless:test", help="held-out harmless prompts"),
    limit: Optional[int] = typer.Option(None, min=1, help="prompts per set (default all)"),
    pos: int = typer.Option(-1, help="position (offset from the prompt end)"),
    batch_size: int = typer.Option(32, min=1, help="prompts per forward pass"),
    precision: str = typer.Option("auto", help="auto, fp32, bf16 or fp16"),
    derivative: bool = typer.Option(False, "--derivative", help="the model is a fine-tuned copy of the direction's model"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write auroc.json + auroc.png here"),
    force: bool = typer.Option(False, "--force", help="replace an auroc.json already in --out"),
) -> None:
    """Per-layer AUROC of the projection onto r̂ separating held-out harmful from harmless prompts."""
    from ..data import load_source
    from ..io import claim_output_folder, provenance, write_json

    if out is not None:  # before any work: a finished result, or a folder that cannot be written
        claim_output_folder(out, ("auroc.json",), force=force, what="AUROC check")
    from ..report.plots import plot_layer_auroc
    from ..direction.artifact import RefusalDirection
    from ..direction.extract import layer_auroc

    rd = RefusalDirection.from_pretrained(direction_dir)
    h, b = load_source(harmful, limit=limit), load_source(harmless, limit=limit)  # data before the model
    m, tok = _load(model or rd.info["model"], precision)
    rd.check_compatible(m, derivative=derivative)
    with console.status("projecting held-out prompts"):
        per_layer = layer_auroc(m, tok, rd, h, b, pos=pos, batch_size=batch_size)
    info = _auroc_info(harmful, harmless, h, b, pos, per_layer)
    t = Table(title=f"AUROC per layer ({len(h)} harmful vs {len(b)} harmless, position {pos})")
    t.add_column("layer", justify="right")
    t.add_column("AUROC", justify="right")
    for l, a in enumerate(per_layer):
        t.add_row(str(l), f"{a:.3f}")
    console.print(t)
    console.print(f"best AUROC {info['best']:.3f} at layer {info['best_layer']}")
    if out is not None:
        write_json(out / "auroc.json", {"direction": str(direction_dir), "model": model or rd.info["model"],
                                        **info, "provenance": provenance()})
        plot_layer_auroc(per_layer, out / "auroc.png", title=f"AUROC per layer: {harmful} vs {harmless}")
        console.print(f"wrote [bold]{out}[/bold]")


@direction_app.command("steer")
def steer_command(
    direction_dir: Path = typer.Option(..., "--direction", "-d", help="artifact folder from `safeanchor direction`"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for steering.json"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model (default: the one the direction came from)"),
    harmful: str = typer.Option("bundled:harmful:test", help="held-out harmful prompts (ablation)"),
    harmless: str = typer.Option("bundled:harmless:test", help="held-out harmless prompts (addition)"),
    limit: int = typer.Option(32, min=1, help="prompts per set"),
    layer: Optional[int] = typer.Option(None, help="layer to add the direction at (default: selected, else best)"),
    pos: int = typer.Option(-1, help="position whose direction is used"),
    coef: str = typer.Option("harmful-proj", help="addition coefficient: a number, harmful-proj (r̂ᵀ mean harmful) or diff (‖r‖)"),
    max_new_tokens: int = typer.Option(64, min=1, help="tokens generated per answer (greedy)"),
    batch_size: int = typer.Option(32, min=1, help="prompts per generation batch"),
    precision: str = typer.Option("auto", help="auto, fp32, bf16 or fp16"),
    derivative: bool = typer.Option(False, "--derivative", help="the model is a fine-tuned copy of the direction's model"),
    force: bool = typer.Option(False, "--force", help="replace a steering.json already in --out"),
) -> None:
    """Refusal rates with the direction ablated (harmful prompts) and added (harmless prompts)."""
    from ..data import load_source
    from ..io import claim_output_folder, provenance, write_json
    from ..direction.artifact import RefusalDirection
    from ..direction.steering import steering_check

    claim_output_folder(out, ("steering.json",), force=force, what="steering check")  # before the generation

    try:
        coef_value: float | str = float(coef)
    except ValueError:
        coef_value = coef
    rd = RefusalDirection.from_pretrained(direction_dir)
    load_source(harmful, limit=limit), load_source(harmless, limit=limit)  # an unknown or empty source: before the model
    m, tok = _load(model or rd.info["model"], precision)
    t0 = time.perf_counter()
    report = steering_check(m, tok, rd, harmful_source=harmful, harmless_source=harmless, limit=limit,
                            layer=layer, pos=pos, coef=coef_value, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, derivative=derivative)
    report.update(direction=str(direction_dir), model=model or rd.info["model"], harmful=harmful,
                  harmless=harmless, runtime_s=round(time.perf_counter() - t0, 1), provenance=provenance())
    write_json(out / "steering.json", report)
    r = report["rates"]
    t = Table(title=f"refusal rate (keyword judge), layer {report['layer']}, coef {report['coef']:.2f}")
    for col in ("condition", f"harmful (n={report['n_harmful']})", f"harmless (n={report['n_harmless']})"):
        t.add_column(col, justify="right")
    fmt = lambda d, k: f"{100 * d[k]:.1f}%" if k in d else "—"  # noqa: E731
    for cond, label in (("baseline", "baseline"), ("ablated", "r̂ ablated"), ("added", "r added")):
        t.add_row(label, fmt(r[cond], "harmful"), fmt(r[cond], "harmless"))
    console.print(t)
    console.print(f"wrote [bold]{out / 'steering.json'}[/bold]")


# ---------------------------------------------------------------------------------------------
# safeanchor drift
# ---------------------------------------------------------------------------------------------


def drift_command(
    reference: Path = typer.Option(..., "--reference", "-r", help="reference artifact folder (`safeanchor direction`)"),
    checkpoint: List[str] = typer.Option(..., "--checkpoint", "-c", help="model folder or LoRA adapter folder; repeatable"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for the drift reports (OUT/<label>/drift.json) and the plots"),
    base: Optional[str] = typer.Option(None, help="base model of LoRA adapter checkpoints (default: the reference's model)"),
    pos: int = typer.Option(-1, help="position reported (offset from the prompt end)"),
    batch_size: Optional[int] = typer.Option(None, min=1, help="prompts per forward pass (default: as at extraction)"),
    precision: str = typer.Option("auto", help="auto, fp32, bf16 or fp16"),
    allow_direction_mismatch: bool = typer.Option(False, "--allow-direction-mismatch",
                                                  help="accept checkpoints whose base is not the reference's model"),
    force: bool = typer.Option(False, "--force", help="replace drift reports already in --out"),
) -> None:
    """Per-layer cosine between the reference direction and each checkpoint's, same prompts.

    Writes one drift report per checkpoint, OUT/<label>/drift.json (label: the checkpoint's folder
    name; the schema of ``safeanchor.direction.drift.drift_report``, as an experiment's
    06_drift/<run>/drift.json, with every position in cos_by_position), and
    OUT/drift_heatmap.png (layers x checkpoints) and OUT/drift_lines.png.
    """
    import warnings

    from ..report.plots import plot_drift
    from ..direction.artifact import RefusalDirection
    from ..direction.drift import (check_checkpoint_base, drift_report, is_adapter_dir, load_checkpoint,
                                   write_drift)
    from ..io import claim_output_folder
    from ..models import resolve_model_path

    ref = RefusalDirection.from_pretrained(reference)
    ref.pos_index(pos)  # an unknown position fails before any checkpoint is loaded
    base_model = base or ref.info.get("model")
    labels: list[str] = []
    for ckpt in checkpoint:  # every checkpoint exists before the first is loaded
        if not is_adapter_dir(ckpt):
            resolve_model_path(ckpt)
        elif not base_model:
            raise ValueError(f"{ckpt} is a LoRA adapter folder; pass the base model (--base)")
        labels.append(_label(ckpt, labels))
    done = [f"{label}/drift.json" for label in labels] + ["drift_heatmap.png"]
    claim_output_folder(out, tuple(done), force=force, what="drift report")  # before any work
    reports = []
    for ckpt, label in zip(checkpoint, labels):
        adapter = is_adapter_dir(ckpt)
        with console.status(f"loading {ckpt}"):
            m, tok = load_checkpoint(ckpt, base=base_model, precision=precision)
        base_check = check_checkpoint_base(ref, m, ckpt, allow_mismatch=allow_direction_mismatch)
        if base_check == "unverified":
            console.print(f"[yellow]{ckpt}: whether it was trained from the reference's model "
                          f"({ref.info.get('model')}) cannot be checked here (a full model from elsewhere, or the "
                          "direction or checkpoint recorded its base in another precision)[/yellow]")
        with console.status(f"re-extracting on {ckpt}"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the checkpoint's own fingerprint differs by design; its base is checked above
            report = drift_report(ref, m, tok, reference_path=reference, pos=pos, batch_size=batch_size,
                                  model_name=base_model if adapter else ckpt, adapter=ckpt if adapter else None,
                                  by_position=True)
        report.update(label=label, checkpoint=ckpt)  # the experiment's 06_drift schema (the base check is printed)
        reports.append(report)
        del m
    paths = [write_drift(out / r["label"], r) for r in reports]  # all at the end: an interrupted run leaves none
    heat, lines = plot_drift([r["label"] for r in reports], [r["cos"] for r in reports], out / "drift")
    t = Table(title=f"cos(r_ref, r_ckpt) per layer, position {pos}")
    t.add_column("layer", justify="right")
    for r in reports:
        t.add_column(r["label"], justify="right")
    for l in ref.layers:
        t.add_row(str(l), *["—" if r["cos"][l] is None else f"{r['cos'][l]:.4f}" for r in reports])
    fmt = lambda v, spec: "—" if v is None else format(v, spec)  # noqa: E731
    t.add_row("mean", *[fmt(r["cos_mean"], ".4f") for r in reports])
    t.add_row("min", *[fmt(r["cos_min"], ".4f") + ("" if r["cos_argmin"] is None else f" (layer {r['cos_argmin']})")
                       for r in reports])
    if any(r["undefined_layers"] for r in reports):
        t.caption = ("—: no direction at this layer (the reference means coincide, e.g. block 0's input at a "
                     "template token is that token's embedding for every prompt); excluded from mean/min")
    console.print(t)
    console.print(f"wrote [bold]{', '.join(str(p) for p in paths)}[/bold], {heat.name}, {lines.name}")


def _label(ckpt: str, taken: list[str]) -> str:
    """The checkpoint's folder name (also the name of its report folder), made unique with #2, #3, ..."""
    name = Path(ckpt).name
    if name in ("", ".", ".."):  # "." or "../": name the folder it points at
        name = Path(ckpt).resolve().name or "checkpoint"
    label, i = name, 2
    while label in taken:
        label, i = f"{name}#{i}", i + 1
    return label


def register(app: typer.Typer) -> None:
    app.add_typer(direction_app, name="direction")
    app.command("drift")(drift_command)
