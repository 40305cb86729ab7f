"""The package's layers only point down, and no module or package imports itself in a circle.

Layers, bottom to top (a module may import from its own layer or any layer below):

    io, families, configfile, distributed  <-  data, hooks, models  <-  direction, evaluate  <-  methods  <-  train
                  <-  report  <-  pipelines  <-  cli

Every ``import`` counts, at module level or inside a function (a lazy import is still a
dependency). The test parses the source with :mod:`ast`; nothing is imported.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = "safeanchor"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

LAYERS: list[tuple[str, ...]] = [
    ("__init__", "io", "families", "configfile", "distributed"),
    ("data", "hooks", "models"),
    ("direction", "evaluate"),
    ("methods",),
    ("train",),
    ("report",),
    ("pipelines",),
    ("cli", "__main__"),  # python -m safeanchor: the command itself
]
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def module_name(path: Path, root: Path = SRC) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, root: Path = SRC) -> list[tuple[str, int]]:
    """``(imported safeanchor module, line)`` for every import in ``path`` (relative ones resolved)."""
    name = module_name(path, root)
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == root.name]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != root.name:
                continue
            # "from . import x" / "from .pkg import mod": the names may be submodules
            out.append((target, node.lineno))
            for a in node.names:
                cand = f"{target}.{a.name}"
                if (root.parent / Path(*cand.split("."))).with_suffix(".py").is_file() or \
                        (root.parent / Path(*cand.split(".")) / "__init__.py").is_file():
                    out.append((cand, node.lineno))
    return out


def part_of(module: str) -> str:
    """The layer unit of a module: its first component below the package (``__init__`` for the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def graph(root: Path = SRC) -> dict[str, list[tuple[str, int]]]:
    return {module_name(p, root): imports_of(p, root) for p in sorted(root.rglob("*.py"))}


def upward_imports(root: Path = SRC) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        src = module_name(path, root)
        for target, line in imports_of(path, root):
            a, b = part_of(src), part_of(target)
            as_path = root.parent / Path(*target.split("."))
            if not (as_path.with_suffix(".py").is_file() or (as_path / "__init__.py").is_file()):
                bad.append(f"{path.relative_to(root.parent)}:{line}: {src} imports {target}, which does not exist")
            elif a not in RANK or b not in RANK:
                bad.append(f"{path.relative_to(root.parent)}:{line}: {src} -> {target} (module not in any layer)")
            elif RANK[b] > RANK[a]:
                bad.append(f"{path.relative_to(root.parent)}:{line}: {src} (layer {RANK[a]}) imports {target} "
                           f"(layer {RANK[b]}, above it)")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def module_edges(root: Path = SRC) -> dict[str, set[str]]:
    g = graph(root)
    edges: dict[str, set[str]] = defaultdict(set)
    for src, targets in g.items():
        for t, _ in targets:
            # importing a package runs its __init__; importing a module inside it does too, but an
            # __init__ that only re-exports lazily is not a dependency of its submodules
            if t in g and t != src and not src.startswith(t + "."):
                edges[src].add(t)
    return edges


def package_edges(root: Path = SRC) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for src, targets in graph(root).items():
        for t, _ in targets:
            if part_of(t) != part_of(src):
                edges[part_of(src)].add(part_of(t))
    return edges


def test_no_module_imports_from_a_layer_above_it():
    bad = upward_imports()
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_circles_between_modules_or_packages():
    assert not cycles(module_edges()), cycles(module_edges())
    assert not cycles(package_edges()), cycles(package_edges())


def test_every_package_has_a_layer():
    parts = {part_of(module_name(p)) for p in SRC.rglob("*.py")}
    assert parts <= set(RANK), sorted(parts - set(RANK))


def test_core_never_imports_pipelines():
    for path in SRC.rglob("*.py"):
        if part_of(module_name(path)) in ("models", "methods", "train", "evaluate", "direction", "data"):
            assert not [t for t, _ in imports_of(path) if part_of(t) == "pipelines"], path


def test_one_trainer_subclass():
    subclasses = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                    (isinstance(b, ast.Name) and b.id.endswith("Trainer")) or
                    (isinstance(b, ast.Attribute) and b.attr.endswith("Trainer")) for b in node.bases):
                subclasses.append(f"{module_name(path)}.{node.name}")
    # one per Trainer family, both on the one regularizer loop (RegularizerLoop): safeanchor's own and TRL's
    assert sorted(subclasses) == ["safeanchor.train.trainer.SafeTrainer", "safeanchor.train.trl_trainer.SafeSFTTrainer"], subclasses
    import safeanchor.train.trainer as t
    import safeanchor.train.trl_trainer as trl_t

    assert issubclass(t.SafeTrainer, t.RegularizerLoop) and issubclass(trl_t.SafeSFTTrainer, t.RegularizerLoop)
    for name in ("add_penalties", "_guard", "create_scheduler", "save_safeanchor_state", "setup_regularizers"):
        assert name not in vars(t.SafeTrainer) and name not in vars(trl_t.SafeSFTTrainer), name  # written once


@pytest.mark.parametrize("bad_import, line", [
    ("from .pipelines.experiment import run_experiment", "models.py"),
    ("from ..train.run import train", "evaluate/judges.py"),
    ("from ..train import train", "data/__init__.py"),
])
def test_the_check_fails_on_an_upward_import_added_on_purpose(tmp_path, bad_import, line):
    """A copy of the package with one upward import planted is caught (and the circle it makes)."""
    import shutil

    copy = tmp_path / PACKAGE
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__", "*.jsonl", "*.json"))
    target = copy / line
    target.write_text(target.read_text(encoding="utf-8") + f"\n\ndef _planted():\n    {bad_import}\n",
                      encoding="utf-8")
    bad = upward_imports(copy)
    assert len(bad) >= 1 and any(line.split("/")[0].replace(".py", "") in b for b in bad), bad
    assert cycles(package_edges(copy)), "the planted import makes a package circle"
    assert not upward_imports(SRC)
