"""Learning to defend by learning to attack (seed 003, Algorithm 2; docs/defense-specs.md sec. 4).

    min_theta mean CE(f(x + g(A(x, y, theta); phi*)), y),  phi* = argmax_phi of the same loss,
    g in the Linf ball of radius eps through eps tanh(.)

Three attackers (``bench.models.learned_attackers``): ``l2l-naive`` (A = x), ``l2l-grad``
(A = [x, grad / max|grad|]) and ``l2l-2step`` (g applied twice with the gradient recomputed at the
first iterate, then projected). Per minibatch, in the official code's order (sec. 4.3; the paper's
Algorithm 2 reuses one delta for both updates):

1. classifier phase: classifier in train mode, attacker in eval mode; u and delta from the current
   weights, delta treated as a constant; one step of theta on CE(f(clamp(x + delta)), y);
2. attacker phase (``attacker_steps`` times): classifier in eval mode, attacker in train mode; u,
   delta and x_adv recomputed with the updated theta; one step of phi on -CE(f(x_adv), y).

No clean-loss term. The attacker has its own learning rate and weight decay (the two-time-scale
trick: ``attacker_lr`` against the classifier's ``lr``; the code's attacker uses Adam whatever the
classifier's optimizer, here both use the run's ``optimizer``); both follow the run's schedule."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic.dataclasses import dataclass
from torch import nn
from torch.nn import functional as F

from attacks.base import isolated_global_rng
from bench.core.params import PARAMS_CONFIG, NonNegativeReal, PositiveInt, PositiveReal
from bench.datasets import Dataset
from bench.models import build_model
from bench.models.learned_attackers import l2l_adversarial
from defenses.base import (
    BatchContext,
    BatchOutput,
    Trainer,
    frozen_parameters,
    seed_from,
)
from defenses.registry import register_defense


@dataclass(config=PARAMS_CONFIG)
class L2LParams:
    #: Linf radius of the attacker's output (the strength knob).
    eps: PositiveReal = 0.3
    #: "slim" or "wide" (seed 003 Table 1); ``attacker_width`` scales its channels (1 = the paper's).
    attacker_size: Literal["slim", "wide"] = "slim"
    attacker_width: PositiveReal = 1.0
    #: The attacker's optimizer is Adam with these (the code: 1e-3, wd 2e-4).
    attacker_lr: PositiveReal = 1e-3
    attacker_weight_decay: NonNegativeReal = 2e-4
    #: Attacker updates per minibatch (the code's att_iter).
    attacker_steps: PositiveInt = 1


class _LearningToLearn(Trainer):
    """The two-phase update shared by the three variants (``variant`` set by each subclass)."""

    Params = L2LParams
    variant = "grad"

    def __init__(self, common, params: L2LParams) -> None:
        super().__init__(common, params)

    def setup(self, model: nn.Module, data: Dataset, device: torch.device,
              generator: torch.Generator) -> None:
        arch_params: dict[str, Any] = {"eps": self.params.eps, "variant": self.variant,
                                       "size": self.params.attacker_size, "width": self.params.attacker_width}
        with isolated_global_rng(device, seed_from(generator)):
            attacker = build_model("l2l-attacker", data.input_shape, data.num_classes, data.channel_mean,
                                   data.channel_std, **arch_params)
        self.aux = {"attacker": attacker.to(device)}
        self.aux_arch = {"attacker": ("l2l-attacker", arch_params)}

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The run's optimizer with the attacker as a parameter group of its own learning rate
        (``lr_scale``) and weight decay; optimizers keep per-parameter state, so this equals two."""
        p, c = self.params, self.common
        groups = [{"params": [q for q in model.parameters() if q.requires_grad]},
                  {"params": list(self.aux["attacker"].parameters()), "lr_scale": p.attacker_lr / c.lr,
                   "weight_decay": p.attacker_weight_decay}]
        if c.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        return torch.optim.Adam(groups, lr=c.lr, weight_decay=c.weight_decay)

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   ctx: BatchContext) -> BatchOutput:
        """CE on the attacker's x_adv, the attacker in eval mode and its output a constant."""
        attacker = self.aux["attacker"]
        attacker.eval()
        with frozen_parameters(attacker):
            x_adv = l2l_adversarial(attacker, model, x, y).detach()
        self._count(ctx, len(y))
        adv_logits = model(x_adv)
        ctx.counter.add(len(y), backward=True)
        return BatchOutput(F.cross_entropy(adv_logits, y), None, adv_logits)

    def train_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: BatchContext,
                    optimizer: torch.optim.Optimizer) -> BatchOutput:
        attacker = self.aux["attacker"]
        model.train()
        out = self.batch_loss(model, x, y, ctx)
        self.check_finite(out.loss, ctx)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        model.eval()
        attacker.train()
        for _ in range(self.params.attacker_steps):
            optimizer.zero_grad(set_to_none=True)
            attacker_loss = -F.cross_entropy(model(l2l_adversarial(attacker, model, x, y)), y)
            self._count(ctx, len(y))
            ctx.counter.add(len(y), backward=True)
            self.check_finite(attacker_loss, ctx)
            attacker_loss.backward()
            for param in model.parameters():  # the attacker phase steps phi only
                param.grad = None
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.train()
        return BatchOutput(out.loss.detach(), None, out.adv_logits.detach())

    def _count(self, ctx: BatchContext, n: int) -> None:
        """The gradient inputs of the attacker: one forward and backward per application."""
        if self.variant != "naive":
            for _ in range(2 if self.variant == "2step" else 1):
                ctx.counter.add(n, backward=True)


@register_defense("l2l-naive", strength="eps", paper="seed 003 (naive attacker)", aux=("attacker",))
class NaiveL2L(_LearningToLearn):
    """Learning-to-learn with the naive attacker g(x)."""

    name = "l2l-naive"
    variant = "naive"


@register_defense("l2l-grad", strength="eps", paper="seed 003, Algorithm 2 (gradient attacker)", aux=("attacker",))
class GradientL2L(_LearningToLearn):
    """Learning-to-learn with the gradient attacker g(x, grad)."""

    name = "l2l-grad"
    variant = "grad"


@register_defense("l2l-2step", strength="eps", paper="seed 003 sec. 2.2 (2-step attacker)", aux=("attacker",))
class TwoStepL2L(_LearningToLearn):
    """Learning-to-learn with the attacker applied twice (a length-2 recurrent attack)."""

    name = "l2l-2step"
    variant = "2step"
