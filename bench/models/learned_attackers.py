"""Attacker networks trained beside a classifier, and how each one makes an adversarial image.

- ``pgn-generator``: the perturbation generator G(y, grad, x) of seed 000 (appendix A,
  docs/defense-specs.md sec. 5.2-5.3): dense layers from the one-hot label, two stride-2 up-convolutions
  with the label tiled in, concatenation with the gradient image and 2x - 1, a linear 3x3 conv;
  the adversarial image is x_adv = (tanh(atanh(0.999999 (2x - 1)) + G) + 1) / 2 (always in [0, 1]).
- ``l2l-attacker``: the learning-to-learn attacker g of seed 003 (Table 1, docs/defense-specs.md sec. 4.2,
  4.4): ``slim`` (stride-2 stem, two SN-GAN ResBlocks, a 4x4 up-convolution, a skip concatenation
  with the input, eps tanh(s out) with a learnable s = 5) or ``wide`` (four ResBlocks at full
  resolution, eps tanh(out)); ``naive`` sees x, ``grad`` sees [x, grad / max|grad|].

Both are registered models (so their checkpoints rebuild like any other), with a ``width``
multiplier on every hidden channel count for CPU budgets (1 = the papers' networks). The rollouts
``pgn_adversarial`` and ``l2l_adversarial`` are shared by the trainers (``defenses.pgn``,
``defenses.l2l``) and the attacks that replay a trained attacker (``attacks.learned``)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from bench.models.base import register_model

#: seed 000's factor inside atanh (atanh(+-1) is infinite).
TANH_SHRINK = 0.999999
LEAK = 0.2


def _he_normal(module: nn.Module) -> nn.Module:
    nn.init.kaiming_normal_(module.weight, a=0.0, nonlinearity="relu")
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return module


def _tile(onehot: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return onehot[:, :, None, None].expand(-1, -1, *like.shape[2:])


class PerturbationGenerator(nn.Module):
    """seed 000's G: label -> dense 1024 -> dense (H/4)(W/4)w -> upconv -> upconv -> [., grad, 2x-1]
    -> conv w -> conv C (linear). ``grad_batch`` is the training minibatch size B: the gradient
    image it was trained on is d mean_b F(x)_y / dx, so each example's gradient carries 1/B."""

    def __init__(self, channels: int, height: int, width_px: int, num_classes: int, width: int = 128,
                 hidden: int = 1024, grad_batch: int = 128) -> None:
        super().__init__()
        if height % 4 or width_px % 4:
            raise ValueError(f"pgn-generator needs image sides divisible by 4, got {height}x{width_px}")
        if width < 1 or hidden < 1 or grad_batch < 1:
            raise ValueError(f"need width, hidden, grad_batch >= 1, got {width}, {hidden}, {grad_batch}")
        self.num_classes, self.grad_batch = num_classes, grad_batch
        self.seed_shape = (width, height // 4, width_px // 4)
        k = num_classes
        self.dense1 = _he_normal(nn.Linear(k, hidden))
        self.dense2 = _he_normal(nn.Linear(hidden + k, math.prod(self.seed_shape)))
        self.up1 = _he_normal(nn.ConvTranspose2d(width + k, width, 3, stride=2, padding=1, output_padding=1))
        self.up2 = _he_normal(nn.ConvTranspose2d(width + k, width, 3, stride=2, padding=1, output_padding=1))
        self.mix = _he_normal(nn.Conv2d(width + 2 * channels, width, 3, padding=1))
        self.out = _he_normal(nn.Conv2d(width, channels, 3, padding=1))

    def forward(self, y: torch.Tensor, grad: torch.Tensor, x_signed: torch.Tensor) -> torch.Tensor:
        """Unbounded tanh-space offsets l (B, C, H, W) from labels, gradient image and 2x - 1."""
        onehot = F.one_hot(y, self.num_classes).to(grad.dtype)
        h = F.leaky_relu(self.dense1(onehot), LEAK)
        h = F.leaky_relu(self.dense2(torch.cat([h, onehot], 1)), LEAK).view(-1, *self.seed_shape)
        h = F.leaky_relu(self.up1(torch.cat([h, _tile(onehot, h)], 1)), LEAK)
        h = F.leaky_relu(self.up2(torch.cat([h, _tile(onehot, h)], 1)), LEAK)
        h = F.leaky_relu(self.mix(torch.cat([h, grad, x_signed], 1)), LEAK)
        return self.out(h)


@register_model("pgn-generator", paper="seed 000 appendix A (generator)", family="attacker")
def pgn_generator(input_shape: Sequence[int], num_classes: int, mean: Sequence[float], std: Sequence[float],
                  width: int = 128, hidden: int = 1024, grad_batch: int = 128) -> nn.Module:
    """PGN's perturbation generator (``width`` conv channels, 128 in the paper)."""
    return PerturbationGenerator(input_shape[0], input_shape[1], input_shape[2], num_classes, width, hidden,
                                 grad_batch)


def class_probability_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int,
                               create_graph: bool) -> torch.Tensor:
    """seed 000's gradient image: d (sum_b softmax(F(x_b))_{y_b} / ``batch``) / dx; with
    ``create_graph`` it stays differentiable w.r.t. the classifier (the official second-order path)."""
    x_in = x.detach().requires_grad_(True)
    probability = F.softmax(model(x_in), dim=1).gather(1, y[:, None]).sum() / batch
    (grad,) = torch.autograd.grad(probability, x_in, create_graph=create_graph)
    return grad


def pgn_adversarial(generator: PerturbationGenerator, x: torch.Tensor, y: torch.Tensor,
                    grad: torch.Tensor) -> torch.Tensor:
    """x_adv = (tanh(atanh(0.999999 (2x - 1)) + G(y, grad, 2x - 1)) + 1) / 2 (seed 000 sec. 3)."""
    signed = 2 * x - 1
    offsets = generator(y, grad, signed)
    return 0.5 * (torch.tanh(torch.atanh(TANH_SHRINK * signed) + offsets) + 1)


class _ResBlock(nn.Module):
    """SN-GAN generator block without upsampling: BN-PReLU-conv3-BN-PReLU-conv3 (BN without affine)
    plus a 1x1 shortcut when the width changes; Xavier-uniform, gain sqrt(2) on the branch."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(nn.BatchNorm2d(cin, affine=False), nn.PReLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                    nn.BatchNorm2d(cout, affine=False), nn.PReLU(),
                                    nn.Conv2d(cout, cout, 3, padding=1))
        for conv in (self.branch[2], self.branch[5]):
            nn.init.xavier_uniform_(conv.weight, gain=math.sqrt(2))
            nn.init.zeros_(conv.bias)
        self.shortcut: nn.Module = nn.Identity()
        if cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1)
            nn.init.xavier_uniform_(self.shortcut.weight, gain=1.0)
            nn.init.zeros_(self.shortcut.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.branch(x)


L2L_VARIANTS = ("naive", "grad", "2step")


class L2LAttacker(nn.Module):
    """seed 003's attacker g: its output is a perturbation in the Linf ball of radius ``eps``."""

    def __init__(self, channels: int, eps: float, variant: str = "grad", size: str = "slim",
                 width: float = 1.0) -> None:
        super().__init__()
        if variant not in L2L_VARIANTS or size not in ("slim", "wide") or eps <= 0 or width <= 0:
            raise ValueError(f"l2l-attacker: need variant in {L2L_VARIANTS}, size 'slim' or 'wide', eps > 0, "
                             f"width > 0; got {variant!r}, {size!r}, {eps}, {width}")
        self.eps, self.variant, self.size = float(eps), variant, size
        inputs = channels if variant == "naive" else 2 * channels
        c = [max(1, round(n * width)) for n in (64, 128, 256)]
        if size == "slim":
            self.body = nn.Sequential(
                nn.Conv2d(inputs, c[1], 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c[1], eps=1e-3), nn.ReLU(),
                _ResBlock(c[1], c[2]), _ResBlock(c[2], c[1]), nn.BatchNorm2d(c[1], affine=False),
                nn.ConvTranspose2d(c[1], 16, 4, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.head = nn.Conv2d(16 + inputs, channels, 3, padding=1, bias=False)
            self.scale = nn.Parameter(torch.tensor(5.0))
        else:
            self.body = nn.Sequential(
                nn.Conv2d(inputs, c[0], 3, padding=1), nn.BatchNorm2d(c[0]), nn.ReLU(),
                _ResBlock(c[0], c[1]), _ResBlock(c[1], c[2]), _ResBlock(c[2], c[1]), _ResBlock(c[1], c[0]),
                nn.BatchNorm2d(c[0], affine=False))
            self.head = nn.Conv2d(c[0], channels, 3, padding=1)
            self.register_parameter("scale", None)

    @property
    def uses_gradient(self) -> bool:
        return self.variant != "naive"

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        features = self.body(inputs)
        if self.scale is not None:  # slim: skip connection and the learnable tanh slope
            return self.eps * torch.tanh(self.scale * self.head(torch.cat([features, inputs], 1)))
        return self.eps * torch.tanh(self.head(features))


@register_model("l2l-attacker", paper="seed 003 Table 1 (attacker networks)", family="attacker")
def l2l_attacker(input_shape: Sequence[int], num_classes: int, mean: Sequence[float], std: Sequence[float],
                 eps: float = 0.3, variant: str = "grad", size: str = "slim", width: float = 1.0) -> nn.Module:
    """L2L's attacker: ``variant`` naive / grad / 2step, ``size`` slim / wide (``width`` scales channels)."""
    return L2LAttacker(input_shape[0], eps, variant, size, width)


def normalized_loss_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d CE(f(x), y) / dx divided by its largest magnitude over the whole batch (one scalar, as the
    reference code does: this couples the examples of a batch), detached."""
    x_in = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_in), y, reduction="sum"), x_in)
    return grad / grad.abs().amax().clamp_min(1e-12)


def l2l_adversarial(attacker: L2LAttacker, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x_adv of seed 003 (docs/defense-specs.md sec. 4.2). naive: clamp(x + g(x)); grad: clamp(x + g([x, u]));
    2step: delta0 = g([x, u(x)]), x1 = clamp(x + delta0), delta = clamp(delta0 + g([x1, u(x1)]), -eps, eps),
    x_adv = clamp(x + delta). Differentiable w.r.t. the attacker (x1 is not detached; u is)."""
    if not attacker.uses_gradient:
        return (x + attacker(x)).clamp(0, 1)
    delta = attacker(torch.cat([x, normalized_loss_gradient(model, x, y)], 1))
    if attacker.variant == "2step":
        x1 = (x + delta).clamp(0, 1)
        delta = (delta + attacker(torch.cat([x1, normalized_loss_gradient(model, x1, y)], 1)))
        delta = delta.clamp(-attacker.eps, attacker.eps)
    return (x + delta).clamp(0, 1)
