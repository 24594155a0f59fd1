"""Augmented Lagrangian Method for Adversarial attacks, ALMA (Rony et al., ICCV 2021, Alg. 1), L2.

    minimize  ||delta||_2 + P2(c(x + delta), rho, mu)        c = difference-of-logits ratio

with c < 0 exactly when x + delta is adversarial (the DLR of Croce & Hein 2020, shifted by a logit
tolerance), the P2 penalty-Lagrangian of Birgin et al. (eq. 9 of the paper):

    P2(y, rho, mu) = mu y + mu rho y^2 + rho^2 y^3 / 6      for y >= 0
                   = mu y / (1 - rho y)                     for y < 0

the multiplier mu an exponential moving average (weight ``alpha``) of dP2/dy, the penalty rho
multiplied by ``gamma`` every ``check_steps`` steps in which the constraint neither was met nor
improved by the factor ``tau``, and delta updated by RMSProp with momentum (their averaging weights
``alpha_rms`` and ``momentum``, both ``alpha`` unless set, as in the authors' code) at a learning rate held
until the first adversarial point is found and then decayed exponentially to
``lr_init * lr_reduction`` at the last step. With ``init_lr_distance`` the first step's learning
rate is found per example by bisection so that it moves delta by that distance (the paper's epsilon).
The smallest adversarial point queried is returned (``BestPoints``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attacks.base import PassCounter
from attacks.lp import per_example, size
from attacks.minimum_norm import LOGIT_TOLERANCE, BestPoints, MinimumNormAttack, record_first_gradient
from attacks.registry import register_attack
from bench.enums import Norm
from bench.errors import ConfigError

_BISECTION_STEPS = 20
_DOUBLING_STEPS = 30


def p2_penalty(y: torch.Tensor, rho: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """The P2 penalty-Lagrangian (Birgin et al. 2005; Rony et al. 2021, eq. 9)."""
    above = mu * y + mu * rho * y ** 2 + rho ** 2 * y ** 3 / 6
    below = mu * y / (1 - rho * y.clamp(max=0))
    return torch.where(y >= 0, above, below)


def dlr_constraint(logits: torch.Tensor, goal: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Difference-of-logits ratio (Croce & Hein 2020, eq. 6), positive while not adversarial."""
    needed = 4 if targeted else 3
    if logits.shape[1] < needed:
        raise ConfigError(f"alma: the difference-of-logits ratio needs at least {needed} classes "
                          f"({'targeted' if targeted else 'untargeted'}), the model has {logits.shape[1]}")
    goal_logit = logits.gather(1, goal[:, None]).squeeze(1)
    others = logits.scatter(1, goal[:, None], float("-inf")).amax(dim=1)
    if targeted:
        top = logits.topk(4, dim=1).values
        scale = top[:, 0] - (top[:, 2] + top[:, 3]) / 2
        difference = others - goal_logit
    else:
        top = logits.topk(3, dim=1).values
        scale = top[:, 0] - top[:, 2]
        difference = goal_logit - others
    return (difference + LOGIT_TOLERANCE) / (scale + 1e-8)


@register_attack("alma", kind="minimum-norm", gradients=True, unbounded=True, paper="Rony et al. 2021, Alg. 1 (ALMA, L2)")
class AugmentedLagrangian(MinimumNormAttack):
    """ALMA-L2: ``steps`` forward+backward passes per image (at least 3 classes; 4 targeted)."""

    name = "alma"

    def __init__(self, steps: int = 100, lr_init: float = 0.1, lr_reduction: float = 0.01,
                 init_lr_distance: float | None = None, mu_init: float = 1.0, rho_init: float = 1.0,
                 check_steps: int = 10, tau: float = 0.95, gamma: float = 1.2, alpha: float = 0.9,
                 alpha_rms: float | None = None, momentum: float | None = None,
                 targeted: str | None = None, seed: int = 0) -> None:
        super().__init__("l2", steps, seed, targeted)
        if not (lr_init > 0 and 0 < lr_reduction <= 1 and mu_init > 0 and rho_init > 0 and check_steps >= 1
                and 0 < tau < 1 and gamma > 1 and 0 < alpha < 1
                and (init_lr_distance is None or init_lr_distance > 0)):
            raise ConfigError(f"alma: need lr_init > 0, 0 < lr_reduction <= 1, mu_init > 0, rho_init > 0, "
                              f"check_steps >= 1, 0 < tau < 1, gamma > 1, 0 < alpha < 1, init_lr_distance > 0 "
                              f"or None; got lr_init={lr_init}, lr_reduction={lr_reduction}, mu_init={mu_init}, "
                              f"rho_init={rho_init}, check_steps={check_steps}, tau={tau}, gamma={gamma}, "
                              f"alpha={alpha}, init_lr_distance={init_lr_distance}")
        self.lr_init, self.lr_reduction, self.init_lr_distance = float(lr_init), float(lr_reduction), init_lr_distance
        self.mu_init, self.rho_init, self.check_steps = float(mu_init), float(rho_init), int(check_steps)
        self.tau, self.gamma, self.alpha = float(tau), float(gamma), float(alpha)
        for label, value in (("alpha_rms", alpha_rms), ("momentum", momentum)):
            if value is not None and not 0 < value < 1:
                raise ConfigError(f"alma: need 0 < {label} < 1 or None (= alpha), got {value}")
        self.alpha_rms, self.momentum = alpha_rms, momentum

    def config(self) -> dict[str, Any]:
        return {**super().config(), "lr_init": self.lr_init, "lr_reduction": self.lr_reduction,
                "init_lr_distance": self.init_lr_distance, "mu_init": self.mu_init, "rho_init": self.rho_init,
                "check_steps": self.check_steps, "tau": self.tau, "gamma": self.gamma, "alpha": self.alpha,
                # only when set: configurations from before these two existed keep their content keys
                **{k: float(v) for k, v in (("alpha_rms", self.alpha_rms), ("momentum", self.momentum))
                   if v is not None}}

    def search(self, model: nn.Module, x: torch.Tensor, goal: torch.Tensor, targeted: bool,
               best: BestPoints, generator: torch.Generator, counter: PassCounter) -> torch.Tensor:
        n = x.shape[0]
        delta = torch.zeros_like(x)
        square_avg, momentum = torch.ones_like(x), torch.zeros_like(x)
        full = lambda value: torch.full((n,), value, device=x.device, dtype=x.dtype)  # noqa: E731
        lr, mu, rho = full(self.lr_init), full(self.mu_init), full(self.rho_init)
        found_at = full(float(self.steps + 1))
        rms_weight = self.alpha if self.alpha_rms is None else self.alpha_rms
        momentum_weight = self.alpha if self.momentum is None else self.momentum
        previous = None
        for step in range(self.steps):
            point = (x + delta).detach().requires_grad_(True)
            logits = model(point)
            constraint = dlr_constraint(logits, goal, targeted)
            if step == 0:
                previous = constraint.detach()
            elif (step + 1) % self.check_steps == 0:
                improved = constraint.detach() < self.tau * previous
                rho = torch.where(best.found | improved, rho, rho * self.gamma)
                previous = constraint.detach()
            if step:
                y = constraint.detach().requires_grad_(True)
                (slope,) = torch.autograd.grad(p2_penalty(y, rho, mu).sum(), y)
                mu = (self.alpha * mu + (1 - self.alpha) * slope).clamp(1e-6, 1e12)
            adversarial = constraint.detach() < 0
            found_at = torch.where(adversarial & ~best.found, float(step), found_at)
            best.update(point.detach(), adversarial)
            penalty = p2_penalty(constraint, rho, mu)
            # ||delta|| has no gradient at delta = 0: the first step follows the penalty alone
            loss = penalty if step == 0 else size(point - x, Norm.L2) + penalty
            (grad,) = torch.autograd.grad(loss.sum(), point)
            counter.add(n, backward=True)
            record_first_gradient(counter, grad)   # the first step's: the model's alone, scaled
            if step == 0 and self.init_lr_distance is not None:
                grad = torch.where(per_example(grad.flatten(1).norm(dim=1) <= 1e-6, x.ndim),
                                   self.unit_step(grad, x, generator, box_mask=False), grad)
                lr = self.first_step_lr(x, grad, self.init_lr_distance)
            decay = self.lr_reduction ** ((step - found_at).clamp(min=0) / (self.steps - found_at))
            square_avg = rms_weight * square_avg + (1 - rms_weight) * grad * grad
            momentum = momentum_weight * momentum + grad / (square_avg.sqrt() + 1e-8)
            delta = (x + delta - per_example(lr * decay, x.ndim) * momentum).clamp(0, 1) - x
        return x + delta

    @staticmethod
    def first_step_lr(x: torch.Tensor, grad: torch.Tensor, distance: float) -> torch.Tensor:
        """Per example, the learning rate eta with ||clip(x - eta grad) - x||_2 = ``distance`` (as
        far as the box allows): doubling, then bisection, a fixed number of vectorized steps."""
        def moved(eta: torch.Tensor) -> torch.Tensor:
            return size((x - per_example(eta, x.ndim) * grad).clamp(0, 1) - x, Norm.L2)

        low = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        high = torch.ones_like(low)
        for _ in range(_DOUBLING_STEPS):
            short = moved(high) <= distance
            low, high = torch.where(short, high, low), torch.where(short, high * 2, high)
        for _ in range(_BISECTION_STEPS):
            middle = (low + high) / 2
            beyond = moved(middle) > distance
            low, high = torch.where(beyond, low, middle), torch.where(beyond, middle, high)
        return (low + high) / 2
