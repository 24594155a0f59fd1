"""Random-noise baseline: ``draws`` points drawn uniformly in the eps-ball (then clipped to the
box) per example; an example counts as fooled if any draw fools the model. A defense whose
white-box robust accuracy is not clearly below this baseline's points to a broken attack
(gradient masking; Carlini et al. 2019, "On Evaluating Adversarial Robustness", sec. 5)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attacks.base import Attack, PassCounter
from attacks.norms import hooks_for
from attacks.registry import register_attack
from bench.errors import ConfigError


@register_attack("noise", kind="bounded", gradients=False, paper="Carlini et al. 2019, sec. 5 (sanity baseline)")
class UniformNoise(Attack):
    """Keeps, per example, the first draw that fools the model (else the last draw)."""

    name = "noise"

    def __init__(self, norm: str = "linf", eps: float = 0.3, draws: int = 10, seed: int = 0) -> None:
        super().__init__(seed)
        self.hooks = hooks_for(norm)
        self.norm = self.hooks.norm
        if eps <= 0 or draws < 1:
            raise ConfigError(f"noise: need eps > 0 and draws >= 1, got eps={eps}, draws={draws}")
        self.eps, self.draws = float(eps), int(draws)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "draws": self.draws}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator, counter: PassCounter,
                target: torch.Tensor | None = None) -> torch.Tensor:
        x_adv = x.clone()
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.draws):
            candidate = (x + self.hooks.random_start(x, self.eps, generator)).clamp(0, 1)
            with torch.no_grad():
                pred = model(candidate).argmax(dim=1)
            counter.add(x.shape[0], backward=False)
            take = ~fooled
            x_adv[take] = candidate[take]
            fooled |= (pred == target) if target is not None else (pred != y)
        return x_adv
