"""Black-box transfer: adversarials crafted on a source (surrogate) model, scored on the target."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attacks.base import Attack, PassCounter
from attacks.registry import ATTACKS, register_attack
from bench.errors import ConfigError


@register_attack("transfer", kind="black-box", source="surrogate", paper="Papernot et al. 2017; seed 003 sec. 3.1, Tables 3, 6, 7")
class Transfer(Attack):
    """Run ``base`` white-box on ``source_model`` and hand its x_adv to the target unchanged.

    ``source_id`` (the source checkpoint's sha256) enters the content key, so results are stored
    per source."""

    name = "transfer"

    def __init__(self, base: str, source_model: nn.Module, source_id: str,
                 base_params: dict[str, Any] | None = None) -> None:
        if base == "transfer":
            raise ConfigError("transfer: the base attack cannot itself be a transfer")
        # crafted to the end on the source: a point frozen at its first success there rarely transfers
        self.base: Attack = ATTACKS.create(base, **(base_params or {})).for_transfer()
        super().__init__(self.base.seed)
        self.norm, self.eps = self.base.norm, self.base.eps
        self.source_model, self.source_id = source_model, source_id

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "base": self.base.config(), "source": self.source_id}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator, counter: PassCounter,
                target: torch.Tensor | None = None) -> torch.Tensor:
        result = self.base(self.source_model, x, y, generator, target)
        counter.forward += result.forward_passes
        counter.backward += result.backward_passes
        counter.trace.source_fooled = result.success
        return result.x_adv
