"""Standard (empirical risk) training: minimize mean CE(f(x), y)."""

from __future__ import annotations

import torch
from pydantic.dataclasses import dataclass
from torch import nn
from torch.nn import functional as F

from bench.core.params import PARAMS_CONFIG
from defenses.base import BatchContext, BatchOutput, Trainer
from defenses.registry import register_defense


@dataclass(config=PARAMS_CONFIG)
class StandardParams:
    """Standard training has no defense-specific hyper-parameter."""


@register_defense("standard", strength=None, paper="baseline (DEFENSE_SPECS sec. 1.1)")
class StandardTrainer(Trainer):
    """Plain cross-entropy training on clean data."""

    name = "standard"
    Params = StandardParams

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   ctx: BatchContext) -> BatchOutput:
        logits = model(x)
        ctx.counter.add(len(y), backward=True)
        return BatchOutput(F.cross_entropy(logits, y), logits)
