"""Exponential moving average of network weights (seed 000 appendix A: decay 0.998 over every weight
of the classifier and the generator, after every step; docs/defense-specs.md sec. 5.2 step 7)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """shadow <- decay * shadow + (1 - decay) * weight after every ``update``; the shadow starts at
    the initial weights (no bias correction, no warm-up, as the reference code). Buffers are copied."""

    def __init__(self, modules: dict[str, nn.Module], decay: float) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadows = {name: copy.deepcopy(module).eval().requires_grad_(False)
                        for name, module in modules.items()}

    @torch.no_grad()
    def update(self, modules: dict[str, nn.Module]) -> None:
        for name, module in modules.items():
            shadow = self.shadows[name]
            for averaged, weight in zip(shadow.parameters(), module.parameters()):
                averaged.lerp_(weight.detach(), 1 - self.decay)
            for averaged, buffer in zip(shadow.buffers(), module.buffers()):
                averaged.copy_(buffer)

    @torch.no_grad()
    def copy_to(self, modules: dict[str, nn.Module]) -> None:
        """Load the averaged weights into ``modules`` (what the checkpoint then holds)."""
        for name, module in modules.items():
            module.load_state_dict(self.shadows[name].state_dict())
