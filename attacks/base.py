"""The attack contract (DESIGN.md, "Contracts"): ``attack(model, x, y) -> AttackResult``.

The base class's ``__call__`` does the shared bookkeeping, foolbox-3 style: input checks, eval
mode (restored afterwards), seeding, the final check that ``x_adv`` is in [0, 1] and inside the
eps-ball, success recomputed with one clean forward, norms and pass counting. Subclasses implement
only ``perturb``."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.enums import Norm
from bench.errors import ConfigError

BOX_TOLERANCE = 1e-6
BALL_TOLERANCE = 1e-5


class AttackCheckError(AssertionError):
    """An attack returned an output that breaks the contract (a bug in the attack)."""


@dataclass
class PassCounter:
    """Forward and backward passes spent, counted in images (a batch of 250 is 250 passes)."""

    forward: int = 0
    backward: int = 0

    def add(self, images: int, backward: bool) -> None:
        self.forward += images
        if backward:
            self.backward += images


@dataclass
class AttackResult:
    """Per-example outcome of one attack call on one batch."""

    x_adv: torch.Tensor
    success: torch.Tensor      # bool: the model misclassifies x_adv
    pred: torch.Tensor         # int64: the model's label for x_adv
    l2: torch.Tensor           # float: ||x_adv - x||_2 per example
    linf: torch.Tensor         # float: ||x_adv - x||_inf per example
    forward_passes: int
    backward_passes: int


def canonical_hash(payload: Any) -> str:
    """sha256 of the canonical JSON of ``payload`` (sorted keys): the content key of a config."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def check_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise a clear error for inputs that break the image/label contract."""
    if not torch.is_tensor(x) or not x.is_floating_point() or x.ndim < 2:
        raise ConfigError(f"images must be a floating tensor (N, C, H, W), got "
                          f"{getattr(x, 'dtype', type(x))} with shape {tuple(getattr(x, 'shape', ()))}")
    if not torch.is_tensor(y) or y.dtype != torch.int64 or y.shape != (x.shape[0],):
        raise ConfigError(f"labels must be int64 of shape ({x.shape[0]},), got "
                          f"{getattr(y, 'dtype', type(y))} {tuple(getattr(y, 'shape', ()))}")
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise ConfigError(f"pixels must lie in [0, 1], got [{float(x.min()):.4g}, {float(x.max()):.4g}]")
    param = next(model.parameters(), None)
    if param is not None and (param.device != x.device or y.device != x.device):
        raise ConfigError(f"model is on {param.device} but images on {x.device} and labels on "
                          f"{y.device}; move them to the model's device (attacks never move a model)")


class Attack(ABC):
    """Configured once (threat model, steps, loss, seed), then called on batches."""

    name: str = "attack"
    #: None for minimum-norm attacks; the eps of a bounded one.
    norm: Norm | None = None
    eps: float | None = None

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    @abstractmethod
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator, counter: PassCounter) -> torch.Tensor:
        """Return x_adv for a model already in eval mode; count every pass in ``counter``."""

    def config(self) -> dict[str, Any]:
        """Every parameter that changes the result (hashed into the attack's content key)."""
        return {"name": self.name, "seed": self.seed,
                "norm": self.norm.value if self.norm else None, "eps": self.eps}

    def key(self) -> str:
        return canonical_hash(self.config())

    def make_generator(self, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator | None = None) -> AttackResult:
        check_inputs(model, x, y)
        x = x.detach()
        generator = generator if generator is not None else self.make_generator(x.device)
        counter = PassCounter()
        was_training = model.training
        model.eval()
        try:
            x_adv = self.perturb(model, x, y, generator, counter).detach()
            self._check_output(x, x_adv)
            with torch.no_grad():
                pred = model(x_adv).argmax(dim=1)
            counter.add(x.shape[0], backward=False)
        finally:
            model.train(was_training)
        delta = (x_adv - x).flatten(1)
        return AttackResult(x_adv=x_adv, success=pred != y, pred=pred, l2=delta.norm(dim=1),
                            linf=delta.abs().amax(dim=1), forward_passes=counter.forward,
                            backward_passes=counter.backward)

    def _check_output(self, x: torch.Tensor, x_adv: torch.Tensor) -> None:
        if x_adv.shape != x.shape or x_adv.dtype != x.dtype:
            raise AttackCheckError(f"{self.name}: x_adv has shape {tuple(x_adv.shape)} {x_adv.dtype}, "
                                   f"expected {tuple(x.shape)} {x.dtype}")
        if not torch.isfinite(x_adv).all():
            raise AttackCheckError(f"{self.name}: x_adv holds NaN or inf")
        if float(x_adv.min()) < -BOX_TOLERANCE or float(x_adv.max()) > 1 + BOX_TOLERANCE:
            raise AttackCheckError(f"{self.name}: x_adv leaves [0, 1]")
        if self.norm is not None and self.eps is not None:
            from attacks.norms import hooks_for

            size = hooks_for(self.norm).size(x_adv - x)
            worst = float(size.max()) if size.numel() else 0.0
            if worst > self.eps * (1 + BALL_TOLERANCE) + BOX_TOLERANCE:
                raise AttackCheckError(f"{self.name}: perturbation of {self.norm.value} norm {worst:.6g} "
                                       f"exceeds eps {self.eps}")
