"""Per-norm hooks of the generic gradient loop: step direction, projection, random start, size."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from bench.enums import Norm
from bench.errors import ConfigError

_TINY = 1e-12


def _per_example(values: torch.Tensor, ndim: int) -> torch.Tensor:
    return values.view(-1, *([1] * (ndim - 1)))


class NormHooks(ABC):
    """What the gradient loop needs to know about a threat-model norm."""

    norm: Norm

    @abstractmethod
    def size(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-example norm of ``delta``."""

    @abstractmethod
    def steepest_direction(self, grad: torch.Tensor) -> torch.Tensor:
        """Unit-norm direction maximizing the linearized loss (sign for Linf, g/||g|| for L2)."""

    @abstractmethod
    def project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        """Euclidean projection of ``delta`` onto the eps-ball of this norm."""

    @abstractmethod
    def random_start(self, like: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
        """A random point of the eps-ball (Madry et al. 2018's random start)."""


class LinfHooks(NormHooks):
    norm = Norm.LINF

    def size(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).abs().amax(dim=1)

    def steepest_direction(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sign()

    def project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        return delta.clamp(-eps, eps)

    def random_start(self, like: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
        uniform = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)
        return (2 * uniform - 1) * eps


class L2Hooks(NormHooks):
    norm = Norm.L2

    def size(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).norm(dim=1)

    def steepest_direction(self, grad: torch.Tensor) -> torch.Tensor:
        return grad / _per_example(self.size(grad).clamp_min(_TINY), grad.ndim)

    def project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        factor = (eps / self.size(delta).clamp_min(_TINY)).clamp(max=1.0)
        return delta * _per_example(factor, delta.ndim)

    def random_start(self, like: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
        """Uniform in the L2 ball: Gaussian direction, radius eps * U^(1/d)."""
        gauss = torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
        direction = gauss / _per_example(self.size(gauss).clamp_min(_TINY), like.ndim)
        dims = like[0].numel()
        radius = torch.rand(like.shape[0], generator=generator, device=like.device,
                            dtype=like.dtype) ** (1.0 / dims)
        return direction * _per_example(radius * eps, like.ndim)


_HOOKS: dict[Norm, NormHooks] = {Norm.LINF: LinfHooks(), Norm.L2: L2Hooks()}


def hooks_for(norm: Norm | str) -> NormHooks:
    """The hooks of a supported norm; a clear error for the others."""
    parsed = Norm.parse(norm)
    if parsed not in _HOOKS:
        raise ConfigError(f"norm {parsed.value!r} is not supported by gradient attacks; "
                          f"expected one of {[n.value for n in _HOOKS]}")
    return _HOOKS[parsed]
