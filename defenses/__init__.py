"""Defense trainers, one module per family, registered by name in ``DEFENSES``."""

from defenses.base import (BatchContext, BatchOutput, CommonHParams, EpochContext, EpochRecord, TrainResult,
                           Trainer, build_trainer)
from defenses.registry import DEFENSES, register_defense
from defenses import (adversarial, deep_defense, efgsm_rec, fast_at, free_at, l2l,  # noqa: F401  (registers)
                      parseval, pgn, robust_optimization, standard, trades)

__all__ = ["DEFENSES", "BatchContext", "BatchOutput", "CommonHParams", "EpochContext", "EpochRecord", "TrainResult",
           "Trainer", "build_trainer", "register_defense"]
