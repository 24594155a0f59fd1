"""Defense trainers, one module per family, registered by name in ``DEFENSES``."""

import importlib
import pkgutil

from defenses.base import (BatchContext, BatchOutput, CommonHParams, EpochContext, EpochRecord, TrainResult,
                           Trainer, build_trainer)
from defenses.registry import DEFENSES, register_defense

# Every module of the package is imported, so the built-ins register themselves: a new defense is
# one new file here (no list to keep by hand).
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["DEFENSES", "BatchContext", "BatchOutput", "CommonHParams", "EpochContext", "EpochRecord", "TrainResult",
           "Trainer", "build_trainer", "register_defense"]
