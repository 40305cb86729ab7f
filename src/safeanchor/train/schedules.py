"""Coefficient schedules for regularizers: α as a function of (global step, epoch).

A schedule is a pure function of the training position, so resuming a run restores it for free:
``Trainer`` checkpoints ``global_step`` and ``epoch`` and the schedule is re-evaluated from them.

* ``constant`` -- α for the whole run (ProCon_s, paper α = 0.1-0.2).
* ``warmup``   -- α for the first ``length`` epochs (or steps), then ``alpha_after`` (ProCon_wu:
  α = 1-2 for m ≈ 4 epochs on Llama, then 0 = plain fine-tuning).
* ``linear`` / ``cosine`` -- named extensions: decay from α to ``alpha_after`` over ``length``
  epochs (or steps; 0 = the whole run), then stay at ``alpha_after``.

>>> s = Schedule("warmup", alpha=2.0, length=4, unit="epoch")
>>> [s(step=0, epoch=e) for e in (0.0, 3.99, 4.0, 9.0)]
[2.0, 2.0, 0.0, 0.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("constant", "warmup", "linear", "cosine")
UNITS = ("epoch", "step")


@dataclass(frozen=True)
class Schedule:
    """α(step, epoch). ``step`` is the number of optimizer updates done before this batch
    (0 for the first batch); ``epoch`` the fraction of epochs done (0.0 at the start)."""

    kind: str = "constant"
    alpha: float = 0.1
    alpha_after: float = 0.0
    length: float = 0.0
    unit: str = "epoch"

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"alpha_schedule must be one of {', '.join(SCHEDULES)}; got {self.kind!r}")
        if self.unit not in UNITS:
            raise ValueError(f"schedule_unit must be one of {', '.join(UNITS)}; got {self.unit!r}")
        for name, value in (("alpha", self.alpha), ("alpha_after", self.alpha_after), ("schedule_length", self.length)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
        if self.kind == "warmup" and self.length <= 0:
            raise ValueError("schedule_length must be > 0 for alpha_schedule=warmup (the m epochs/steps of strong alpha)")

    def __call__(self, step: int, epoch: float, total_steps: int | None = None) -> float:
        if self.kind == "constant":
            return self.alpha
        pos = float(step) if self.unit == "step" else float(epoch)
        if self.kind == "warmup":
            return self.alpha if pos < self.length else self.alpha_after
        horizon = self.length
        if horizon <= 0:  # decay over the whole run
            if not total_steps:
                raise ValueError(f"alpha_schedule={self.kind} with schedule_length=0 needs the run's total steps")
            horizon, pos = float(total_steps), float(step)
        frac = min(max(pos / horizon, 0.0), 1.0)
        if self.kind == "linear":
            weight = 1.0 - frac
        else:  # cosine
            weight = 0.5 * (1.0 + math.cos(math.pi * frac))
        return self.alpha_after + (self.alpha - self.alpha_after) * weight


__all__ = ["SCHEDULES", "UNITS", "Schedule"]
