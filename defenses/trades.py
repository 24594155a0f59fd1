"""TRADES (Zhang et al., ICML 2019, eq. 5; docs/defense-specs.md sec. 7):

    min_theta  CE(f(x), y) + beta * KL(f(x) || f(x'))     (KL summed, divided by the batch size)

with x' from Linf PGD that maximizes the KL term, started at x + 0.001 N(0, 1), sign steps,
projected onto the eps-ball and [0, 1], and treated as a constant. As in the current reference code
the inner loop runs in eval mode and the outer loss in train mode."""

from __future__ import annotations

import torch
from pydantic.dataclasses import dataclass
from torch import nn
from torch.nn import functional as F

from attacks.gradient import gradient_ascent
from attacks.norms import hooks_for
from bench.core.params import PARAMS_CONFIG, NonNegativeReal, PositiveInt, PositiveReal
from defenses.base import BatchContext, BatchOutput, Trainer
from defenses.registry import register_defense


@dataclass(config=PARAMS_CONFIG)
class TRADESParams:
    #: Weight of the robustness (KL) term, the strength knob (1/lambda in the paper's notation).
    beta: NonNegativeReal = 1.0
    eps: PositiveReal = 0.3
    steps: PositiveInt = 40
    step_size: PositiveReal = 0.01
    start_std: NonNegativeReal = 0.001


@register_defense("trades", strength="beta", paper="Zhang et al. 2019, eq. 5")
class TRADES(Trainer):
    """Clean cross-entropy plus beta times the KL between clean and adversarial predictions."""

    name = "trades"
    Params = TRADESParams

    def __init__(self, common, params: TRADESParams) -> None:
        super().__init__(common, params)
        self.hooks = hooks_for("linf")

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   ctx: BatchContext) -> BatchOutput:
        p = self.params
        model.eval()
        with torch.no_grad():
            reference = F.softmax(model(x), dim=1)
        start = p.start_std * torch.randn(x.shape, generator=ctx.generator, device=x.device, dtype=x.dtype)
        x_adv = gradient_ascent(model, x, reference, hooks=self.hooks, eps=p.eps, steps=p.steps,
                                step_size=p.step_size, random_start=False, loss="kl", counter=ctx.counter,
                                start=start)
        model.train()
        clean_logits = model(x)
        adv_logits = model(x_adv)
        robust = F.kl_div(F.log_softmax(adv_logits, dim=1), F.softmax(clean_logits, dim=1),
                          reduction="sum") / len(y)
        ctx.counter.add(len(y), backward=False)        # reference forward
        ctx.counter.add(2 * len(y), backward=True)     # clean and adversarial forward + backward
        return BatchOutput(F.cross_entropy(clean_logits, y) + p.beta * robust, clean_logits, adv_logits)
