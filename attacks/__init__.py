"""Attacks: one module per attack family, registered by name in ``ATTACKS``."""

from attacks.base import Attack, AttackCheckError, AttackResult, PassCounter
from attacks.registry import ATTACKS, register_attack
from attacks import gradient, transfer  # noqa: F401  (registers the built-ins)

__all__ = ["ATTACKS", "Attack", "AttackCheckError", "AttackResult", "PassCounter", "register_attack"]
