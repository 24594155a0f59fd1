"""Robust optimization adversarial training (Shaham, Yamada & Negahban, seed 004; docs/defense-specs.md sec. 2).

min_theta sum_i max_{x~ in U_i} J(theta, x~, y_i), the inner max approximated by one steepest-ascent
step on the first-order Taylor model (eq. 11, Algorithm 1):

    Linf ball:  Delta = r sign(g)
    L2 ball:    Delta = r g / ||g||_2
    L1 ball:    Delta = r sign(g_j) e_j at the single coordinate j = argmax |g_j|

with g = grad_x J at the clean point (train mode, batch-mean loss). The model is trained on x + Delta
only, never on clean data, and x + Delta is not clipped to the pixel box (the official code never
clips; ``clip=True`` is the alternative). Cost: two forward and two backward passes per example.

Radii are in the model's input units, here [0, 1] pixels: the paper's MNIST radii (Linf 0.2, L2 2 and
L1 2 in globally standardized units, std about 0.3) are about 0.06, 0.6 and 0.6 in pixels."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic.dataclasses import dataclass
from torch import nn
from torch.nn import functional as F

from bench.core.params import PARAMS_CONFIG, Flag, PositiveReal
from bench.enums import Norm
from defenses.base import BatchContext, BatchOutput, Trainer
from defenses.registry import register_defense


def steepest_ascent_step(grad: torch.Tensor, norm: Norm, radius: float) -> torch.Tensor:
    """The maximizer of <grad, Delta> over the ``norm`` ball of ``radius`` (per example)."""
    flat = grad.flatten(1)
    if norm is Norm.LINF:
        step = radius * flat.sign()
    elif norm is Norm.L2:
        step = radius * flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    else:  # L1: one coordinate, the first maximum of |g| (the official code does not break ties)
        j = flat.abs().argmax(dim=1, keepdim=True)
        step = torch.zeros_like(flat).scatter_(1, j, radius * flat.gather(1, j).sign())
    return step.view_as(grad)


@dataclass(config=PARAMS_CONFIG)
class ROParams:
    norm: Literal["linf", "l2", "l1"] = "linf"
    #: Radius r of the uncertainty set, in [0, 1] pixel units (the strength knob).
    radius: PositiveReal = 0.06
    clip: Flag = False


@register_defense("ro", strength="radius", paper="Shaham et al. (seed 004), Algorithm 1 / eq. 11")
class RobustOptimization(Trainer):
    """One steepest-ascent step in an L1, L2 or Linf ball; train on the perturbed data only."""

    name = "ro"
    Params = ROParams

    def __init__(self, common, params: ROParams) -> None:
        super().__init__(common, params)
        self.norm = Norm.parse(params.norm)

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   ctx: BatchContext) -> BatchOutput:
        x_in = x.detach().requires_grad_(True)
        clean_logits = model(x_in)
        (grad,) = torch.autograd.grad(F.cross_entropy(clean_logits, y), x_in)
        x_tilde = x + steepest_ascent_step(grad, self.norm, self.params.radius)
        if self.params.clip:
            x_tilde = x_tilde.clamp(0, 1)
        adv_logits = model(x_tilde.detach())
        ctx.counter.add(len(y), backward=True)   # clean forward + input backward
        ctx.counter.add(len(y), backward=True)   # perturbed forward + parameter backward
        return BatchOutput(F.cross_entropy(adv_logits, y), clean_logits.detach(), adv_logits)
