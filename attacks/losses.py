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


def kl_from_reference(logits: torch.Tensor, reference_probs: torch.Tensor) -> torch.Tensor:
    """KL(p_ref || softmax(logits)) per example: TRADES' inner objective (Zhang et al. 2019, eq. 5),
    with the clean prediction's probabilities passed in place of labels."""
    if not reference_probs.is_floating_point() or reference_probs.shape != logits.shape:
        raise ConfigError(f"the 'kl' loss takes reference probabilities shaped like the logits "
                          f"{tuple(logits.shape)}, got {reference_probs.dtype} {tuple(reference_probs.shape)}")
    return F.kl_div(F.log_softmax(logits, dim=1), reference_probs, reduction="none").sum(dim=1)


LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "cw": cw_margin, "kl": kl_from_reference}


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise ConfigError(f"unknown attack loss {name!r}; expected one of {sorted(LOSSES)}")
    return LOSSES[name]
