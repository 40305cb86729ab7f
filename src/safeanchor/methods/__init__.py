"""Training methods: plain SFT, safety data, and regularizers the trainer adds to the loss.

``REGULARIZERS`` maps a name to a factory ``factory(config) -> Regularizer`` (``config`` is the
:class:`~safeanchor.train.SafeTrainingConfig`; a factory reads its options from
``config.regularizer_options[name]``). Adding a method is one line here.

A run's ``method`` is ``sft``, ``safety_data`` (SFT + safety samples), a regularizer name
(``procon``), or a regularizer name with ``_safe`` (``procon_safe``: regularizer + safety data).

>>> resolve_method("procon_safe")
MethodPlan(regularizers=('procon',), safety_data=True)
>>> resolve_method("sft")
MethodPlan(regularizers=(), safety_data=False)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .base import Regularizer, RegularizerSetupError
from .asft import from_config as _asft
from .procon import from_config as _procon

REGULARIZERS: dict[str, Callable[[Any], Regularizer]] = {
    "procon": _procon,
    "asft": _asft,
}

SAFE_SUFFIX = "_safe"


@dataclass(frozen=True)
class MethodPlan:
    """What a method name means for a run."""

    regularizers: tuple[str, ...]
    safety_data: bool


def method_names() -> list[str]:
    """Every accepted ``method`` value."""
    names = ["sft", "safety_data"]
    for reg in REGULARIZERS:
        names += [reg, reg + SAFE_SUFFIX]
    return names


def resolve_method(method: str) -> MethodPlan:
    """Split a method name into its regularizers and whether safety data is mixed in."""
    if method == "sft":
        return MethodPlan((), False)
    if method in ("safety_data", "sft" + SAFE_SUFFIX):
        return MethodPlan((), True)
    if method in REGULARIZERS:
        return MethodPlan((method,), False)
    if method.endswith(SAFE_SUFFIX) and method[: -len(SAFE_SUFFIX)] in REGULARIZERS:
        return MethodPlan((method[: -len(SAFE_SUFFIX)],), True)
    raise ValueError(f"method must be one of {', '.join(method_names())}; got {method!r}")


__all__ = ["REGULARIZERS", "MethodPlan", "Regularizer", "RegularizerSetupError", "method_names", "resolve_method"]
