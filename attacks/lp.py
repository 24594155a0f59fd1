"""Lp geometry with a per-example radius, for the minimum-norm attacks: sizes, dual norms,
projections onto Lp balls and the largest perturbation the [0, 1] box allows.

The L1 projection is the sort-based Euclidean projection onto the simplex of Duchi et al.
(ICML 2008, Fig. 1) applied to |v|, batched: one sort and one cumulative sum, no loop over
examples."""

from __future__ import annotations

import torch

from bench.enums import Norm

_TINY = 1e-12


def per_example(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B,) viewed as (B, 1, ..., 1) to broadcast against a (B, *shape) tensor of ``ndim`` dims."""
    return values.view(-1, *([1] * (ndim - 1)))


def size(delta: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Per-example Lp norm of ``delta`` (B, *shape)."""
    flat = delta.flatten(1)
    if norm is Norm.LINF:
        return flat.abs().amax(dim=1)
    if norm is Norm.L2:
        return flat.norm(dim=1)
    return flat.abs().sum(dim=1)


def dual_size(grad: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Per-example dual norm ||grad||_q (1/p + 1/q = 1): the factor that turns a linearized margin
    into a distance, margin / ||grad||_q (Pintor et al. 2021, eq. 6)."""
    dual = {Norm.LINF: Norm.L1, Norm.L2: Norm.L2, Norm.L1: Norm.LINF}[norm]
    return size(grad, dual)


def project(delta: torch.Tensor, radius: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Euclidean projection of each ``delta[i]`` onto the ``norm`` ball of radius ``radius[i]``."""
    if norm is Norm.LINF:
        bound = per_example(radius, delta.ndim)
        return torch.maximum(torch.minimum(delta, bound), -bound)
    if norm is Norm.L2:
        factor = (radius / size(delta, norm).clamp_min(_TINY)).clamp(max=1.0)
        return delta * per_example(factor, delta.ndim)
    return _project_l1(delta.flatten(1), radius).view_as(delta)


def _project_l1(v: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Duchi et al. 2008: w = sign(v) * max(|v| - theta, 0) with theta chosen so ||w||_1 = radius;
    rows already inside the ball are returned unchanged."""
    magnitude = v.abs()
    ordered = magnitude.sort(dim=1, descending=True).values
    cumulative = ordered.cumsum(dim=1)
    ranks = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    radius = radius.to(v.dtype)[:, None]
    positive = ordered - (cumulative - radius) / ranks > 0
    count = positive.sum(dim=1, keepdim=True).clamp_min(1)            # rho in Duchi et al.
    theta = (cumulative.gather(1, count - 1) - radius) / count.to(v.dtype)
    projected = v.sign() * (magnitude - theta).clamp_min(0)
    inside = magnitude.sum(dim=1, keepdim=True) <= radius
    return torch.where(inside, v, projected)


def box_limit(x: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The largest ``norm`` of any perturbation that keeps x + delta in [0, 1]: every pixel moved
    to the farther end of the box. No minimum-norm search needs a radius beyond it."""
    return size(torch.maximum(x, 1 - x), norm)
