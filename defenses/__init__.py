"""Defense trainers, one module per family, registered by name in ``DEFENSES``."""

from defenses.base import BatchContext, BatchOutput, CommonHParams, EpochRecord, TrainResult, Trainer, build_trainer
from defenses.registry import DEFENSES, register_defense
from defenses import adversarial, standard  # noqa: F401  (registers the built-ins)

__all__ = ["DEFENSES", "BatchContext", "BatchOutput", "CommonHParams", "EpochRecord", "TrainResult",
           "Trainer", "build_trainer", "register_defense"]
