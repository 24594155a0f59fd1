"""The attack registry: ``@register_attack("pgd", kind=..., paper=...)``."""

from __future__ import annotations

from typing import Any, Callable

from bench.registry import Registry

ATTACKS: Registry[Callable[..., Any]] = Registry("attack")
register_attack = ATTACKS.register
