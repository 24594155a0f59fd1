"""Deep Defense (Yan, Guo & Zhang, NeurIPS 2018, eq. 4-6; docs/defense-specs.md sec. 3).

Fine-tunes a trained classifier with a regularizer built on an unrolled, differentiable DeepFool:

    L = mean_k CE(f(x_k), y_k)
        + (lambda / B) [ sum_{k in T} exp(-c ||Delta_k|| / ||x_k||) + sum_{k in F} exp(d ||Delta_k|| / ||x_k||) ]

T: examples the clean forward of this step classifies correctly; Delta is DeepFool-L2 from the label
to the nearest other class. F: misclassified ones; Delta moves them back to the true class (two
classes: the current prediction, re-read every iteration, and the label). Delta = (1 + overshoot)
r_tot after at most ``max_iter`` (5) iterations, each example stopping once fooled (for F: once
classified correctly). Gradients flow through the logit differences, the Jacobians (double
backprop: ``create_graph``) and the earlier steps, never through masks or the argmin; ||x|| is a
constant. R = exp as in the paper.

Deviations, documented: x and ||x|| are in [0, 1] pixel units (the paper's matconvnet inputs are
mean-subtracted 0-255; rho = ||Delta|| / ||x|| is invariant to the scale but not to the mean); for F
the logit difference and the Jacobian are both taken w.r.t. the current prediction (the reference
code mixes the previous prediction's logit with the new one's Jacobian). BatchNorm layers are kept
in eval mode and their parameters are not trained, as in the reference code."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic.dataclasses import dataclass as pydantic_dataclass
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from attacks.gradient import rowwise_input_gradients
from bench.core.params import PARAMS_CONFIG, NonNegativeReal, PositiveInt, PositiveReal
from bench.datasets import Dataset
from defenses.base import BatchContext, BatchOutput, Trainer
from defenses.registry import register_defense


def logits_and_jacobian(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, K) at ``x`` and all K input-gradient rows (B, K, *x.shape[1:]), differentiable
    w.r.t. the parameters and ``x`` (one forward, K backward passes batched with vmap)."""
    logits = model(x)
    return logits, rowwise_input_gradients(logits, x, create_graph=True)


@dataclass
class DeepFoolUnroll:
    """Result of the unrolled DeepFool: the perturbation (with graph) and its first-pass logits."""

    delta: torch.Tensor
    clean_logits: torch.Tensor
    correct: torch.Tensor
    iterations: int


def unrolled_deepfool(model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_iter: int, overshoot: float,
                      norm_eps: float) -> DeepFoolUnroll:
    """Differentiable DeepFool-L2 (docs/defense-specs.md sec. 3.2) for a whole batch, T and F together.

    Per iteration, on the still-active examples only: w_k = J_k - J_s, a_k = z_k - z_s with s the
    source class (the label for T, the current prediction for F); score_k = |a_k| / ||w_k + e||;
    k* = argmin over the candidates (all k != s for T, only the label for F);
    r = |a_k*| w_k* / ||w_k* + e||^2. An example stops once x + (1 + overshoot) r_tot is fooled
    (T) or classified correctly (F)."""
    x0 = x.detach().requires_grad_(True)
    r_total = torch.zeros_like(x0)
    todo = torch.arange(len(y), device=x.device)
    clean_logits, correct = None, torch.ones(len(y), dtype=torch.bool, device=x.device)
    iterations = 0
    for iteration in range(max_iter):
        logits, jacobian = logits_and_jacobian(model, (x0 + r_total)[todo])
        if clean_logits is None:
            clean_logits, correct = logits, logits.detach().argmax(1) == y
        labels, is_correct = y[todo], correct[todo]
        rows = torch.arange(len(todo), device=x.device)
        source = torch.where(is_correct, labels, logits.detach().argmax(1))
        candidates = torch.ones_like(logits, dtype=torch.bool).scatter(1, source[:, None], False)
        candidates = torch.where(is_correct[:, None], candidates, F.one_hot(labels, logits.shape[1]).bool())
        w = jacobian - jacobian[rows, source].unsqueeze(1)
        a = logits - logits.gather(1, source[:, None])
        with torch.no_grad():  # the choice of k* is not differentiated
            score = a.abs() / (w + norm_eps).flatten(2).norm(dim=2).clamp_min(1e-12)
            best = score.masked_fill(~candidates, float("inf")).argmin(dim=1)
        w_best = w[rows, best]
        w_norm = (w_best + norm_eps).flatten(1).norm(dim=1).clamp_min(1e-12)
        step = (a[rows, best].abs() / w_norm ** 2).view(-1, *[1] * (x.ndim - 1)) * w_best
        r_total = r_total.index_add(0, todo, step)
        iterations = iteration + 1
        with torch.no_grad():
            pred = model(x0[todo] + (1 + overshoot) * r_total[todo]).argmax(1)
        done = torch.where(is_correct, pred != labels, pred == labels)
        todo = todo[~done]
        if not todo.numel():
            break
    assert clean_logits is not None
    return DeepFoolUnroll((1 + overshoot) * r_total, clean_logits, correct, iterations)


def deep_defense_regularizer(unroll: DeepFoolUnroll, x: torch.Tensor, c: float, d: float) -> torch.Tensor:
    """sum_T exp(-c ||Delta|| / ||x||) + sum_F exp(d ||Delta|| / ||x||), not yet divided by B."""
    ratio = unroll.delta.flatten(1).norm(dim=1) / x.detach().flatten(1).norm(dim=1).clamp_min(1e-12)
    return torch.where(unroll.correct, torch.exp(-c * ratio), torch.exp(d * ratio)).sum()


@pydantic_dataclass(config=PARAMS_CONFIG)
class DeepDefenseParams:
    #: Weight of the regularizer (the strength knob), and the scales of the two exponentials.
    lam: NonNegativeReal = 15.0
    c: PositiveReal = 25.0
    d: PositiveReal = 5.0
    max_iter: PositiveInt = 5
    overshoot: NonNegativeReal = 0.02
    #: e added element-wise to w before its norm (5e-6 for MNIST, 1e-5 for CIFAR in the code).
    norm_eps: NonNegativeReal = 5e-6


@register_defense("deep-defense", strength="lam", paper="Yan, Guo & Zhang 2018, eq. 4-6")
class DeepDefense(Trainer):
    """Fine-tuning with the unrolled-DeepFool regularizer (needs ``init_from`` in a suite)."""

    name = "deep-defense"
    Params = DeepDefenseParams
    fine_tunes = True

    def __init__(self, common, params: DeepDefenseParams) -> None:
        super().__init__(common, params)

    def setup(self, model: nn.Module, data: Dataset, device: torch.device,
              generator: torch.Generator) -> None:
        """BatchNorm parameters are not trained (the optimizer skips frozen parameters)."""
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.requires_grad_(False)

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   ctx: BatchContext) -> BatchOutput:
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.eval()
        p = self.params
        unroll = unrolled_deepfool(model, x, y, p.max_iter, p.overshoot, p.norm_eps)
        k = unroll.clean_logits.shape[1]
        # Per iteration: a forward and K Jacobian backwards, then the stopping forward; the final
        # backward goes through every Jacobian again (double backprop), counted as 2K more.
        ctx.counter.forward += 2 * unroll.iterations * len(y)
        ctx.counter.backward += 3 * k * unroll.iterations * len(y)
        regularizer = deep_defense_regularizer(unroll, x, p.c, p.d)
        loss = F.cross_entropy(unroll.clean_logits, y) + p.lam * regularizer / len(y)
        return BatchOutput(loss, unroll.clean_logits)
