"""Attacks: one module per attack family, registered by name in ``ATTACKS``."""

from attacks.base import Attack, AttackCheckError, AttackResult, PassCounter
from attacks.registry import ATTACKS, register_attack
from attacks import (alma, autoattack, cw, ddn, deepfool, fgs_line, fmn, gradient, learned, noise,  # noqa: F401  (registers built-ins)
                     torchattacks_adapters, transfer)

__all__ = ["ATTACKS", "Attack", "AttackCheckError", "AttackResult", "PassCounter", "register_attack"]
