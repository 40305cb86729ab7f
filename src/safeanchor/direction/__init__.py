"""The refusal direction (Arditi et al. 2024; ProCon's r^(l)): extraction, selection, steering, drift.

1. :mod:`.extract`  -- difference in means of block inputs, every layer (``safeanchor direction``)
2. :mod:`.select`   -- optional Arditi selection of one (layer, position) (``--select``)
3. :mod:`.steering` -- ablate / add the direction and count refusals (``safeanchor direction steer``)
4. :mod:`.drift`    -- cosine of a checkpoint's direction to the reference (``safeanchor drift``),
   and :mod:`.callback` -- the same, logged during training.

The artifact is :class:`RefusalDirection` (:mod:`.artifact`). Names are imported lazily so
``safeanchor --help`` does not pay for torch.

>>> from safeanchor.direction import RefusalDirection, extract_direction  # doctest: +SKIP
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "RefusalDirection": "artifact",
    "IncompatibleDirectionError": "artifact",
    "ExtractConfig": "extract",
    "extract_direction": "extract",
    "layer_auroc": "extract",
    "auroc": "extract",
    "SelectConfig": "select",
    "select_direction": "select",
    "steering_check": "steering",
    "compute_drift": "drift",
    "drift_report": "drift",
    "read_drift": "drift",
    "write_drift": "drift",
    "DriftCallback": "callback",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
