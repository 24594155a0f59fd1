"""Parseval networks (Cisse et al., ICML 2017, sec. 3.2; docs/defense-specs.md sec. 7).

After every optimizer step each weight matrix W (convolution kernels unfolded to
(out, in * k * k)) is retracted toward the manifold of Parseval tight frames (W W^T = I):

    W_S <- (1 + beta) W_S - beta W_S W_S^T W_S

on a random subset S of ``sample_fraction`` (30%) of its rows, drawn anew at every step, as Deep
Defense's comparison does ("30% of columns" in matconvnet's (in, out) layout is 30% of rows in
torch's (out, in) layout). beta = 1e-4 for MNIST, 3e-4 for CIFAR-10 (Deep Defense's grid search).
The paper's kernel-size rescaling and convex aggregation layers are not applied (plain layers)."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import PlainValidator
from pydantic.dataclasses import dataclass
from torch import nn
from torch.nn import functional as F

from bench.core.params import PARAMS_CONFIG, NonNegativeReal, number
from defenses.base import BatchContext, BatchOutput, Trainer
from defenses.registry import register_defense


def parseval_retraction(weight: torch.Tensor, beta: float, rows: torch.Tensor) -> None:
    """In place: W_S <- (1 + beta) W_S - beta W_S W_S^T W_S for the rows ``rows`` of the unfolded W."""
    with torch.no_grad():
        flat = weight.view(weight.shape[0], -1)
        sub = flat[rows]
        flat[rows] = (1 + beta) * sub - beta * sub @ sub.T @ sub


@dataclass(config=PARAMS_CONFIG)
class ParsevalParams:
    #: Retraction strength, the strength knob.
    beta: NonNegativeReal = 1e-4
    #: Share of the rows retracted after each step, in (0, 1].
    sample_fraction: Annotated[float, PlainValidator(number(gt=0, le=1))] = 0.3


@register_defense("parseval", strength="beta", paper="Cisse et al. 2017, sec. 3.2")
class ParsevalTraining(Trainer):
    """Cross-entropy training with a Parseval retraction of every linear/conv weight after each step."""

    name = "parseval"
    Params = ParsevalParams

    def __init__(self, common, params: ParsevalParams) -> None:
        super().__init__(common, params)

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   ctx: BatchContext) -> BatchOutput:
        logits = model(x)
        ctx.counter.add(len(y), backward=True)
        return BatchOutput(F.cross_entropy(logits, y), logits)

    def after_step(self, model: nn.Module, ctx: BatchContext) -> None:
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                out = module.weight.shape[0]
                count = max(1, round(self.params.sample_fraction * out))
                rows = torch.randperm(out, generator=ctx.generator, device=module.weight.device)[:count]
                parseval_retraction(module.weight, self.params.beta, rows)
