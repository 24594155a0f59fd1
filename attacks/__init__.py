"""Attacks: one module per attack family, registered by name in ``ATTACKS``."""

import importlib
import pkgutil

from attacks.base import Attack, AttackCheckError, AttackResult, PassCounter
from attacks.registry import ATTACKS, register_attack

# Every module of the package is imported, so the built-ins register themselves: a new attack is one
# new file here (no list to keep by hand).
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ATTACKS", "Attack", "AttackCheckError", "AttackResult", "PassCounter", "register_attack"]
