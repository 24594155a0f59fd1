"""Decoupled Direction and Norm attack (Rony et al., CVPR 2019, Alg. 1), batched, L2.

The direction and the norm of delta are decoupled: each step ascends the cross-entropy along its
normalized gradient (step alpha, cosine-annealed as in the authors' implementation), while the
norm eps is shrunk by (1 - gamma) when the current point is adversarial and grown by (1 + gamma)
when not; delta is then rescaled onto the sphere of radius eps and put back into the [0, 1] box.
The smallest adversarial point queried is returned (``BestPoints``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from attacks.base import PassCounter
from attacks.lp import box_limit, per_example, size
from attacks.minimum_norm import BestPoints, MinimumNormAttack, cosine, record_first_gradient
from attacks.registry import register_attack
from bench.enums import Norm
from bench.errors import ConfigError


@register_attack("ddn", kind="minimum-norm", gradients=True, unbounded=True, paper="Rony et al. 2019, Alg. 1 (DDN)")
class DecoupledDirectionNorm(MinimumNormAttack):
    """DDN-L2: ``steps`` forward+backward passes per image."""

    name = "ddn"

    def __init__(self, steps: int = 100, init_norm: float = 1.0, gamma: float = 0.05,
                 alpha_init: float = 1.0, alpha_final: float = 0.01, box_mask: bool = False, targeted: str | None = None,
                 seed: int = 0) -> None:
        super().__init__("l2", steps, seed, targeted)
        if not (init_norm > 0 and 0 < gamma < 1 and alpha_init > 0 and alpha_final > 0):
            raise ConfigError(f"ddn: need init_norm > 0, 0 < gamma < 1, alpha_init > 0, alpha_final > 0; "
                              f"got init_norm={init_norm}, gamma={gamma}, alpha_init={alpha_init}, "
                              f"alpha_final={alpha_final}")
        self.init_norm, self.gamma = float(init_norm), float(gamma)
        self.alpha_init, self.alpha_final = float(alpha_init), float(alpha_final)
        self.box_mask = bool(box_mask)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "init_norm": self.init_norm, "gamma": self.gamma,
                "alpha_init": self.alpha_init, "alpha_final": self.alpha_final, "box_mask": self.box_mask}

    def search(self, model: nn.Module, x: torch.Tensor, goal: torch.Tensor, targeted: bool,
               best: BestPoints, generator: torch.Generator, counter: PassCounter) -> torch.Tensor:
        delta = torch.zeros_like(x)
        radius = torch.full((x.shape[0],), self.init_norm, device=x.device, dtype=x.dtype)
        limit = box_limit(x, Norm.L2)
        for step in range(self.steps):
            alpha = cosine(self.alpha_init, self.alpha_final, step, self.steps)
            point = (x + delta).detach().requires_grad_(True)
            logits = model(point)
            loss = F.cross_entropy(logits, goal, reduction="none")
            (grad,) = torch.autograd.grad(-loss.sum() if targeted else loss.sum(), point)
            counter.add(x.shape[0], backward=True)
            record_first_gradient(counter, grad)
            adversarial = self.is_adversarial(logits.detach(), goal, targeted)
            best.update(point.detach(), adversarial)
            radius = torch.minimum(torch.where(adversarial, radius * (1 - self.gamma), radius * (1 + self.gamma)),
                                   limit)
            delta = delta + alpha * self.unit_step(grad, point.detach(), generator, self.box_mask)
            scale = radius / size(delta, Norm.L2).clamp_min(1e-12)
            delta = (x + delta * per_example(scale, x.ndim)).clamp(0, 1) - x
        return x + delta
