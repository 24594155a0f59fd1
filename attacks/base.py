"""The attack contract (docs/design.md, "Contracts"): ``attack(model, x, y) -> AttackResult``.

The base class's ``__call__`` does the shared bookkeeping, foolbox-3 style: input checks, eval
mode (restored afterwards), seeding, the final check that ``x_adv`` is in [0, 1] and inside the
eps-ball, success recomputed with one clean forward, norms and pass counting. Subclasses implement
only ``perturb``."""

from __future__ import annotations

import contextlib
import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from attacks.trace import AttackTrace
from bench.enums import Norm
from bench.errors import ConfigError

BOX_TOLERANCE = 1e-6
BALL_TOLERANCE = 1e-5
TARGET_RULES = (None, "least-likely", "random")


class AttackCheckError(AssertionError):
    """An attack returned an output that breaks the contract (a bug in the attack)."""


@dataclass
class PassCounter:
    """Forward and backward passes spent, counted in images (a batch of 250 is 250 passes), and,
    from iterative attacks that record it, the iteration of each example's first fooling iterate
    (``success_step``; the base class keeps it only where the attack succeeded)."""

    forward: int = 0
    backward: int = 0
    success_step: torch.Tensor | None = None
    #: what the attack saw (``attacks.trace``), for the indicators of attack failure
    trace: AttackTrace = field(default_factory=AttackTrace)

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
    #: Iterative attacks with one restart: per example, the number of steps after which it was
    #: first fooled (0: the start point), -1 where not fooled; None when the attack does not record it.
    #: Accuracy after k steps of the same run is the fraction with no success at step <= k.
    success_step: torch.Tensor | None = None
    #: What the attack recorded while it ran (``attacks.trace``); fields it does not record stay None.
    trace: AttackTrace | None = None


def canonical_hash(payload: Any) -> str:
    """sha256 of the canonical JSON of ``payload`` (sorted keys): the content key of a config."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def isolated_global_rng(device: torch.device, seed: int | None = None) -> Iterator[None]:
    """Run code that uses torch's global generator (third-party attacks, layer initializers)
    without disturbing the caller's random state: forked on CPU and, for a CUDA ``device``, that
    device; seeded with ``seed`` when given."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def check_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise a clear error for inputs that break the image/label contract."""
    if not torch.is_tensor(x) or not x.is_floating_point() or x.ndim < 2:
        raise ConfigError(f"images must be a floating tensor (N, C, H, W), got "
                          f"{getattr(x, 'dtype', type(x))} with shape {tuple(getattr(x, 'shape', ()))}")
    if not torch.is_tensor(y) or y.dtype != torch.int64 or y.shape != (x.shape[0],):
        raise ConfigError(f"labels must be int64 of shape ({x.shape[0]},), got "
                          f"{getattr(y, 'dtype', type(y))} {tuple(getattr(y, 'shape', ()))}")
    if x.numel():
        low, high = (float(v) for v in torch.aminmax(x))
        if not (low >= 0.0 and high <= 1.0):
            raise ConfigError(f"pixels must lie in [0, 1], got [{low:.4g}, {high:.4g}]")
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

    #: How a targeted attack picks its targets when the caller gives none (None: untargeted).
    targeted: str | None = None
    #: True for attacks that batch internally and want the whole eval set in one call
    #: (their ``batch_size`` is then the forward batch size, the final check's included).
    whole_set: bool = False
    batch_size: int | None = None

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    @abstractmethod
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator, counter: PassCounter,
                target: torch.Tensor | None = None) -> torch.Tensor:
        """Return x_adv for a model already in eval mode; count every pass in ``counter``.
        ``target`` (targeted attacks only) holds the class each example must be moved to."""

    def check_target_rule(self, rule: str | None) -> str | None:
        if rule not in TARGET_RULES:
            raise ConfigError(f"{self.name}: targeted must be one of {TARGET_RULES}, got {rule!r}")
        return rule

    def choose_targets(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       generator: torch.Generator, counter: PassCounter) -> torch.Tensor:
        """Targets by this attack's rule: the least likely class on the clean input, or a class
        drawn uniformly among those != y."""
        if self.targeted == "least-likely":
            with torch.no_grad():
                logits = model(x)
            counter.add(x.shape[0], backward=False)
            return logits.argmin(dim=1)
        classes = int(self.num_classes(model, x, counter))
        shift = torch.randint(1, classes, y.shape, generator=generator, device=y.device)
        return (y + shift) % classes

    @staticmethod
    def num_classes(model: nn.Module, x: torch.Tensor, counter: PassCounter) -> int:
        with torch.no_grad():
            width = model(x[:1]).shape[1]
        counter.add(1, backward=False)
        return width

    def config(self) -> dict[str, Any]:
        """Every parameter that changes the result (hashed into the attack's content key)."""
        return {"name": self.name, "seed": self.seed,
                "norm": self.norm.value if self.norm else None, "eps": self.eps,
                "targeted": self.targeted}

    def key(self) -> str:
        return canonical_hash(self.config())

    def for_transfer(self) -> "Attack":
        """This attack as the crafting step of a transfer attack on a source model (``transfer``):
        itself, unless it stops at the first success (``GradientAttack``)."""
        return self

    def pass_counts(self) -> tuple[int, int] | None:
        """The most (forward, backward) passes per image this configuration can spend, the base
        class's final check included; None where the attack does not declare them."""
        return None

    def pass_budget(self) -> int | None:
        """Forward plus backward passes per image at most (``pass_counts``), for fixed query budgets."""
        counts = self.pass_counts()
        return None if counts is None else sum(counts)

    def make_generator(self, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator | None = None,
                 target: torch.Tensor | None = None) -> AttackResult:
        """Attack a batch. ``success`` is "misclassified" for untargeted attacks and "classified
        as the target" for targeted ones; ``pred`` is always the model's label for x_adv."""
        check_inputs(model, x, y)
        if target is not None and (target.shape != y.shape or target.dtype != torch.int64):
            raise ConfigError(f"{self.name}: target must be int64 of shape {tuple(y.shape)}, got "
                              f"{target.dtype} {tuple(target.shape)}")
        x = x.detach()
        generator = generator if generator is not None else self.make_generator(x.device)
        counter = PassCounter()
        was_training = model.training
        params = list(model.parameters())
        grads = [p.grad for p in params]  # third-party attacks may call .backward() on the model
        model.eval()
        try:
            if target is None and self.targeted is not None and x.shape[0]:
                target = self.choose_targets(model, x, y, generator, counter)
            x_adv = self.perturb(model, x, y, generator, counter, target).detach()
            self._check_output(x, x_adv)
            chunk = self.batch_size if self.whole_set and self.batch_size else max(x.shape[0], 1)
            with torch.no_grad():
                pred = torch.cat([model(x_adv[i:i + chunk]).argmax(dim=1)
                                  for i in range(0, x.shape[0], chunk)] or [y[:0]])
            counter.add(x.shape[0], backward=False)
        finally:
            model.train(was_training)
            for param, grad in zip(params, grads):
                param.grad = grad
        delta = (x_adv - x).flatten(1)
        l2, linf = delta.norm(dim=1), delta.abs().amax(dim=1)
        self._check_ball(l2, linf)
        success = pred == target if target is not None else pred != y
        step = None if counter.success_step is None else torch.where(success, counter.success_step, -1)
        return AttackResult(x_adv=x_adv, success=success, pred=pred, l2=l2, linf=linf,
                            forward_passes=counter.forward, backward_passes=counter.backward,
                            success_step=step, trace=counter.trace)

    def _check_output(self, x: torch.Tensor, x_adv: torch.Tensor) -> None:
        if x_adv.shape != x.shape or x_adv.dtype != x.dtype:
            raise AttackCheckError(f"{self.name}: x_adv has shape {tuple(x_adv.shape)} {x_adv.dtype}, "
                                   f"expected {tuple(x.shape)} {x.dtype}")
        if x_adv.numel():
            low, high = (float(v) for v in torch.aminmax(x_adv))
            # NaN fails both comparisons, inf the second one
            if not (low >= -BOX_TOLERANCE and high <= 1 + BOX_TOLERANCE):
                raise AttackCheckError(f"{self.name}: x_adv leaves [0, 1] or is not finite "
                                       f"(range [{low:.6g}, {high:.6g}])")

    def _check_ball(self, l2: torch.Tensor, linf: torch.Tensor) -> None:
        if self.norm is None or self.eps is None or not l2.numel():
            return
        size = linf if self.norm is Norm.LINF else l2
        worst = float(size.max())
        if worst > self.eps * (1 + BALL_TOLERANCE) + BOX_TOLERANCE:
            raise AttackCheckError(f"{self.name}: perturbation of {self.norm.value} norm {worst:.6g} "
                                   f"exceeds eps {self.eps}")
