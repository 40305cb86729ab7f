"""Validate the keyword judges on answers labelled blind (labels written without the judges' verdicts).

Two steps, so that the labeller never sees a verdict:

1. ``export``: draw answers to harmful prompts from several models' ``eval.json`` files (start,
   fine-tuned ones), shuffle them with a fixed seed, and write ``prompt`` + ``answer`` only (no
   verdict, no model name) to a JSONL file for labelling, plus a key file mapping each item to
   its model and source.
2. ``score``: read the labels (``{"id", "label": "complied" | "refused"}``; ``complied`` = the
   answer attempts the harmful request, ``refused`` = it declines, deflects or gives nothing
   usable) and report accuracy, precision and recall of ASR's positive class (complied) for the
   extended judge and the reference judge, with every disagreement listed by kind.

    python benchmarks/judge_validation.py export --eval runs/core/05_eval/*/eval.json \\
        --n 160 --out benchmarks/judge_labels/core_answers.jsonl
    python benchmarks/judge_validation.py score --answers benchmarks/judge_labels/core_answers.jsonl \\
        --labels benchmarks/judge_labels/core_labels.jsonl

3. ``pyrit``: the same figures on a public human-labelled set that ships in a PyPI wheel:
   Microsoft PyRIT's refusal-scorer evaluation data (MIT; ``human_score`` 1 = refusal). The wheel is
   read, never installed:

    pip download --no-deps pyrit==1.1.0 -d /tmp/pyrit && python benchmarks/judge_validation.py \\
        pyrit --wheel /tmp/pyrit/pyrit-1.1.0-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{i}: not JSON ({e.msg})")
    return rows


def export(evals: list[Path], n: int, out: Path, seed: int) -> None:
    pool = []
    for path in evals:
        ev = json.loads(path.read_text(encoding="utf-8"))
        model = path.parent.name
        for r in ev["records"]:
            if r["kind"] == "harmful":
                pool.append({"model": model, "source": r["source"], "item": r["id"], "prompt": r["prompt"],
                             "answer": r["answer"]})
    rng = random.Random(seed)
    rng.shuffle(pool)
    # at most one answer per (prompt, identical answer text): duplicates teach the labeller nothing
    seen, picked = set(), []
    for row in pool:
        key = (row["prompt"], row["answer"].strip())
        if key in seen:
            continue
        seen.add(key)
        picked.append(row)
        if len(picked) == n:
            break
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for i, row in enumerate(picked):
            f.write(json.dumps({"id": f"a{i:03d}", "prompt": row["prompt"], "answer": row["answer"]}) + "\n")
    key = out.with_name(out.stem + "_key.jsonl")
    with key.open("w", encoding="utf-8") as f:
        for i, row in enumerate(picked):
            f.write(json.dumps({"id": f"a{i:03d}", "model": row["model"], "source": row["source"],
                                "item": row["item"]}) + "\n")
    print(f"wrote {len(picked)} answers to {out} (no verdicts) and their origins to {key}")


def score(answers: Path, labels: Path) -> dict:
    from safeanchor.evaluate.judges import KeywordJudge

    items = {r["id"]: r for r in _read_jsonl(answers)}
    gold = {}
    for r in _read_jsonl(labels):
        if r.get("label") not in ("complied", "refused"):
            raise SystemExit(f"{labels}: item {r.get('id')}: label must be complied or refused; got {r.get('label')!r}")
        if r["id"] not in items:
            raise SystemExit(f"{labels}: item {r['id']} is not in {answers}")
        gold[r["id"]] = r["label"] == "complied"
    judges = {"extended": KeywordJudge(), "reference": KeywordJudge(mode="anywhere", phrase_set="reference")}
    report: dict = {"n": len(gold), "complied": sum(gold.values())}
    for name, judge in judges.items():
        tp = fp = fn = tn = 0
        misses, false_alarms = [], []
        for i, complied in gold.items():
            said = not judge.is_refusal(items[i]["answer"])
            if said and complied:
                tp += 1
            elif said and not complied:
                fp += 1
                false_alarms.append(i)
            elif complied:
                fn += 1
                misses.append(i)
            else:
                tn += 1
        report[name] = {"accuracy": (tp + tn) / len(gold), "precision": tp / (tp + fp) if tp + fp else None,
                        "recall": tp / (tp + fn) if tp + fn else None, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
                        "missed_compliance": misses, "refusal_counted_as_compliance": false_alarms}
    return report


PYRIT_FILES = ("pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv",
               "pyrit/datasets/scorer_evals/refusal_scorer/refusal_extra.csv")


def _pyrit_rows(wheel: Path) -> list[dict]:
    """PyRIT's labelled rows: leading ``#`` lines are metadata (answers may hold ``#`` lines too)."""
    import csv
    import io
    import zipfile

    rows = []
    with zipfile.ZipFile(wheel) as z:
        for name in PYRIT_FILES:
            lines = z.read(name).decode("utf-8").splitlines(keepends=True)
            k = 0
            while k < len(lines) and lines[k].startswith("#"):
                k += 1
            for r in csv.DictReader(io.StringIO("".join(lines[k:]))):
                rows.append({"file": name.rsplit("/", 1)[1], "prompt": r["objective"], "answer": r["assistant_response"],
                             "refusal": r["human_score"].strip() == "1"})
    return rows


def score_pyrit(wheel: Path) -> dict:
    """Both keyword judges against PyRIT's human refusal labels: accuracy, and precision/recall of
    ASR's positive class (not refused), per file and in all."""
    from safeanchor.evaluate.judges import KeywordJudge

    rows = _pyrit_rows(wheel)
    judges = {"extended": KeywordJudge(), "reference": KeywordJudge(mode="anywhere", phrase_set="reference")}
    report: dict = {"source": f"{wheel.name}: {', '.join(PYRIT_FILES)}", "n": len(rows),
                    "refusals": sum(r["refusal"] for r in rows)}
    for name, judge in judges.items():
        for subset in ("all", *sorted({r["file"] for r in rows})):
            part = [r for r in rows if subset == "all" or r["file"] == subset]
            tp = sum((not judge.is_refusal(r["answer"])) and not r["refusal"] for r in part)
            fp = sum((not judge.is_refusal(r["answer"])) and r["refusal"] for r in part)
            fn = sum(judge.is_refusal(r["answer"]) and not r["refusal"] for r in part)
            tn = len(part) - tp - fp - fn
            report.setdefault(name, {})[subset] = {
                "n": len(part), "accuracy": (tp + tn) / len(part), "precision": tp / (tp + fp) if tp + fp else None,
                "recall": tp / (tp + fn) if tp + fn else None, "tp": tp, "fp": fp, "fn": fn, "tn": tn}
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--eval", nargs="+", type=Path, required=True)
    e.add_argument("--n", type=int, default=160)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("score")
    s.add_argument("--answers", type=Path, required=True)
    s.add_argument("--labels", type=Path, required=True)
    s.add_argument("--json", type=Path, help="also write the report here")
    p = sub.add_parser("pyrit")
    p.add_argument("--wheel", type=Path, required=True)
    p.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.cmd == "export":
        export(args.eval, args.n, args.out, args.seed)
    elif args.cmd == "pyrit":
        rep = score_pyrit(args.wheel)
        if args.json:
            args.json.write_text(json.dumps(rep, indent=1) + "\n", encoding="utf-8")
        for name in ("extended", "reference"):
            for subset, r in rep[name].items():
                print(f"{name:9s} {subset:18s} n {r['n']:3d} accuracy {100 * r['accuracy']:.1f}%  precision "
                      f"{r['precision']}  recall {r['recall']}  (tp {r['tp']} fp {r['fp']} fn {r['fn']} tn {r['tn']})")
    else:
        rep = score(args.answers, args.labels)
        text = json.dumps(rep, indent=1)
        if args.json:
            args.json.write_text(text + "\n", encoding="utf-8")
        for name in ("extended", "reference"):
            r = rep[name]
            print(f"{name:9s} accuracy {100 * r['accuracy']:.1f}%  precision {r['precision']}  recall {r['recall']}  "
                  f"(tp {r['tp']} fp {r['fp']} fn {r['fn']} tn {r['tn']}; n {rep['n']}, complied {rep['complied']})")


if __name__ == "__main__":
    main()
