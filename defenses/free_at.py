"""Free adversarial training (Shafahi et al., NeurIPS 2019, Algorithm 1; docs/defense-specs.md sec. 7).

Each minibatch is replayed ``replays`` (m) times. Every replay does one forward and one backward on
x + delta that yield both the parameter gradient (one optimizer step) and the input gradient, which
updates the perturbation:

    delta <- clip(delta + eps * sign(grad_delta), -eps, eps),  then x + delta clipped to [0, 1].

delta persists across replays and across minibatches (warm start). Compute per epoch is m times a
standard epoch, so a nominal budget of E epochs is E / m epochs here: set ``epochs`` accordingly."""

from __future__ import annotations

import torch
from pydantic.dataclasses import dataclass
from torch import nn
from torch.nn import functional as F

from bench.core.params import PARAMS_CONFIG, PositiveInt, PositiveReal
from bench.datasets import Dataset
from bench.errors import ConfigError
from defenses.base import BatchContext, BatchOutput, Trainer
from defenses.registry import register_defense


@dataclass(config=PARAMS_CONFIG)
class FreeATParams:
    eps: PositiveReal = 0.3
    #: m, the number of replays of each minibatch.
    replays: PositiveInt = 8
    #: The perturbation step; None means eps (the paper's choice).
    step_size: PositiveReal | None = None


@register_defense("free-at", strength="eps", paper="Shafahi et al. 2019, Algorithm 1")
class FreeAdversarialTraining(Trainer):
    """m replays per minibatch, one shared forward/backward per replay, warm-started delta."""

    name = "free-at"
    Params = FreeATParams

    def __init__(self, common, params: FreeATParams) -> None:
        super().__init__(common, params)
        if params.eps <= 0 or params.replays < 1 or (params.step_size is not None and params.step_size <= 0):
            raise ConfigError(f"free-at: need eps > 0, replays >= 1, step_size > 0 or None; got {params}")
        self.delta: torch.Tensor | None = None

    def setup(self, model: nn.Module, data: Dataset, device: torch.device,
              generator: torch.Generator) -> None:
        shape = (self.common.batch_size, *data.input_shape)
        self.delta = torch.zeros(shape, device=device)

    def replay(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               ctx: BatchContext) -> tuple[BatchOutput, torch.Tensor]:
        """The loss at the current perturbation and the perturbation leaf it was computed from."""
        assert self.delta is not None, "setup() creates the perturbation buffer"
        delta = self.delta[:len(y)].clone().requires_grad_(True)
        logits = model((x + delta).clamp(0, 1))
        ctx.counter.add(len(y), backward=True)
        return BatchOutput(F.cross_entropy(logits, y), None, logits), delta

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   ctx: BatchContext) -> BatchOutput:
        """One replay's loss; ``train_batch`` runs the m replays."""
        return self.replay(model, x, y, ctx)[0]

    def train_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: BatchContext,
                    optimizer: torch.optim.Optimizer) -> BatchOutput:
        p = self.params
        step = p.eps if p.step_size is None else p.step_size
        first = None
        for _ in range(p.replays):
            out, delta = self.replay(model, x, y, ctx)
            self.check_finite(out.loss, ctx)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()          # one backward: parameter and input gradients together
            optimizer.step()
            self.after_step(model, ctx)
            with torch.no_grad():
                moved = (delta + step * delta.grad.sign()).clamp(-p.eps, p.eps)
                self.delta[:len(y)] = (x + moved).clamp(0, 1) - x
            if first is None:
                first = out
        assert first is not None
        return first  # the first replay's accuracy: the model before this minibatch's updates
