"""safeanchor: safety-preserving fine-tuning of chat LLMs (ProCon, AsFT, Safe LoRA) and its evaluation.

The public Python API, imported lazily (``import safeanchor`` stays cheap for the CLI):

>>> import safeanchor                                                          # doctest: +SKIP
>>> model, tok = safeanchor.load_model("embedded:smollm2-135m-safe")           # doctest: +SKIP
>>> rd = safeanchor.extract_direction(model, tok)                              # doctest: +SKIP
>>> result = safeanchor.train.train(safeanchor.SafeTrainingConfig(method="procon_wu_safe", output_dir="runs/x"))  # doctest: +SKIP
"""

import importlib
import importlib.util

__version__ = "0.1.0"

# name -> module holding it; the package root re-exports the user-facing names of the layers below
_EXPORTS = {
    "load_model": "models",
    "extract_direction": "direction.extract", "ExtractConfig": "direction.extract",
    "RefusalDirection": "direction.artifact", "drift_report": "direction.drift",
    "evaluate_model": "evaluate.suite", "EvalConfig": "evaluate.suite",
    "SafeTrainingConfig": "train.config", "SafeTrainer": "train.trainer",  # train(): safeanchor.train.train
    "SafeSFTConfig": "train.trl_trainer", "SafeSFTTrainer": "train.trl_trainer",
}


def lazy_exports(package: str, exports: dict[str, str]):
    """The ``__getattr__`` of a package that re-exports ``exports`` (name -> submodule, relative to
    ``package``) and imports each submodule only when one of its names is first used; a subpackage
    or submodule is imported on first use too (``safeanchor.train.train`` after ``import safeanchor``)."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(f".{exports[name]}", package), name)
        if not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
            return importlib.import_module(f".{name}", package)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
