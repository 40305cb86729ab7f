"""The recipe and transform commands: ``safeanchor align`` (build a safety-aligned start model) and
``safeanchor safe-lora`` (post-hoc Safe LoRA projection of a saved adapter)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rich.console import Console
from rich.table import Table

console = Console()


def align(
    base: str = typer.Option("embedded:smollm2-135m-instruct", help="instruct model that does not refuse yet"),
    out: Optional[Path] = typer.Option(None, help="output folder; default for the embedded base: the cache entry "
                                                  "of embedded:smollm2-135m-safe"),
    epochs: Optional[float] = typer.Option(None, help="training epochs (default: AlignConfig)"),
    lr: Optional[float] = typer.Option(None, help="learning rate (default: AlignConfig)"),
    n_harmful: Optional[int] = typer.Option(None, help="harmful -> refusal examples (default: all train)"),
    n_harmless: Optional[int] = typer.Option(None, help="harmless -> own-answer examples (default: all train)"),
    extra_harmful: Optional[str] = typer.Option(None, help="more prompts to refuse, e.g. strongreject (the default) "
                                                           "or file:x.jsonl; 'none' = only the bundled train prompts"),
    decision_weight: Optional[float] = typer.Option(None, help="weight of the refusal-decision loss (default 1; "
                                                               "0 = plain SFT, recipe align-2)"),
    lora_r: Optional[int] = typer.Option(None, help="LoRA rank (default: AlignConfig)"),
    eval_split: Optional[list[str]] = typer.Option(None, help="splits to measure at the end (repeatable; default test)"),
    eval_limit: Optional[int] = typer.Option(None, help="at most N prompts per eval set (default: all)"),
    answer_max_new_tokens: Optional[int] = typer.Option(None, help="length of the base model's harmless answers"),
    eval_max_new_tokens: Optional[int] = typer.Option(None, help="answer length judged for refusal"),
    seed: int = typer.Option(0, help="random seed"),
    force: bool = typer.Option(False, help="rebuild even if OUT already holds a model"),
) -> None:
    """Safety-align BASE with LoRA SFT (harmful -> refusal, harmless -> own answers) plus the refusal-decision
    loss, merge, save, measure."""
    from ..pipelines.safety_alignment import BUILD_SECONDS, DEFAULT_BASE, SAFE_EMBEDDED, build_safe_model

    if out is None:
        if base != DEFAULT_BASE:
            console.print("[red]error:[/red] --out is required unless --base is the embedded default")
            raise typer.Exit(2)
        from ..models import embedded_dir

        out = embedded_dir(SAFE_EMBEDDED)
    opts = {k: v for k, v in dict(epochs=epochs, learning_rate=lr, n_harmful=n_harmful, n_harmless=n_harmless,
                                  decision_weight=decision_weight, lora_r=lora_r,
                                  eval_splits=tuple(eval_split) if eval_split else None,
                                  eval_limit=eval_limit, answer_max_new_tokens=answer_max_new_tokens,
                                  eval_max_new_tokens=eval_max_new_tokens).items()
            if v is not None}
    if extra_harmful is not None:
        opts["extra_harmful_source"] = None if extra_harmful.lower() in ("", "none") else extra_harmful
    if base == DEFAULT_BASE and not (out.exists() and any(out.iterdir())):
        console.print(f"building into {out} (about {BUILD_SECONDS / 60:.0f} min on a 2-core CPU with the defaults)")
    info = build_safe_model(base, out, force=force, seed=seed, **opts)
    t = Table("split", "harmful refused", "harmless refused", title=f"aligned model -> {out}")
    for split, row in info["eval"].items():
        t.add_row(split, f"{row['harmful_refusal_rate']:.1%} of {row['n_harmful']}",
                  f"{row['harmless_refusal_rate']:.1%} of {row['n_harmless']}")
    console.print(t)
    console.print(f"build time {info['timings']['total_s']:.0f} s; details in {out / 'alignment.json'}")


def safe_lora(
    adapter: Path = typer.Option(..., exists=True, file_okay=False, help="saved PEFT LoRA adapter folder"),
    base: str = typer.Option(..., help="the model the adapter was trained on"),
    unaligned: Optional[str] = typer.Option(None, help="the unaligned checkpoint (before safety alignment); default: "
                                                       "the base_model in BASE's alignment.json"),
    out: Path = typer.Option(..., help="folder for the projected adapter + safe_lora_report.json"),
    aligned: Optional[str] = typer.Option(None, help="the aligned checkpoint; default: BASE"),
    mode: str = typer.Option("threshold", help="threshold (project sim < tau), number (project the k lowest) or "
                                               "relative (sim < tau x the module's isotropic cosine)"),
    tau: float = typer.Option(0.5, help="similarity threshold (threshold mode), or its multiple of the isotropic "
                                        "cosine (relative mode)"),
    k: int = typer.Option(10, help="modules to project (number mode)"),
    device: str = typer.Option("cpu", help="device for the computation"),
    force: bool = typer.Option(False, "--force", help="replace a Safe LoRA result already in --out"),
) -> None:
    """Safe LoRA: project the LoRA modules least aligned with W_aligned - W_unaligned (B <- C B)."""
    from ..methods.asft import unaligned_from_alignment_stage
    from ..methods.safe_lora import REPORT_FILE, apply_safe_lora, check_options, check_output, save_projected_adapter
    from ..models import check_device, load_model, resolve_model_path

    check_options(mode, tau, k)  # options, output folder and the other models before the (slow) loads
    check_output(out, force=force)
    check_device(device)
    for name in (aligned, unaligned):
        if name is not None:
            resolve_model_path(name)
    model, _ = load_model(base, device=device, precision="fp32", adapter=str(adapter))
    unaligned = unaligned or unaligned_from_alignment_stage(model)
    if unaligned is None:
        raise ValueError("--unaligned is required (BASE has no alignment.json naming its base model)")
    report = apply_safe_lora(model, aligned, unaligned, mode=mode, threshold=tau, k=k)
    save_projected_adapter(model, report, out, force=force, base_model=base, adapter=str(adapter))
    t = Table("module", "similarity", "isotropic cos", "eff. rank V", "‖V‖_F", "‖BA‖_F", "projected",
              title=f"Safe LoRA ({mode}, {'k=' + str(k) if mode == 'number' else 'tau=' + str(tau)})")
    for m in sorted(report.modules, key=lambda m: (m.similarity is None, m.similarity or 0.0)):
        sim = "n/a (ΔW = 0)" if m.similarity is None else f"{m.similarity:.4f}"
        iso = "—" if m.isotropic_cos is None else f"{m.isotropic_cos:.4f}"
        rank = "—" if m.v_effective_rank is None else f"{m.v_effective_rank:.1f}"
        t.add_row(m.module, sim, iso, rank, f"{m.v_norm or 0:.3g}", f"{m.delta_norm:.3g}",
                  "[yellow]projected[/yellow]" if m.projected else "kept")
    console.print(t)
    console.print(f"projected {report.n_projected} of {len(report.modules)} modules -> {out} ({REPORT_FILE})")


def register(app: typer.Typer) -> None:
    app.command("align")(align)
    app.command("safe-lora")(safe_lora)
