"""Training: ``SafeTrainingConfig`` + ``SafeTrainer`` (CE + scheduled regularizers) and ``train()``.

Names are imported lazily so ``safeanchor --help`` (which imports ``safeanchor.cli.train``)
does not pay for torch and transformers.

>>> from safeanchor.train import SafeTrainingConfig, train                       # doctest: +SKIP
>>> result = train(SafeTrainingConfig(method="procon_wu_safe", alpha=2.0, schedule_length=2,
...                                   output_dir="runs/procon_wu_safe"))  # doctest: +SKIP
>>> result.output_dir / "adapter_model.safetensors"                                # doctest: +SKIP
"""

from __future__ import annotations

from .. import lazy_exports

_EXPORTS = {
    "ConfigError": "config", "SafeTrainingConfig": "config", "config_from_dict": "config", "load_config": "config",
    "Schedule": "schedules",
    "SafeTrainer": "trainer", "ZeroPenaltyError": "trainer", "TrainResult": "run", "train": "run",
    "SafeSFTConfig": "trl_trainer", "SafeSFTTrainer": "trl_trainer",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
