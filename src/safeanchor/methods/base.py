"""The regularizer contract every training method implements.

A regularizer is a small object the trainer calls once per step. It returns an *unweighted*
scalar; the trainer multiplies it by the scheduled coefficient and logs raw value and
coefficient separately. Adding a method = one file in ``methods/``, one ``register_method`` row
in the method table (``methods/__init__.py``) and one row in the parametrised test table.

A silent safety term is a failure: ``setup`` must report what it attached to and raise
:class:`RegularizerSetupError` if that is nothing; the trainer also errors when a positive
coefficient meets an exactly-zero raw value for the first steps after step 0.
"""

from __future__ import annotations

import abc
from typing import Any

import torch


class RegularizerSetupError(RuntimeError):
    """A regularizer attached to nothing (no modules, no layers, no anchors)."""


class Regularizer(abc.ABC):
    #: short name used in logs (``<name>/raw``, ``<name>/coef``) and configs
    name: str = ""
    #: the trainer runs the model with ``output_hidden_states=True`` when any active one needs it
    needs_hidden_states: bool = False
    #: True if the raw value is legitimately exactly 0 at step 0 (ProCon: z == z0 before any update)
    zero_at_start: bool = False

    @abc.abstractmethod
    def setup(self, trainer: Any) -> dict[str, Any]:
        """Prepare (anchors, directions, module maps) before training; return a JSON-able report
        of what was attached (counts of modules / layers / anchors). Raise RegularizerSetupError
        if nothing was attached."""

    @abc.abstractmethod
    def __call__(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        """Unweighted scalar penalty for this batch (differentiable w.r.t. trainable params)."""

    def example_fields(self, record: Any) -> dict[str, Any]:
        """Per-example fields this regularizer needs in the training set, from the example's record
        (the refusal-decision loss: its target); ``setup`` reads them back by ``sample_idx``."""
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors to checkpoint with the run (e.g. an anchor cache); default none."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""
