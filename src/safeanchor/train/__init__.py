"""Training: ``SafeTrainingConfig`` + ``SafeTrainer`` (CE + scheduled regularizers) and ``train()``.

>>> from safeanchor.train import SafeTrainingConfig, train                       # doctest: +SKIP
>>> result = train(SafeTrainingConfig(method="procon_safe", alpha=2.0, alpha_schedule="warmup",
...                                   schedule_length=2, output_dir="runs/procon_wu_safe"))  # doctest: +SKIP
>>> result.output_dir / "adapter_model.safetensors"                                # doctest: +SKIP
"""

from .config import ConfigError, SafeTrainingConfig, config_from_dict, load_config
from .schedules import Schedule
from .trainer import SafeTrainer, TrainResult, ZeroPenaltyError, train

__all__ = ["ConfigError", "SafeTrainingConfig", "SafeTrainer", "Schedule", "TrainResult", "ZeroPenaltyError",
           "config_from_dict", "load_config", "train"]
