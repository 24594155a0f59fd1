"""DeepFool (Moosavi-Dezfooli et al., CVPR 2016), batched.

Each iteration linearizes the classifier at the current point and steps to the nearest linearized
boundary among the candidate classes k (Alg. 2 for L2, Alg. 3 for Linf, with q the dual norm):

    w_k = grad f_k - grad f_y,  f'_k = f_k - f_y,  l = argmin_k |f'_k| / ||w_k||_q,
    r = (|f'_l| + 1e-4) / ||w_l||_q^q * w_l         (L2)
    r = (|f'_l| + 1e-4) / ||w_l||_1 * sign(w_l)     (Linf)

Perturbations accumulate in r_total and the overshoot is applied to the total, as in the paper's
reference code: x_adv = clip(x + (1 + overshoot) r_total, 0, 1). Iteration stops per example once
x_adv is misclassified. All candidate-class gradients of a batch come from one forward and one
batched backward (``is_grads_batched``), never a loop over examples or classes.

Two additions, both off in the registry defaults (the paper's algorithm) and switched on in the
shipped protocols: ``box_mask`` restricts the normals to box-feasible directions
(``box_feasible``), so a step is not clipped away at pixels already at 0 or 1 (most MNIST pixels;
per-step clipping is what makes torchattacks' DeepFool stall on the boundary); ``damping`` < 1
scales the first ``damped_steps`` steps (under-relaxation), so the iterates follow the curved
boundary of a ReLU network instead of jumping past its nearest part, which gives smaller
perturbations for about one more iteration (measured on the standard mnist-cnn, 250 images:
median L2 1.93 with both vs 2.01 without, and 2.0 for torchattacks on the points it fools)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attacks.base import Attack, PassCounter
from attacks.gradient import rowwise_input_gradients
from attacks.norms import hooks_for
from attacks.registry import register_attack
from bench.enums import Norm
from bench.errors import ConfigError

_TINY = 1e-12
_OVERSHOOT_MARGIN = 1e-4  # the reference code's "+ 1e-4" on the linearized distance


def candidate_classes(logits: torch.Tensor, y: torch.Tensor, candidates: int | None) -> torch.Tensor:
    """(B, K) class indices: column 0 is the label, then the other classes by decreasing logit
    (all of them when ``candidates`` is None, else the ``candidates - 1`` most likely)."""
    others = logits.detach().scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
    keep = logits.shape[1] - 1 if candidates is None else min(candidates - 1, logits.shape[1] - 1)
    return torch.cat([y[:, None], others[:, :keep]], dim=1)


def class_gradients(model: nn.Module, x: torch.Tensor, classes: torch.Tensor,
                    counter: PassCounter) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of ``classes`` (B, K) and their input gradients (B, K, *x.shape[1:]): one forward
    and K backward passes batched into one call."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    picked = logits.gather(1, classes)
    grads = rowwise_input_gradients(picked, x)
    counter.forward += x.shape[0]
    counter.backward += classes.shape[1] * x.shape[0]
    return picked.detach(), grads


def box_feasible(w: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """Zero the components of the boundary normals w (B, K-1, *x) that would push a pixel already
    at 0 below 0 or one at 1 above 1: the step to the linearized boundary is then taken within
    the box instead of being clipped away (the stall of per-step clipping on MNIST, where most
    pixels are exactly 0 or 1). For L2 this is the exact minimizer of ||r|| s.t. w.r >= f with
    those sign constraints; for Linf the same argument holds with sign(w)."""
    at_low = (x_adv <= 0).unsqueeze(1)
    at_high = (x_adv >= 1).unsqueeze(1)
    blocked = (at_low & (w < 0)) | (at_high & (w > 0))
    return w.masked_fill(blocked, 0.0)


@register_attack("deepfool", kind="minimum-norm", gradients=True, unbounded=True, paper="Moosavi-Dezfooli et al. 2016, Alg. 2-3")
class DeepFool(Attack):
    """Minimum-norm DeepFool for L2 or Linf; ``candidates`` limits the classes considered to the
    most likely ones (None: all)."""

    name = "deepfool"

    def __init__(self, norm: str = "l2", steps: int = 50, overshoot: float = 0.02,
                 candidates: int | None = None, damping: float = 1.0, damped_steps: int = 0,
                 box_mask: bool = False, seed: int = 0) -> None:
        super().__init__(seed)
        self.hooks = hooks_for(norm)
        self.threat_norm = self.hooks.norm
        if (steps < 1 or overshoot < 0 or (candidates is not None and candidates < 2)
                or not 0 < damping <= 1 or damped_steps < 0):
            raise ConfigError(f"deepfool: need steps >= 1, overshoot >= 0, candidates >= 2 or None, "
                              f"0 < damping <= 1, damped_steps >= 0; got steps={steps}, "
                              f"overshoot={overshoot}, candidates={candidates}, damping={damping}, "
                              f"damped_steps={damped_steps}")
        self.steps, self.overshoot, self.candidates = int(steps), float(overshoot), candidates
        self.damping, self.damped_steps, self.box_mask = float(damping), int(damped_steps), bool(box_mask)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "threat_norm": self.threat_norm.value, "steps": self.steps,
                "overshoot": self.overshoot, "candidates": self.candidates,
                "damping": self.damping, "damped_steps": self.damped_steps, "box_mask": self.box_mask}

    def step(self, f_diff: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The move to the nearest linearized boundary, (B, *x) from (B, K-1) and (B, K-1, *x)."""
        flat = w.flatten(2)
        dual = flat.norm(dim=2) if self.threat_norm is Norm.L2 else flat.abs().sum(dim=2)
        distance = f_diff.abs() / dual.clamp_min(_TINY)
        nearest = distance.argmin(dim=1)
        rows = torch.arange(w.shape[0], device=w.device)
        w_l, scale = w[rows, nearest], (f_diff[rows, nearest].abs() + _OVERSHOOT_MARGIN)
        shape = (-1, *([1] * (w_l.ndim - 1)))
        if self.threat_norm is Norm.L2:
            return (scale / dual[rows, nearest].clamp_min(_TINY) ** 2).view(shape) * w_l
        return (scale / dual[rows, nearest].clamp_min(_TINY)).view(shape) * w_l.sign()

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator, counter: PassCounter,
                target: torch.Tensor | None = None) -> torch.Tensor:
        if target is not None:
            raise ConfigError("deepfool is untargeted")
        x_adv, r_total = x.clone(), torch.zeros_like(x)
        with torch.no_grad():
            logits = model(x)
        counter.add(x.shape[0], backward=False)
        classes = candidate_classes(logits, y, self.candidates)
        active = torch.nonzero(logits.argmax(dim=1) == y).squeeze(1)
        for it in range(self.steps):
            if not active.numel():
                break
            picked, grads = class_gradients(model, x_adv[active], classes[active], counter)
            f_diff = picked[:, 1:] - picked[:, :1]
            w = grads[:, 1:] - grads[:, :1]
            if self.box_mask:
                w = box_feasible(w, x_adv[active])
            r_total[active] += (self.damping if it < self.damped_steps else 1.0) * self.step(f_diff, w)
            x_adv[active] = (x[active] + (1 + self.overshoot) * r_total[active]).clamp(0, 1)
            # Per-example stopping: a forward without graph, then gradients only where needed.
            with torch.no_grad():
                still = model(x_adv[active]).argmax(dim=1) == y[active]
            counter.add(active.numel(), backward=False)
            active = active[still]
        return x_adv
