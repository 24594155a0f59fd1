"""The fast-gradient-sign line: the smallest eps at which x + eps * sign(grad) fools the model.

Deep Defense (Yan et al., NeurIPS 2018, sec. 4.1) reports FGS robustness as the accuracy at 0.2,
0.5 and 1.0 eps_ref, where eps_ref is the eps at which half of the perturbed test images are
misclassified. One gradient per image fixes the direction; the attack then walks a grid of eps
values (``grid_step`` up to ``max_eps``) on the images not yet fooled and refines each crossing by
``refine`` bisection steps. Its per-example Linf norm is that smallest eps, so the FGS accuracy at
any eps (the fraction not fooled at any point of the line up to eps) is read from stored rows
without attacking again. Deviation: points are clipped to [0, 1] (the paper's are not; the
harness never leaves the box), which can only shorten the Linf norm of a clipped image."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attacks.base import Attack, PassCounter
from attacks.gradient import input_gradient, is_fooled
from attacks.losses import get_loss
from attacks.registry import register_attack
from bench.enums import Norm
from bench.errors import ConfigError


@register_attack("fgs-line", kind="minimum-norm", gradients=True, curve_only=True, paper="Yan et al. 2018, sec. 4.1 (FGS, eps_ref)")
class FGSLine(Attack):
    """Minimum-norm search along the FGS direction; unfooled images end at ``max_eps``."""

    name = "fgs-line"

    def __init__(self, max_eps: float = 0.5, grid_step: float = 0.01, refine: int = 6, loss: str = "ce",
                 targeted: str | None = None, seed: int = 0) -> None:
        super().__init__(seed)
        if not 0 < grid_step <= max_eps or refine < 0:
            raise ConfigError(f"fgs-line: need 0 < grid_step <= max_eps and refine >= 0, got "
                              f"grid_step={grid_step}, max_eps={max_eps}, refine={refine}")
        get_loss(loss)
        self.threat_norm = Norm.LINF
        self.max_eps, self.grid_step, self.refine, self.loss = float(max_eps), float(grid_step), int(refine), loss
        self.targeted = self.check_target_rule(targeted)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "threat_norm": self.threat_norm.value, "max_eps": self.max_eps,
                "grid_step": self.grid_step, "refine": self.refine, "loss": self.loss}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator, counter: PassCounter,
                target: torch.Tensor | None = None) -> torch.Tensor:
        goal = target if target is not None else y
        logits, grad = input_gradient(model, x, goal, self.loss, counter, targeted=target is not None)
        direction = grad.sign()
        shape = (-1, *([1] * (x.ndim - 1)))

        def fools(rows: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                out = model((x[rows] + eps.view(shape) * direction[rows]).clamp(0, 1))
            counter.add(rows.numel(), backward=False)
            return is_fooled(out, y[rows], None if target is None else target[rows])

        found = torch.full(y.shape, float("inf"), device=x.device)
        found[is_fooled(logits, y, target)] = 0.0
        n_grid = int(round(self.max_eps / self.grid_step))
        for i in range(1, n_grid + 1):
            rows = torch.nonzero(found.isinf()).squeeze(1)
            if not rows.numel():
                break
            eps = min(i * self.grid_step, self.max_eps)
            hit = fools(rows, torch.full((rows.numel(),), eps, device=x.device))
            found[rows[hit]] = eps
        rows = torch.nonzero(found.isfinite() & (found > 0)).squeeze(1)
        high = found[rows]
        low = (high - self.grid_step).clamp_min(0)
        for _ in range(self.refine):  # invariant: high fools, low does not
            if not rows.numel():
                break
            middle = (low + high) / 2
            hit = fools(rows, middle)
            high, low = torch.where(hit, middle, high), torch.where(hit, low, middle)
        found[rows] = high
        eps = torch.where(found.isinf(), self.max_eps, found)
        return (x + eps.view(shape) * direction).clamp(0, 1)
