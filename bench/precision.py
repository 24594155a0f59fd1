"""Reduced precision and compilation of a model for attacks and training, and the fidelity guard
that keeps a low-precision evaluation only where it is proven no weaker than fp32.

Autocast runs the model's matrix products and convolutions in bf16/fp16 while the input, its
gradient and the logits handed to the attack stay fp32 (the wrapper casts the logits back), so no
attack changes: a step direction from ``x.grad`` is computed in fp32 on an fp32 iterate.
Low-precision arithmetic can flatten a model's gradients (underflow in fp16, 8 mantissa bits in
bf16) and so make an attack weaker; the guard (``fidelity_guard``) measures exactly that."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import torch
from torch import nn


class Precision(str, Enum):
    """Arithmetic the model runs in during attacks and training."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"

    @property
    def dtype(self) -> torch.dtype:
        return {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}[self]


class AutocastModel(nn.Module):
    """``model`` run under ``torch.autocast`` in ``precision``, returning fp32 logits. The wrapped
    model is a submodule, so ``train()``/``eval()`` reach it; its state dict is the model's under
    the ``model.`` prefix (save the inner model, not this wrapper)."""

    def __init__(self, model: nn.Module, precision: Precision) -> None:
        super().__init__()
        self.model, self.precision = model, Precision(precision)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, dtype=self.precision.dtype):
            out = self.model(x)
        return out.float()


def unwrap(model: nn.Module) -> nn.Module:
    """The model ``prepare`` wrapped (what is saved), or ``model`` itself."""
    model = getattr(model, "_orig_mod", model)   # torch.compile's wrapper
    return model.model if isinstance(model, AutocastModel) else model


def is_convolutional(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def prepare(model: nn.Module, precision: Precision = Precision.FP32, compile: bool = False) -> nn.Module:
    """The module attacks (or a trainer) should call: ``model`` itself in fp32 without compilation;
    else an autocast wrapper, with a convolutional model's weights in ``channels_last`` (the fast
    layout for reduced-precision convolutions; it changes the layout of the model's own parameters,
    not their values), optionally ``torch.compile``d (graphs are reused across batches of equal
    shape). Only models advarena built or loaded itself are passed here, never a caller's."""
    precision = Precision(precision)
    if precision is Precision.FP32 and not compile:
        return model
    if precision is not Precision.FP32 and is_convolutional(model):
        model = model.to(memory_format=torch.channels_last)
    prepared: nn.Module = AutocastModel(model, precision) if precision is not Precision.FP32 else model
    return torch.compile(prepared, dynamic=False) if compile else prepared


#: Share of the eval subset the guard attacks again in fp32, and the largest tolerated excess of
#: low-precision robust accuracy over fp32's on it, in accuracy points.
GUARD_FRACTION = 0.10
GUARD_TOLERANCE_POINTS = 0.5


@dataclass(frozen=True)
class GuardResult:
    """The fidelity guard's measurement, stored with the evaluation."""

    attack_id: str
    n_examples: int
    low_precision: str
    low_precision_robust_accuracy: float
    fp32_robust_accuracy: float
    tolerance_points: float
    passed: bool

    def record(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.attack_id} on {self.n_examples} images: {self.low_precision} robust accuracy "
                f"{100 * self.low_precision_robust_accuracy:.1f}% vs fp32 {100 * self.fp32_robust_accuracy:.1f}% "
                f"(tolerance {self.tolerance_points:g} points): {'passed' if self.passed else 'failed'}")


def guard_size(n_examples: int, fraction: float = GUARD_FRACTION) -> int:
    """Images on which the guard reruns the attack: ``fraction`` of the subset, at least one."""
    return max(1, math.ceil(fraction * n_examples))


def judge(attack_id: str, precision: Precision, low_robust: torch.Tensor, fp32_robust: torch.Tensor,
          tolerance_points: float = GUARD_TOLERANCE_POINTS) -> GuardResult:
    """Compare robust-point masks of the same attack on the same images in ``precision`` and fp32:
    the low-precision result stands unless its robust accuracy exceeds fp32's by more than the
    tolerance (a weaker attack reads as a more robust model)."""
    low, high = float(low_robust.float().mean()), float(fp32_robust.float().mean())
    return GuardResult(attack_id, int(low_robust.numel()), Precision(precision).value, low, high, tolerance_points,
                       passed=100 * (low - high) <= tolerance_points)
