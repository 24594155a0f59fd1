"""Fast Minimum-Norm attack (Pintor et al., NeurIPS 2021, Alg. 1), batched, for L1, L2 and Linf.

Each step moves delta along the normalized gradient of the logit margin (eq. 7, a step of size
alpha_k in L2) and projects it onto the Lp ball of radius eps_k, then into the [0, 1] box. The
radius follows the boundary (eq. 6):

    not adversarial, none found yet:  eps_k = ||delta||_p + (|margin| + 1e-4) / ||grad||_q  (linear estimate)
    not adversarial, one found:       eps_k = (1 + gamma_k) eps_{k-1}
    adversarial:                      eps_k = min((1 - gamma_k) eps_{k-1}, best ||delta*||_p)

with alpha_k and gamma_k cosine-annealed, eps capped at the box's largest perturbation. The smallest
adversarial point queried is returned (``BestPoints``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attacks.base import PassCounter
from attacks.lp import box_limit, dual_size, project
from attacks.minimum_norm import LOGIT_TOLERANCE, BestPoints, MinimumNormAttack, cosine
from attacks.registry import register_attack
from bench.errors import ConfigError


@register_attack("fmn", kind="minimum-norm", gradients=True, unbounded=True, paper="Pintor et al. 2021, Alg. 1 (FMN)")
class FastMinimumNorm(MinimumNormAttack):
    """FMN for ``norm`` in l1, l2, linf: ``steps`` forward+backward passes per image."""

    name = "fmn"

    def __init__(self, norm: str = "l2", steps: int = 100, alpha_init: float = 1.0,
                 alpha_final: float | None = None, gamma_init: float = 0.05, gamma_final: float = 0.001,
                 box_mask: bool = True, targeted: str | None = None, seed: int = 0) -> None:
        super().__init__(norm, steps, seed, targeted)
        alpha_final = alpha_init / 100 if alpha_final is None else alpha_final
        if not (alpha_init > 0 and alpha_final > 0 and 0 < gamma_final <= gamma_init < 1):
            raise ConfigError(f"fmn: need alpha_init > 0, alpha_final > 0, 0 < gamma_final <= gamma_init < 1; "
                              f"got alpha_init={alpha_init}, alpha_final={alpha_final}, "
                              f"gamma_init={gamma_init}, gamma_final={gamma_final}")
        self.alpha_init, self.alpha_final = float(alpha_init), float(alpha_final)
        self.gamma_init, self.gamma_final = float(gamma_init), float(gamma_final)
        self.box_mask = bool(box_mask)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "alpha_init": self.alpha_init, "alpha_final": self.alpha_final,
                "gamma_init": self.gamma_init, "gamma_final": self.gamma_final, "box_mask": self.box_mask}

    def search(self, model: nn.Module, x: torch.Tensor, goal: torch.Tensor, targeted: bool,
               best: BestPoints, generator: torch.Generator, counter: PassCounter) -> torch.Tensor:
        norm = self.threat_norm
        delta = torch.zeros_like(x)
        radius = torch.full((x.shape[0],), float("inf"), device=x.device, dtype=x.dtype)
        limit = box_limit(x, norm)
        for step in range(self.steps):
            alpha = cosine(self.alpha_init, self.alpha_final, step, self.steps)
            gamma = cosine(self.gamma_init, self.gamma_final, step, self.steps)
            logits, margin, grad = self.margin_and_gradient(model, x + delta, goal, targeted, counter)
            adversarial = self.is_adversarial(logits, goal, targeted)
            current = best.update(x + delta, adversarial)
            # the linear estimate lands on the boundary; the tolerance takes it across (a point
            # exactly on a linear boundary is a tie, and the radius would stay there)
            to_boundary = current + (margin.abs() + LOGIT_TOLERANCE) / dual_size(grad, norm).clamp_min(1e-12)
            radius = torch.where(adversarial, torch.minimum(radius * (1 - gamma), best.size),
                                 torch.where(best.found, radius * (1 + gamma), to_boundary))
            radius = torch.minimum(radius, limit)
            # descend the margin (towards misclassification) by alpha in L2, then project
            delta = delta + alpha * self.unit_step(-grad, x + delta, generator, self.box_mask)
            delta = (x + project(delta, radius, norm)).clamp(0, 1) - x
        return x + delta
