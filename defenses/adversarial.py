"""Adversarial training baselines (docs/defense-specs.md sec. 1.1):

- ``fgsm-at``: Goodfellow et al. 2015, eq. 6: alpha CE(f(x), y) + (1 - alpha) CE(f(x + eps sign(g)), y).
- ``pgd-at``: Madry et al. 2018, eq. 2.1: CE(f(x_adv), y) with x_adv from PGD with random start,
  optionally with a linear eps warm-up over the first epochs (a common MNIST stabilizer)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic.dataclasses import dataclass
from torch import nn
from torch.nn import functional as F

from attacks.gradient import gradient_ascent
from attacks.norms import hooks_for
from bench.core.params import (
    PARAMS_CONFIG,
    Flag,
    NonNegativeInt,
    PositiveInt,
    PositiveReal,
    UnitReal,
)
from defenses.base import BatchContext, BatchOutput, Trainer
from defenses.registry import register_defense


@dataclass(config=PARAMS_CONFIG)
class FGSMATParams:
    eps: PositiveReal = 0.3
    alpha: UnitReal = 0.5
    norm: Literal["linf", "l2"] = "linf"


@register_defense("fgsm-at", strength="eps", paper="Goodfellow et al. 2015, eq. 6")
class FGSMAdversarialTraining(Trainer):
    """alpha-mixed clean + FGSM loss; the FGSM gradient comes from the clean forward pass."""

    name = "fgsm-at"
    Params = FGSMATParams

    def __init__(self, common, params: FGSMATParams) -> None:
        super().__init__(common, params)
        self.hooks = hooks_for(params.norm)

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   ctx: BatchContext) -> BatchOutput:
        p = self.params
        x_in = x.detach().requires_grad_(True)
        clean_logits = model(x_in)
        clean_loss = F.cross_entropy(clean_logits, y)
        (grad,) = torch.autograd.grad(clean_loss, x_in, retain_graph=True)
        x_adv = (x + p.eps * self.hooks.steepest_direction(grad)).clamp(0, 1).detach()
        adv_logits = model(x_adv)
        ctx.counter.add(len(y), backward=True)   # clean forward, input backward
        ctx.counter.add(len(y), backward=True)   # adversarial forward, parameter backward
        ctx.counter.backward += len(y)           # parameter backward through the clean graph
        loss = p.alpha * clean_loss + (1 - p.alpha) * F.cross_entropy(adv_logits, y)
        return BatchOutput(loss, clean_logits, adv_logits)


@dataclass(config=PARAMS_CONFIG)
class PGDATParams:
    eps: PositiveReal = 0.3
    steps: PositiveInt = 40
    step_size: PositiveReal = 0.01
    random_start: Flag = True
    norm: Literal["linf", "l2"] = "linf"
    #: Epochs over which eps grows linearly from eps/warmup_epochs to eps (0: no warm-up).
    eps_warmup_epochs: NonNegativeInt = 0


@register_defense("pgd-at", strength="eps", paper="Madry et al. 2018")
class PGDAdversarialTraining(Trainer):
    """Train on PGD adversarials only (the attack in train mode, treated as a constant)."""

    name = "pgd-at"
    Params = PGDATParams

    def __init__(self, common, params: PGDATParams) -> None:
        super().__init__(common, params)
        self.hooks = hooks_for(params.norm)

    def epoch_eps(self, epoch: int) -> float:
        warmup = self.params.eps_warmup_epochs
        if warmup and epoch <= warmup:
            return self.params.eps * epoch / warmup
        return self.params.eps

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   ctx: BatchContext) -> BatchOutput:
        p = self.params
        eps = self.epoch_eps(ctx.epoch)
        x_adv = gradient_ascent(model, x, y, hooks=self.hooks, eps=eps, steps=p.steps,
                                step_size=p.step_size * eps / p.eps, random_start=p.random_start,
                                generator=ctx.generator, counter=ctx.counter)
        adv_logits = model(x_adv)
        ctx.counter.add(len(y), backward=True)
        return BatchOutput(F.cross_entropy(adv_logits, y), None, adv_logits)
