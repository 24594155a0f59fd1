"""Fast adversarial training (Wong, Rice & Kolter, ICLR 2020; docs/defense-specs.md sec. 7).

FGSM from a uniform random start: delta ~ U(-eps, eps) (x + delta clipped to [0, 1]), one step of
size alpha (1.25 eps by default) along sign(grad), projection onto the eps-ball and the box, then
train on CE(f(x + delta)) only. Use it with ``lr_schedule: cyclic`` as the paper does.

Catastrophic-overfitting early stop (the reference code's ``--early-stop``): after every epoch,
PGD-5 (step eps/4, one random start) on one fixed training minibatch of ``batch_size`` examples (or
``probe_size``): by default drawn once by a fixed permutation (``probe_sample: random``), as the
reference code probes its shuffled loader's first minibatch; ``first`` takes the split's first
examples, which on a class-sorted split (mnist5k) are one class only (issue 23: all zeros, whose
robustness hid the collapse of the others); if its robust accuracy drops by more than ``collapse_drop``
(0.2) from the previous epoch, training stops and the previous epoch's weights are kept.
``collapse_reference: best`` measures the drop from the best probe so far and keeps that epoch's
weights instead: on small training sets the collapse can build up over several epochs, each
dropping less than 0.2, which the reference rule never sees."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic.dataclasses import dataclass
from torch import nn
from torch.nn import functional as F

from attacks.gradient import gradient_ascent
from attacks.norms import hooks_for
from bench.core.params import PARAMS_CONFIG, Flag, PositiveInt, PositiveReal, Real
from bench.datasets import Dataset
from bench.errors import ConfigError
from defenses.base import BatchContext, BatchOutput, EpochContext, Trainer
from defenses.registry import register_defense


def probe_indices(n_train: int, size: int, sample: str) -> torch.Tensor:
    """Indices of the collapse probe's fixed training minibatch: the first ``size`` examples
    (``first``), or ``size`` examples of a permutation drawn from its own generator with seed 0
    (``random``: the same minibatch every epoch, and the training's random stream left untouched)."""
    if sample == "first":
        return torch.arange(min(size, n_train))
    return torch.randperm(n_train, generator=torch.Generator().manual_seed(0))[:size]


def pgd_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
              generator: torch.Generator, ctx: EpochContext | None = None) -> float:
    """Robust accuracy of ``model`` (eval mode, restored) under Linf PGD with step eps/4 from one
    random start: the collapse probe of Wong et al.'s early stop. ``x`` and ``y`` may be in host
    memory (the training split is): they are copied to the model's device."""
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    was_training = model.training
    model.eval()
    counter = ctx.counter if ctx is not None else None
    x_adv = gradient_ascent(model, x, y, hooks=hooks_for("linf"), eps=eps, steps=steps, step_size=eps / 4,
                            random_start=True, generator=generator, counter=counter)
    with torch.no_grad():
        robust = float((model(x_adv).argmax(1) == y).float().mean())
    if counter is not None:
        counter.add(len(y), backward=False)
    model.train(was_training)
    return robust


@dataclass(config=PARAMS_CONFIG)
class FastATParams:
    eps: PositiveReal = 0.3
    #: FGSM step; None means 1.25 eps (the paper's alpha).
    alpha: PositiveReal | None = None
    early_stop: Flag = True
    #: Absolute drop of the probe's robust accuracy that counts as a collapse.
    collapse_drop: Real = 0.2
    probe_steps: PositiveInt = 5
    #: Training images the probe attacks (the first ones of the split); None: one minibatch, as
    #: the reference code. A larger probe makes the drop test less noisy on small minibatches.
    probe_size: PositiveInt | None = None
    #: "previous" (the reference code): a drop from the previous epoch's probe; "best": a drop
    #: from the best probe so far, restoring that epoch.
    collapse_reference: Literal["previous", "best"] = "previous"
    #: "random": a fixed minibatch drawn by a seed-0 permutation (the reference code's shuffled
    #: first minibatch); "first": the split's first examples (one class on a class-sorted split).
    probe_sample: Literal["random", "first"] = "random"


@register_defense("fast-at", strength="eps", paper="Wong, Rice & Kolter 2020")
class FastAdversarialTraining(Trainer):
    """FGSM with random start and step 1.25 eps, with the catastrophic-overfitting early stop."""

    name = "fast-at"
    Params = FastATParams
    detects_collapse = True

    def __init__(self, common, params: FastATParams) -> None:
        super().__init__(common, params)
        if (params.eps <= 0 or (params.alpha is not None and params.alpha <= 0) or params.probe_steps < 1
                or (params.probe_size is not None and params.probe_size < 1)):
            raise ConfigError(f"fast-at: need eps > 0, alpha > 0 or None, probe_steps >= 1, probe_size "
                              f">= 1 or None; got {params}")
        if params.collapse_reference not in ("previous", "best"):
            raise ConfigError(f"fast-at: collapse_reference must be 'previous' or 'best', got "
                              f"{params.collapse_reference!r}")
        self.hooks = hooks_for("linf")
        self.reference_probe: float | None = None

    def setup(self, model: nn.Module, data: Dataset, device: torch.device,
              generator: torch.Generator) -> None:
        self.reference_probe = None

    @property
    def alpha(self) -> float:
        return 1.25 * self.params.eps if self.params.alpha is None else self.params.alpha

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   ctx: BatchContext) -> BatchOutput:
        x_adv = gradient_ascent(model, x, y, hooks=self.hooks, eps=self.params.eps, steps=1,
                                step_size=self.alpha, random_start=True, generator=ctx.generator,
                                counter=ctx.counter)
        adv_logits = model(x_adv)
        ctx.counter.add(len(y), backward=True)
        return BatchOutput(F.cross_entropy(adv_logits, y), None, adv_logits)

    def end_epoch(self, model: nn.Module, ctx: EpochContext) -> dict[str, Any]:
        if not self.params.early_stop:
            return {}
        rows = probe_indices(len(ctx.y_train), self.params.probe_size or self.common.batch_size,
                             self.params.probe_sample)
        probe = pgd_check(model, ctx.x_train[rows], ctx.y_train[rows], self.params.eps, self.params.probe_steps,
                          ctx.generator, ctx)
        reference = self.reference_probe
        collapsed = reference is not None and probe < reference - self.params.collapse_drop
        if self.params.collapse_reference == "best":
            keep = reference is None or probe >= reference
        else:
            keep = not collapsed
        if keep:
            self.reference_probe = probe
        return {"probe_pgd_robust_accuracy": probe, "collapsed": collapsed, "keep_weights": keep}
