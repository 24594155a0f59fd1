"""Adversarial training with a perturbation generator network (seed 000; docs/defense-specs.md sec. 5).

    min_theta max_phi  E[ CE(F(x_adv), y) - c_L ||x_adv - x||_2^2 ],
    x_adv = (tanh(atanh(0.999999 (2x - 1)) + G(y, g, 2x - 1)) + 1) / 2,  g = d mean_b F(x)_y / dx

One step, as the official TF code (sec. 5.2): one clean forward gives the gradient image g (kept in
the graph unless ``detach_grad_image``: the classifier update then has a second-order path through
it, as in TF); one forward of G and of F(x_adv) gives L_F = mean CE(F(x_adv), y) and
L_G = -L_F + c_L mean_b sum_pixels p^2 (the penalty is on the pixel perturbation p = x_adv - x);
grad_theta L_F and grad_phi L_G are both taken from that graph before either update (simultaneous,
not alternating); Adam steps both (one Adam over two parameter groups keeps per-parameter state,
as two instances would); then an EMA (0.998) of every weight of both networks. Epoch test accuracy,
epoch checkpoints and the final checkpoint are the EMA weights, and so is the saved generator.

No eps-ball: c_L alone sets the perturbation size (the strength knob: on CIFAR the paper finds that a
smaller c_L gives larger perturbations, less benign accuracy and more robustness; on the embedded
MNIST the robustness does not follow c_L, see the README's seeds-b measurements)."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import PlainValidator
from pydantic.dataclasses import dataclass
from torch import nn
from torch.nn import functional as F

from attacks.base import isolated_global_rng
from bench.core.params import PARAMS_CONFIG, Flag, NonNegativeReal, PositiveInt, number
from bench.datasets import Dataset
from bench.models import build_model
from bench.models.learned_attackers import class_probability_gradient, pgn_adversarial
from defenses.base import BatchContext, BatchOutput, EpochContext, Trainer, seed_from
from defenses.ema import WeightAverage
from defenses.registry import register_defense


@dataclass(config=PARAMS_CONFIG)
class PGNParams:
    #: Weight of the squared-L2 penalty on the generator's pixel perturbation (the strength knob;
    #: 50 in the paper's tables, 70 in the code).
    c_L: NonNegativeReal = 50.0
    #: Detach the gradient image (no second-order path into the classifier update); the official
    #: code keeps the path (docs/defense-specs.md sec. 9, item 11).
    detach_grad_image: Flag = False
    #: EMA decay of both networks' weights, in [0, 1).
    ema_decay: Annotated[float, PlainValidator(number(ge=0, lt=1))] = 0.998
    #: Generator conv channels (128 in the paper) and first dense layer (1024).
    generator_width: PositiveInt = 128
    generator_hidden: PositiveInt = 1024


@register_defense("pgn", strength="c_L", paper="seed 000 (PGN), eq. 4 and sec. 3", aux=("generator",))
class PerturbationGeneratorTraining(Trainer):
    """Classifier and generator trained together from the same forward pass; EMA weights kept."""

    name = "pgn"
    Params = PGNParams

    def __init__(self, common, params: PGNParams) -> None:
        super().__init__(common, params)
        self.average: WeightAverage | None = None
        self._l2_sum, self._l2_count = 0.0, 0

    def setup(self, model: nn.Module, data: Dataset, device: torch.device,
              generator: torch.Generator) -> None:
        arch_params = {"width": self.params.generator_width, "hidden": self.params.generator_hidden,
                       "grad_batch": self.common.batch_size}
        with isolated_global_rng(device, seed_from(generator)):
            network = build_model("pgn-generator", data.input_shape, data.num_classes, data.channel_mean,
                                  data.channel_std, **arch_params)
        self.aux = {"generator": network.to(device)}
        self.aux_arch = {"generator": ("pgn-generator", arch_params)}
        self.average = WeightAverage({"classifier": model, **self.aux}, self.params.ema_decay)

    def _averaged(self) -> WeightAverage:
        if self.average is None:
            raise RuntimeError("pgn: setup() has not run")
        return self.average

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   ctx: BatchContext) -> BatchOutput:
        """L_F (the classifier's loss); ``train_batch`` also builds L_G from the same graph."""
        return self._losses(model, x, y, ctx)[0]

    def _losses(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                ctx: BatchContext) -> tuple[BatchOutput, torch.Tensor]:
        generator = self.aux["generator"]
        grad = class_probability_gradient(model, x, y, len(y), create_graph=not self.params.detach_grad_image)
        x_adv = pgn_adversarial(generator, x, y, grad)
        adv_logits = model(x_adv)
        classifier_loss = F.cross_entropy(adv_logits, y)
        squared = (x_adv - x).flatten(1).pow(2).sum(1)
        penalty = squared.mean()
        self._l2_sum += float(squared.detach().sqrt().sum())
        self._l2_count += len(y)
        generator_loss = -classifier_loss + self.params.c_L * penalty
        ctx.counter.add(len(y), backward=True)   # clean forward, gradient image
        ctx.counter.add(len(y), backward=True)   # adversarial forward, both parameter backwards
        return BatchOutput(classifier_loss, None, adv_logits), generator_loss

    def train_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: BatchContext,
                    optimizer: torch.optim.Optimizer) -> BatchOutput:
        out, generator_loss = self._losses(model, x, y, ctx)
        self.check_finite(out.loss, ctx)
        classifier_params = [p for p in model.parameters() if p.requires_grad]
        generator_params = list(self.aux["generator"].parameters())
        classifier_grads = torch.autograd.grad(out.loss, classifier_params, retain_graph=True)
        generator_grads = torch.autograd.grad(generator_loss, generator_params)
        for param, grad in zip([*classifier_params, *generator_params], [*classifier_grads, *generator_grads]):
            param.grad = grad
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self._averaged().update({"classifier": model, **self.aux})
        return BatchOutput(out.loss.detach(), None, out.adv_logits.detach())

    def end_epoch(self, model: nn.Module, ctx: EpochContext) -> dict[str, Any]:
        """The mean L2 size of the generator's training perturbations this epoch."""
        mean = self._l2_sum / max(self._l2_count, 1)
        self._l2_sum, self._l2_count = 0.0, 0
        return {"generator_l2": round(mean, 6)}

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        return self._averaged().shadows["classifier"]

    def finish(self, model: nn.Module) -> None:
        self._averaged().copy_to({"classifier": model, **self.aux})
