"""Losses the gradient attacks ascend; each returns a per-example loss to be summed."""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

from bench.errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy CE(f(x), y)."""
    return F.cross_entropy(logits, y, reduction="none")


def cw_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini & Wagner's margin max_{j != y} z_j - z_y (positive once misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return others.amax(dim=1) - true


LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "cw": cw_margin}


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise ConfigError(f"unknown attack loss {name!r}; expected one of {sorted(LOSSES)}")
    return LOSSES[name]
