"""Model registry and the input-normalization layer every zoo model starts with."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from bench.registry import Registry

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")
register_model = MODELS.register

# Arguments every factory takes from the dataset; everything else is an architecture parameter.
DATA_ARGS = ("input_shape", "num_classes", "mean", "std")


class Normalize(nn.Module):
    """(x - mean) / std per channel, as buffers, so models take [0, 1] pixels."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def build_model(arch: str, input_shape: Sequence[int], num_classes: int,
                mean: Sequence[float], std: Sequence[float], **params: Any) -> nn.Module:
    """Build zoo architecture ``arch`` for inputs of ``input_shape`` (C, H, W)."""
    MODELS.check_params(arch, params, reserved=DATA_ARGS)
    return MODELS.create(arch, input_shape=tuple(input_shape), num_classes=num_classes,
                         mean=tuple(mean), std=tuple(std), **params)


def flat_features(module: nn.Module, input_shape: Sequence[int]) -> int:
    """Number of features ``module`` produces for one input of ``input_shape`` (shape probe)."""
    with torch.no_grad():
        return int(module(torch.zeros(1, *input_shape)).flatten(1).shape[1])
