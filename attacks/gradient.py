"""One gradient loop with per-norm hooks serving FGSM/FGM, PGD/BIM and MIM.

- FGSM/FGM: Goodfellow et al. 2015, x' = x + eps * sign(grad) (Linf) or eps * grad/||grad||_2 (L2).
- PGD: Madry et al. 2018, eq. 2: x_{t+1} = Proj_{B(x, eps) & [0,1]}(x_t + alpha * s(grad)) from a
  random start in the ball.
- MIM: Dong et al. 2018, eq. 6: g_{t+1} = mu g_t + grad / ||grad||_1, step along s(g_{t+1})."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attacks.base import Attack, PassCounter
from attacks.losses import get_loss
from attacks.norms import NormHooks, hooks_for
from attacks.registry import register_attack
from bench.errors import ConfigError


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str,
                   counter: PassCounter | None = None) -> torch.Tensor:
    """d sum_i loss(f(x_i), y_i) / dx: one forward and one backward; parameter grads untouched."""
    x = x.detach().requires_grad_(True)
    value = get_loss(loss)(model(x), y).sum()
    (grad,) = torch.autograd.grad(value, x)
    if counter is not None:
        counter.add(x.shape[0], backward=True)
    return grad


def gradient_ascent(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, hooks: NormHooks,
                    eps: float, steps: int, step_size: float, random_start: bool, momentum: float = 0.0,
                    loss: str = "ce", generator: torch.Generator | None = None,
                    counter: PassCounter | None = None) -> torch.Tensor:
    """The shared loop. ``momentum`` > 0 gives MIM; ``steps=1, step_size=eps`` gives FGSM.

    Does not change the model's mode (trainers call it in train mode, attacks in eval mode)."""
    delta = torch.zeros_like(x)
    if random_start:
        if generator is None:
            raise ConfigError("random_start needs a torch.Generator")
        delta = hooks.random_start(x, eps, generator)
        delta = (x + delta).clamp(0, 1) - x
    velocity = torch.zeros_like(x)
    for _ in range(steps):
        grad = input_gradient(model, x + delta, y, loss, counter)
        if momentum:
            l1 = grad.flatten(1).abs().sum(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.ndim - 1)))
            velocity = momentum * velocity + grad / l1
            grad = velocity
        delta = delta + step_size * hooks.steepest_direction(grad)
        delta = hooks.project(delta, eps)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


class GradientAttack(Attack):
    """Bounded attack driven by ``gradient_ascent``; ``restarts`` keeps, per example, the first
    successful restart (AutoAttack-style best of restarts)."""

    def __init__(self, *, norm: str, eps: float, steps: int, step_size: float, random_start: bool,
                 momentum: float = 0.0, loss: str = "ce", restarts: int = 1, seed: int = 0) -> None:
        super().__init__(seed)
        self.hooks = hooks_for(norm)
        self.norm = self.hooks.norm
        if eps <= 0 or steps < 1 or step_size <= 0 or restarts < 1:
            raise ConfigError(f"{self.name}: need eps > 0, steps >= 1, step_size > 0, restarts >= 1; "
                              f"got eps={eps}, steps={steps}, step_size={step_size}, restarts={restarts}")
        if restarts > 1 and not random_start:
            raise ConfigError(f"{self.name}: restarts > 1 without random_start repeat the same run")
        get_loss(loss)
        self.eps, self.steps, self.step_size = float(eps), int(steps), float(step_size)
        self.random_start, self.momentum, self.loss = bool(random_start), float(momentum), loss
        self.restarts = int(restarts)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "steps": self.steps, "step_size": self.step_size,
                "random_start": self.random_start, "momentum": self.momentum, "loss": self.loss,
                "restarts": self.restarts}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator, counter: PassCounter) -> torch.Tensor:
        best = None
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for restart in range(self.restarts):
            x_adv = gradient_ascent(model, x, y, hooks=self.hooks, eps=self.eps, steps=self.steps,
                                    step_size=self.step_size, random_start=self.random_start,
                                    momentum=self.momentum, loss=self.loss, generator=generator,
                                    counter=counter)
            if self.restarts == 1:
                return x_adv
            with torch.no_grad():
                now_fooled = model(x_adv).argmax(dim=1) != y
            counter.add(x.shape[0], backward=False)
            take = now_fooled & ~fooled if best is not None else torch.ones_like(fooled)
            best = x_adv if best is None else torch.where(take.view(-1, *([1] * (x.ndim - 1))), x_adv, best)
            fooled |= now_fooled
        assert best is not None
        return best


@register_attack("fgsm", kind="bounded", paper="Goodfellow et al. 2015 (FGSM; FGM for L2)")
class FGSM(GradientAttack):
    """Fast gradient (sign) method: one step of size eps along the steepest direction."""

    name = "fgsm"

    def __init__(self, norm: str = "linf", eps: float = 0.3, loss: str = "ce", seed: int = 0) -> None:
        super().__init__(norm=norm, eps=eps, steps=1, step_size=eps, random_start=False, loss=loss,
                         seed=seed)


@register_attack("pgd", kind="bounded", paper="Madry et al. 2018, eq. 2")
class PGD(GradientAttack):
    """Projected gradient descent with random start (BIM when random_start is false)."""

    name = "pgd"

    def __init__(self, norm: str = "linf", eps: float = 0.3, steps: int = 40, step_size: float = 0.01,
                 random_start: bool = True, restarts: int = 1, loss: str = "ce", seed: int = 0) -> None:
        super().__init__(norm=norm, eps=eps, steps=steps, step_size=step_size,
                         random_start=random_start, restarts=restarts, loss=loss, seed=seed)


@register_attack("mim", kind="bounded", paper="Dong et al. 2018, eq. 6")
class MIM(GradientAttack):
    """Momentum iterative method: decay ``decay``, step eps/steps unless given."""

    name = "mim"

    def __init__(self, norm: str = "linf", eps: float = 0.3, steps: int = 10,
                 step_size: float | None = None, decay: float = 1.0, loss: str = "ce",
                 seed: int = 0) -> None:
        super().__init__(norm=norm, eps=eps, steps=steps,
                         step_size=step_size if step_size is not None else eps / steps,
                         random_start=False, momentum=decay, loss=loss, seed=seed)
