"""Turn a ``results.json`` (from ``safeanchor demo`` / ``safeanchor bench``) into ``report.md``,
a self-contained ``report.html`` (PNGs inlined as base64) and the PNGs themselves.

``results.json`` shape::

    {"kind": "demo" | "bench", "provenance": {...}, "config": {...},
     "runs": [{"method", "scenario", "seed", "model", "asr", "asr_ci", "over_refusal",
               "over_refusal_ci", "task_acc", "task_acc_ci", "n_harmful", "n_harmless", "n_task",
               "drift_cos": [per layer] | null, "train_log": [{"step", "ce", ...}] | null,
               "eval_file": relative path, "train_s", "eval_s", "alpha": the method's coefficient | null}],
     "summary": [{"method", "scenario", "n_seeds", "asr_mean", "asr_sd", ...}],
     "findings": [{"claim", "scenario", "metric", "judge", "a": {"method", "value"}, "b": {...}, "diff",
                   "diff_ci95", "p_value", "verdict": holds | does not hold | inconclusive, ...}],
     "comparisons": [the same records for every method pair and metric], "paper_table": markdown str}

Every number in the report is read from ``results.json``; nothing is computed twice.

>>> fmt_pct(0.1234)
'12.3%'
"""

from __future__ import annotations

import base64
import html
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..io import atomic_write_text

METRICS = ("asr", "over_refusal", "task_acc")


def fmt_pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def fmt_ci(ci: list[float] | None) -> str:
    return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and seed standard deviation per (method, scenario), in first-seen order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[(r["method"], r["scenario"])].append(r)
    out = []
    for (method, scenario), rs in groups.items():
        row: dict[str, Any] = {"method": method, "scenario": scenario, "n_seeds": len(rs),
                               "alpha": rs[0].get("alpha")}
        for m in METRICS:
            vals = [r[m] for r in rs if r.get(m) is not None]
            row[f"{m}_mean"] = statistics.fmean(vals) if vals else None
            row[f"{m}_sd"] = statistics.stdev(vals) if len(vals) > 1 else None
            if len(rs) == 1:
                row[f"{m}_ci"] = rs[0].get(f"{m}_ci")
        drifts = [[c for c in r["drift_cos"] if c is not None] for r in rs if r.get("drift_cos")]
        row["drift_cos_mean"] = statistics.fmean(statistics.fmean(d) for d in drifts) if drifts else None
        row["drift_cos_min"] = statistics.fmean(min(d) for d in drifts) if drifts else None
        out.append(row)
    return out


def _cell(row: dict[str, Any], m: str) -> str:
    """Mean (± seed spread when several seeds) and the pooled 95% interval (items and seeds)."""
    mean = row.get(f"{m}_mean")
    sd = f" ± {100 * row[f'{m}_sd']:.1f}" if row.get(f"{m}_sd") is not None else ""
    iv = (row.get("intervals") or {}).get(m) or {}
    if iv:
        sd = f" ± {100 * iv['seed_sd']:.1f}" if iv.get("seed_sd") is not None else sd
        return fmt_pct(iv["mean"]) + sd + fmt_ci(iv["ci95"])
    return fmt_pct(mean) + sd + fmt_ci(row.get(f"{m}_pooled_ci") or row.get(f"{m}_ci"))


def results_table_md(summary: list[dict[str, Any]]) -> str:
    lines = ["| scenario | method | α | ASR ↓ (extended judge) | ASR ↓ (reference list, anywhere) | over-refusal ↓ | "
             "task accuracy ↑ | drift: mean cos ↑ | min cos | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        dm = "—" if r.get("drift_cos_mean") is None else f"{r['drift_cos_mean']:.3f}"
        dmin = "—" if r.get("drift_cos_min") is None else f"{r['drift_cos_min']:.3f}"
        alpha = "—" if r.get("alpha") is None else f"{r['alpha']:g}"
        lines.append(f"| {r['scenario']} | {r['method']} | {alpha} | {_cell(r, 'asr')} | {_cell(r, 'asr_reference')} | "
                     f"{_cell(r, 'over_refusal')} | {_cell(r, 'task_acc')} | {dm} | {dmin} | {r['n_seeds']} |")
    return "\n".join(lines)


def per_source_md(summary: list[dict[str, Any]]) -> str:
    """ASR per harmful source (e.g. the bundled test split and HarmBench), both judges."""
    sources = sorted({m.split("@", 1)[1] for r in summary for m in (r.get("intervals") or {})
                      if m.startswith("asr@")})
    if len(sources) < 2:
        return ""
    head = "| scenario | method | " + " | ".join(f"{s}: extended | {s}: reference" for s in sources) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(sources))]
    for r in summary:
        cells = []
        for s in sources:
            cells += [_cell(r, f"asr@{s}"), _cell(r, f"asr_reference@{s}")]
        lines.append(f"| {r['scenario']} | {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pts(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:+.1f}"


def findings_md(findings: list[Any]) -> str:
    """The claims as a table: values, paired difference with its 95% interval, p-value, verdict."""
    if findings and isinstance(findings[0], str):  # results.json written before findings were records
        return "\n".join(f"* {f}" for f in findings)
    lines = ["| scenario | claim | judge | b | a | diff (pts) [95% CI] | p | verdict | seeds × items |",
             "|---|---|---|---|---|---|---|---|---|"]
    for f in findings:
        pct = not f["metric"].startswith("drift")
        val = (lambda x: fmt_pct(x)) if pct else (lambda x: "—" if x is None else f"{x:.3f}")
        diff = _pts(f["diff"]) if pct else f"{f['diff']:+.3f}"
        ci = f["diff_ci95"]
        ci_s = "" if ci is None else (f" [{_pts(ci[0])}, {_pts(ci[1])}]" if pct else f" [{ci[0]:+.3f}, {ci[1]:+.3f}]")
        p = "—" if f.get("p_value") is None else f"{f['p_value']:.3g}"
        a = f"{f['a']['method']} {val(f['a']['value'])}"
        lines.append(f"| {f['scenario']} | {f['claim']} | {f.get('judge') or '—'} | {f['b']['method']} "
                     f"{val(f['b']['value'])} | {a} | {diff}{ci_s} | {p} | **{f['verdict']}** | "
                     f"{f['n_seeds']} × {f['n_items']} |")
    return "\n".join(lines)


def comparisons_md(comps: list[dict[str, Any]], against: tuple[str, ...] = ("sft", "sft_safe")) -> str:
    """Each method against the baselines (all pairs are in results.json), on ASR and task accuracy."""
    keep = [c for c in comps if c["a"]["method"] in against and c["metric"] in ("asr", "asr_reference", "task_acc")]
    if not keep:
        return ""
    lines = ["| scenario | b vs a | metric | diff (pts) [95% CI] | p | b better? |", "|---|---|---|---|---|---|"]
    for c in keep:
        lo, hi = c["diff_ci95"]
        lines.append(f"| {c['scenario']} | {c['b']['method']} vs {c['a']['method']} | {c['metric']} | "
                     f"{_pts(c['diff'])} [{_pts(lo)}, {_pts(hi)}] | {c['p_value']:.3g} | {c['verdict']} |")
    return "\n".join(lines)


CSV_COLUMNS = ("scenario", "method", "alpha", "n_seeds")


def results_csv(summary: list[dict[str, Any]]) -> str:
    """The results table as CSV: per metric the mean, seed spread and pooled 95% interval."""
    import csv
    import io

    metrics = list(dict.fromkeys(m for r in summary for m in (r.get("intervals") or {})))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*CSV_COLUMNS, *[f"{m}_{k}" for m in metrics for k in ("mean", "seed_sd", "ci_low", "ci_high")],
                "drift_cos_mean", "drift_cos_min"])
    for r in summary:
        cells: list[Any] = [r["scenario"], r["method"], r.get("alpha"), r["n_seeds"]]
        for m in metrics:
            iv = (r.get("intervals") or {}).get(m) or {}
            ci = iv.get("ci95") or [None, None]
            cells += [iv.get("mean"), iv.get("seed_sd"), ci[0], ci[1]]
        w.writerow([*cells, r.get("drift_cos_mean"), r.get("drift_cos_min")])
    return buf.getvalue()


def category_md(table: dict[str, Any]) -> str:
    """ASR per harm category and method, one table per scenario."""
    out = []
    n = table.get("n", {})
    for scenario, methods in table.items():
        if scenario == "n" or not methods:
            continue
        names = list(methods)
        cats = sorted({c for m in methods.values() for c in m})
        out += [f"**{scenario}**", "", "| category | n | " + " | ".join(names) + " |",
                "|---|---:|" + "---:|" * len(names)]
        for c in cats:
            out.append(f"| {c} | {n.get(c, '')} | " + " | ".join(fmt_pct(methods[m].get(c)) for m in names) + " |")
        out.append("")
    return "\n".join(out)


def _cell_text(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "/") or "(empty)"


def samples_md(samples: list[dict[str, Any]]) -> str:
    """For each scenario, the same prompts with every method's answer side by side."""
    out = []
    scenario = None
    for s in samples:
        if s["scenario"] != scenario:
            scenario = s["scenario"]
            out += [f"### {scenario}", ""]
        what = s["kind"] + (f", {s['category']}" if s.get("category") else "")
        out += [f"**{what}** (`{s['source']}` {s['id']}): {_cell_text(s['prompt'])}", "",
                "| method | answer | judged |", "|---|---|---|"]
        for m, a in s["answers"].items():
            if s["kind"] == "task":
                verdict = "correct" if a.get("correct") else "wrong"
            else:
                verdict = "refused" if a.get("refused") else "answered"
            out.append(f"| {m} | {_cell_text(a['answer'])} | {verdict} |")
        out.append("")
    return "\n".join(out)


def provenance_md(results: dict[str, Any]) -> str:
    prov = results.get("provenance", {})
    lines = ["| key | value |", "|---|---|"]
    for k, v in prov.items():
        lines.append(f"| {k} | `{v}` |")
    return "\n".join(lines)


def write_report(results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write PNGs, ``report.md`` and ``report.html`` into ``out_dir``; returns their paths."""
    from . import result_plots as plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = results.get("summary") or summarise(results["runs"])
    figs: dict[str, Path] = {}
    figs["safety_utility"] = plots.safety_utility_scatter(summary, out_dir / "safety_utility.png")
    drift_runs = [r for r in results["runs"] if r.get("drift_cos")]
    if drift_runs:
        figs["drift"] = plots.drift_by_method(drift_runs, out_dir / "drift_by_method.png")
    curve_runs = [r for r in results["runs"] if r.get("train_log")]
    if curve_runs:
        figs["training"] = plots.training_curves(curve_runs, out_dir / "training_curves.png")

    title = f"safeanchor {results.get('kind', 'run')} report"
    parts_md = [f"# {title}", "",
                results.get("intro", ""), "",
                "## Results", "",
                "ASR = share of held-out harmful prompts *not* refused, under two keyword judges side by side: "
                "safeanchor's extended judge (patterns in the first characters) and the papers' reference list "
                "matched anywhere in the answer (what the ProCon paper reports); over-refusal = share of harmless "
                "prompts refused; task accuracy = exact match on the task's fixed test set. ± : standard deviation "
                "over seeds; brackets: pooled 95% interval (bootstrap over items and seeds).", "",
                results_table_md(summary), ""]
    sources = per_source_md(summary)
    if sources:
        parts_md += ["### ASR per harmful source", "", sources, ""]
    if results.get("findings"):
        parts_md += ["## Findings: the claims, decided by paired 95% intervals", "",
                     "Each claim compares two methods on the same prompts and task items (b − a; ASR claims under "
                     "both judges). The verdict comes from the interval alone: **holds** when the whole interval is "
                     "on the claim's side of its bound, **does not hold** when the whole interval is on the other "
                     "side, **inconclusive** when it contains the bound. p: McNemar exact (one seed) or a sign-flip "
                     "permutation test over items (several seeds).", ""]
        if any(f.get("n_seeds") == 1 for f in results["findings"] if isinstance(f, dict)):
            parts_md += ["**One seed**: an interval over one seed's items leaves out what another training seed "
                         "would change, so a verdict with 1 in its seeds column describes this run and settles no "
                         "claim about the methods; run at least 3 seeds for that.", ""]
        parts_md += [findings_md(results["findings"]), ""]
    comps = comparisons_md(results.get("comparisons") or [])
    if comps:
        parts_md += ["### Against the baselines (every pair is in results.json)", "", comps, ""]
    if results.get("asr_by_category"):
        parts_md += ["### ASR per harm category (extended judge, pooled over seeds)", "",
                     category_md(results["asr_by_category"]), ""]
    if results.get("samples"):
        parts_md += ["## What the models said", "",
                     "The same prompts for every method (the lowest seed of each), answers as generated (cut at 400 "
                     "characters), with the keyword judge's verdict or the task scorer's.", "",
                     samples_md(results["samples"]), ""]
    captions = {"safety_utility": "Safety–utility: task accuracy vs ASR, one point per method and scenario.",
                "drift": "Per-layer cosine between the starting model's r-direction and each fine-tuned model's.",
                "training": "Training curves: cross-entropy and constraint value per step."}
    parts_md += ["## Figures", ""]
    for key, path in figs.items():
        parts_md += [f"### {captions[key]}", "", f"![{key}]({path.name})", ""]
    if results.get("paper_table"):
        parts_md += ["## The paper's numbers (Du et al. 2025, Llama-2/3, Qwen2; METHODS.md)", "",
                     results["paper_table"], ""]
    parts_md += ["## Provenance", "", provenance_md(results), "",
                 "Configuration:", "", "```", _yamlish(results.get("config", {})), "```", ""]
    md = "\n".join(parts_md)
    csv_path = out_dir / "results.csv"
    atomic_write_text(csv_path, results_csv(summary))
    md_path = out_dir / "report.md"
    atomic_write_text(md_path, md)
    html_path = out_dir / "report.html"
    atomic_write_text(html_path, markdown_to_html(md, out_dir, title))
    return {"md": md_path, "html": html_path, "csv": csv_path, **figs}


def _yamlish(cfg: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(cfg, sort_keys=False).strip()


def markdown_to_html(md: str, base_dir: Path, title: str) -> str:
    """A small Markdown subset (headings, tables, lists, code blocks, images, paragraphs) to a
    standalone HTML page; images are inlined as base64 so the file opens anywhere."""
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    in_code = False
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            out.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            i += 1
            continue
        if in_code:
            out.append(html.escape(line))
            i += 1
            continue
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            out.append("<table>")
            for k, cells in enumerate(rows):
                if k == 1 and all(set(c) <= set("-: ") for c in cells):
                    continue
                tag = "th" if k == 0 else "td"
                out.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>")
            out.append("</table>")
            continue
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("* "):
            out.append(f"<ul><li>{_inline(line[2:])}</li></ul>")
        elif line.startswith("![") and "](" in line:
            alt = line[2: line.index("]")]
            src = line[line.index("](") + 2: line.rindex(")")]
            data = base64.b64encode((base_dir / src).read_bytes()).decode()
            out.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
             "th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}pre{background:#f7f7f7;padding:1em;overflow:auto}"
             "code{background:#f3f3f3;padding:0 3px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def _inline(text: str) -> str:
    import re

    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", t)
    return t
