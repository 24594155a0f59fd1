"""The defense registry: ``@register_defense("pgd-at", strength="eps", paper=...)``."""

from __future__ import annotations

from typing import Any, Callable

from bench.registry import Registry

DEFENSES: Registry[Callable[..., Any]] = Registry("defense")
register_defense = DEFENSES.register
