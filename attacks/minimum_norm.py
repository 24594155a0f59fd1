"""Shared machinery of the iterative minimum-norm attacks (FMN, DDN, ALMA): the threat norm in
the config, the logit margin they follow, the cosine schedules, and the per-example record of the
best point the attack ever queried.

Best-seen tracking (Pintor et al., NeurIPS 2022, "silent success"): the attack returns, per
example, the smallest adversarial point among all the points it evaluated, not its last iterate;
the last iterate is checked with one more forward, so no visited point is lost. Examples never
fooled come back unchanged (x_adv = x), which the evaluator stores as a failure."""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from attacks.base import Attack, PassCounter
from attacks.lp import per_example, size
from attacks.trace import AttackTrace
from bench.enums import Norm
from bench.errors import ConfigError

#: Added to a logit difference so that a tie (margin 0, a point exactly on a boundary) does not
#: count as adversarial and a linear estimate of the boundary lands just across it.
LOGIT_TOLERANCE = 1e-4


def logit_margin(logits: torch.Tensor, goal: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Per example, positive while the attack has not succeeded and negative once it has:
    z_y - max_{j != y} z_j untargeted; max_{j != t} z_j - z_t towards a target t."""
    goal_logit = logits.gather(1, goal[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(goal, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    return others - goal_logit if targeted else goal_logit - others


def cosine(start: float, end: float, step: int, steps: int) -> float:
    """Cosine annealing from ``start`` (step 0) towards ``end`` (Loshchilov & Hutter 2017, eq. 5),
    the schedule of FMN's step size and radius factor and of DDN's step size."""
    return end + (start - end) * (1 + math.cos(math.pi * step / steps)) / 2


def record_first_gradient(counter: PassCounter, grad: torch.Tensor) -> None:
    """The first input gradient's per-example norm into the counter's trace (later ones are ignored)."""
    if counter.trace.first_gradient_norm is None:
        counter.trace.first_gradient_norm = grad.flatten(1).norm(dim=1).detach()


class BestPoints:
    """Per example: the smallest ``norm`` size of an adversarial point seen so far and that point
    (``torch.where`` on the whole batch, no host synchronization)."""

    def __init__(self, x: torch.Tensor, norm: Norm, trace: AttackTrace | None = None) -> None:
        self.x, self.norm, self.trace = x, norm, trace
        self.size = torch.full((x.shape[0],), float("inf"), device=x.device, dtype=x.dtype)
        self.point = x.clone()
        self.found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    def update(self, candidate: torch.Tensor, adversarial: torch.Tensor) -> torch.Tensor:
        """Keep ``candidate`` where it is adversarial and smaller than the best so far; returns its sizes."""
        sizes = size(candidate - self.x, self.norm)
        better = adversarial & (sizes < self.size)
        self.size = torch.where(better, sizes, self.size)
        self.point = torch.where(per_example(better, candidate.ndim), candidate, self.point)
        self.found = self.found | adversarial
        if self.trace is not None:
            self.trace.ever_fooled = self.found
            self.trace.record_step(self.size, None, self.size.shape[0])
        return sizes


class MinimumNormAttack(Attack):
    """An attack that searches, per example, for the smallest ``threat_norm`` perturbation that
    fools the model. Subclasses implement ``search`` and feed every queried point to ``best``."""

    threat_norm: Norm = Norm.L2

    def __init__(self, norm: str, steps: int, seed: int = 0, targeted: str | None = None) -> None:
        super().__init__(seed)
        self.threat_norm = Norm.parse(norm)
        if steps < 1:
            raise ConfigError(f"{self.name}: need steps >= 1, got {steps}")
        self.steps = int(steps)
        self.targeted = self.check_target_rule(targeted)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "threat_norm": self.threat_norm.value, "steps": self.steps}

    def pass_counts(self) -> tuple[int, int] | None:
        """A forward and a backward per step, the check of the last iterate, the base class's check
        (a least-likely target rule: one more forward)."""
        return self.steps + 2 + (self.targeted == "least-likely"), self.steps

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator, counter: PassCounter,
                target: torch.Tensor | None = None) -> torch.Tensor:
        best = BestPoints(x, self.threat_norm, counter.trace)
        counter.trace.maximize = False
        goal = target if target is not None else y
        last = self.search(model, x, goal, target is not None, best, generator, counter)
        with torch.no_grad():   # the last iterate was never evaluated by the loop
            best.update(last, self.is_adversarial(model(last), goal, target is not None))
        counter.add(x.shape[0], backward=False)
        return best.point

    @staticmethod
    def is_adversarial(logits: torch.Tensor, goal: torch.Tensor, targeted: bool) -> torch.Tensor:
        pred = logits.argmax(dim=1)
        return pred == goal if targeted else pred != goal

    @abstractmethod
    def search(self, model: nn.Module, x: torch.Tensor, goal: torch.Tensor, targeted: bool,
               best: BestPoints, generator: torch.Generator, counter: PassCounter) -> torch.Tensor:
        """Run the attack's iterations, calling ``best.update`` on each point whose logits it
        computes; return the last iterate (checked by the caller)."""

    @staticmethod
    def margin_and_gradient(model: nn.Module, x_adv: torch.Tensor, goal: torch.Tensor, targeted: bool,
                            counter: PassCounter) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, margin, d margin / d x) at ``x_adv``: one forward and one backward."""
        x_adv = x_adv.detach().requires_grad_(True)
        logits = model(x_adv)
        margin = logit_margin(logits, goal, targeted)
        (grad,) = torch.autograd.grad(margin.sum(), x_adv)
        counter.add(x_adv.shape[0], backward=True)
        record_first_gradient(counter, grad)
        return logits.detach(), margin.detach(), grad

    @staticmethod
    def unit_step(direction: torch.Tensor, point: torch.Tensor, generator: torch.Generator,
                  box_mask: bool) -> torch.Tensor:
        """``direction`` scaled to unit L2 norm per example. With ``box_mask``, the components that
        would push a pixel already at 0 below 0 or one at 1 above 1 are dropped first, so the step's
        length is not clipped away by the box (on MNIST most pixels sit at 0; DeepFool's
        ``box_mask`` is the same idea). A zero direction (a flat or masked model) becomes a random
        unit direction from ``generator``, so the search still moves."""
        if box_mask:
            blocked = ((point <= 0) & (direction < 0)) | ((point >= 1) & (direction > 0))
            direction = direction.masked_fill(blocked, 0.0)
        norms = direction.flatten(1).norm(dim=1)
        noise = torch.randn(direction.shape, generator=generator, device=direction.device, dtype=direction.dtype)
        direction = torch.where(per_example(norms <= 1e-12, direction.ndim), noise, direction)
        return direction / per_example(direction.flatten(1).norm(dim=1).clamp_min(1e-12), direction.ndim)
