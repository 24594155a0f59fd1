"""An advarena plugin: Gaussian data augmentation as a defense (train on x + N(0, sigma^2 I),
clipped to [0, 1]; Zantedeschi et al. 2017, "Efficient defenses against adversarial attacks").

Use it from a suite with ``plugins: [gaussian_augment]`` (this file beside the suite, on the Python
path, or installed with an ``advarena.defenses`` entry point), or ``advarena run --plugin ...``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from defenses import BatchContext, BatchOutput, Trainer, register_defense


@dataclass
class GaussianAugmentParams:
    #: Standard deviation of the noise in [0, 1] pixel units: the strength knob.
    sigma: float = 0.3


@register_defense("gaussian-augment", strength="sigma", paper="Zantedeschi et al. 2017")
class GaussianAugment(Trainer):
    """Train on Gaussian-noised copies of each minibatch."""

    name = "gaussian-augment"
    Params = GaussianAugmentParams

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: BatchContext) -> BatchOutput:
        noise = torch.randn(x.shape, generator=ctx.generator, device=x.device) * self.params.sigma
        logits = model((x + noise).clamp(0, 1))
        ctx.counter.add(len(y), backward=True)
        return BatchOutput(F.cross_entropy(logits, y), logits)
