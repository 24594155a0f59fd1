"""One gradient loop with per-norm hooks serving FGSM/FGM, PGD/BIM and MIM.

- FGSM/FGM: Goodfellow et al. 2015, x' = x + eps * sign(grad) (Linf) or eps * grad/||grad||_2 (L2).
- PGD: Madry et al. 2018, eq. 2: x_{t+1} = Proj_{B(x, eps) & [0,1]}(x_t + alpha * s(grad)) from a
  random start in the ball.
- MIM: Dong et al. 2018, eq. 6: g_{t+1} = mu g_t + grad / ||grad||_1, step along s(g_{t+1}).

As an *attack* the loop keeps, per example, the first iterate that fools the model (the logits of
the forward that computes the gradient tell it for free). Fooled examples are then frozen, and the
batch is compacted to the still-robust ones; that bookkeeping saves passes but never changes the
result: ``compact=False`` returns the same tensors. Restarts run on still-robust points only and
every restart draws its random start for the whole batch, so the generator's stream, hence the
result, does not depend on which points were already fooled. As a *training* step
(``stop_at_success=False``) it returns the last iterate, as Madry et al. train."""

from __future__ import annotations

import copy

from typing import Any

import torch
from torch import nn

from attacks.base import Attack, PassCounter
from attacks.losses import get_loss
from attacks.norms import NormHooks, hooks_for
from attacks.registry import register_attack
from attacks.trace import AttackTrace
from bench.errors import ConfigError

#: Compact the computed batch once this fraction of it is frozen (indexing costs a copy) ...
COMPACT_FRACTION = 0.35
#: ... but keep at least this many rows computed.
MIN_ROWS = 64


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str,
                   counter: PassCounter | None = None, targeted: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, d sum_i loss_i / dx) with one forward and one backward; parameter grads untouched.

    Targeted: ``y`` holds the targets and the gradient is that of ``-loss`` (move towards them)."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    value = get_loss(loss)(logits, y).sum()
    (grad,) = torch.autograd.grad(-value if targeted else value, x)
    if counter is not None:
        counter.add(x.shape[0], backward=True)
    return logits.detach(), grad


def rowwise_input_gradients(outputs: torch.Tensor, x: torch.Tensor,
                            create_graph: bool = False) -> torch.Tensor:
    """Input gradients of every column of ``outputs`` (B, K), as (B, K, *x.shape[1:]): K backward
    passes batched into one call (``is_grads_batched``), no loop over classes. With
    ``create_graph`` the result is differentiable w.r.t. the parameters (double backprop)."""
    k = outputs.shape[1]
    selectors = torch.eye(k, dtype=outputs.dtype, device=outputs.device)[:, None, :].expand(k, *outputs.shape)
    (grads,) = torch.autograd.grad(outputs, x, grad_outputs=selectors, is_grads_batched=True,
                                   create_graph=create_graph)
    return grads.transpose(0, 1)


def is_fooled(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Untargeted success: argmax != y; targeted: argmax == target."""
    pred = logits.argmax(dim=1)
    return pred == target if target is not None else pred != y


def gradient_ascent(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, hooks: NormHooks,
                    eps: float, steps: int, step_size: float, random_start: bool, momentum: float = 0.0,
                    loss: str = "ce", generator: torch.Generator | None = None,
                    counter: PassCounter | None = None, start: torch.Tensor | None = None,
                    target: torch.Tensor | None = None, stop_at_success: bool = False,
                    compact: bool = True, first_fooled: torch.Tensor | None = None,
                    trace: AttackTrace | None = None) -> torch.Tensor:
    """The shared loop. ``momentum`` > 0 gives MIM; ``steps=1, step_size=eps`` gives FGSM.

    ``start`` is an explicit initial perturbation (else drawn from ``generator`` when
    ``random_start``). ``stop_at_success`` freezes each example at its first fooling iterate and,
    when ``first_fooled`` (int64, one per example, -1 filled) is given, writes that iterate's
    index t into it (x_t is the point after t steps; the last iterate x_steps is left to the
    caller, which checks it anyway). With ``trace``, the per-step loss, the first gradient's norm
    and the fooled rows are recorded (``attacks.trace``).
    Does not change the model's mode (trainers call it in train mode, attacks in eval mode)."""
    if start is None and random_start:
        if generator is None:
            raise ConfigError("random_start needs a torch.Generator")
        start = hooks.random_start(x, eps, generator)
    x_adv = x.clone() if start is None else (x + start).clamp_(0, 1)
    goal = target if target is not None else y
    batch = _Batch(x.shape[0], x.device)
    velocity = torch.zeros_like(x) if momentum else None
    for step in range(steps):
        current = batch.take(x_adv)
        logits, grad = input_gradient(model, current, batch.take(goal), loss, counter,
                                      targeted=target is not None)
        if trace is not None:
            _record(trace, logits, grad, batch, goal, loss, target is not None, step)
        if stop_at_success:
            fooled = is_fooled(logits, batch.take(y), None if target is None else batch.take(target))
            if trace is not None:
                trace.record_fooled(fooled, batch.rows, batch.size)
            if first_fooled is not None:
                batch.record_step(first_fooled, fooled, step)
            batch.freeze(fooled)
            if batch.done:
                break
        if velocity is not None:
            l1 = grad.flatten(1).abs().sum(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.ndim - 1)))
            grad = batch.take(velocity).mul_(momentum).add_(grad / l1)
            batch.put(velocity, grad)
        base = batch.take(x)
        delta = (current - base).add_(hooks.steepest_direction(grad), alpha=step_size)
        stepped = (base + hooks.project(delta, eps)).clamp_(0, 1)
        batch.put(x_adv, batch.keep_frozen(stepped, current))
        if compact:
            batch.compact()
    return x_adv.detach()


def _record(trace: AttackTrace, logits: torch.Tensor, grad: torch.Tensor, batch: "_Batch",
            goal: torch.Tensor, loss: str, targeted: bool, step: int) -> None:
    """One step into ``trace``: the loss the loop ascends, per row, and at step 0 the gradient norms."""
    with torch.no_grad():
        value = get_loss(loss)(logits, batch.take(goal))
    trace.record_step(-value if targeted else value, batch.rows, batch.size)
    if step == 0:
        trace.first_gradient_norm = grad.flatten(1).norm(dim=1).detach()


def sync_free(device: torch.device) -> bool:
    """Whether the loop must not read tensor values on the host: on an accelerator each read
    (``bool(mask.any())``, ``nonzero``) stalls the queue of kernels, costing more than the passes
    compaction would save; there fooled rows are frozen by masking only. On the CPU reading is free."""
    return device.type != "cpu"


class _Batch:
    """Which rows of the full batch are computed (``rows``; None: all of them, no copies) and
    which of those are still live (not frozen). Compaction drops frozen rows once they are
    ``COMPACT_FRACTION`` of the computed batch, but never below ``MIN_ROWS`` rows (frozen rows
    fill up to it), because tiny batches run far below the per-image throughput of full ones.
    Where ``sync_free`` (accelerators), nothing is compacted and the loop never stops early: every
    mask stays on the device and the results are the same."""

    def __init__(self, size: int, device: torch.device) -> None:
        self.size, self.device = size, device
        self.rows: torch.Tensor | None = None
        self.live = torch.ones(size, dtype=torch.bool, device=device)
        self.all_live = True
        self.sync_free = sync_free(device)

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.rows is None else tensor[self.rows]

    def put(self, tensor: torch.Tensor, values: torch.Tensor) -> None:
        if self.rows is None:
            if values.data_ptr() != tensor.data_ptr():
                tensor.copy_(values)
        else:
            tensor[self.rows] = values

    def record_step(self, first_fooled: torch.Tensor, fooled: torch.Tensor, step: int) -> None:
        """Write ``step`` into ``first_fooled`` (full-batch rows) for rows fooled for the first time."""
        newly = fooled & self.live
        if self.rows is None:
            first_fooled.masked_fill_(newly, step)
        else:
            first_fooled[self.rows[newly]] = step

    def freeze(self, fooled: torch.Tensor) -> None:
        self.live &= ~fooled
        self.all_live = False if self.sync_free else bool(self.live.all())

    @property
    def done(self) -> bool:
        if self.sync_free:
            return False
        return not self.all_live and not bool(self.live.any())

    def keep_frozen(self, stepped: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        if self.all_live:
            return stepped
        return torch.where(self.live.view(-1, *([1] * (stepped.ndim - 1))), stepped, current)

    def compact(self) -> None:
        if self.all_live or self.sync_free:
            return
        computed = self.live.numel()
        frozen = int((~self.live).sum())
        if frozen < COMPACT_FRACTION * computed or computed <= MIN_ROWS:
            return
        keep = self.live.clone()
        shortfall = MIN_ROWS - int(self.live.sum())
        if shortfall > 0:  # pad with the first frozen rows up to MIN_ROWS
            padding = torch.nonzero(~self.live).squeeze(1)[:shortfall]
            keep[padding] = True
        rows = torch.arange(self.size, device=self.device) if self.rows is None else self.rows
        self.rows, self.live = rows[keep], self.live[keep]
        self.all_live = bool(self.live.all())


class GradientAttack(Attack):
    """Bounded attack driven by ``gradient_ascent``; ``restarts`` run on the points the earlier
    restarts did not fool, each example keeps its first fooling iterate (AutoAttack-style).

    As the crafting step of a transfer attack (``for_transfer``) every example runs all the steps
    of every restart instead, and keeps the restart whose last iterate has the highest loss."""

    #: Run every step for every example (transfer crafting) instead of freezing at the first success.
    run_all_steps: bool = False

    def __init__(self, *, norm: str, eps: float, steps: int, step_size: float, random_start: bool,
                 momentum: float = 0.0, loss: str = "ce", restarts: int = 1,
                 targeted: str | None = None, seed: int = 0) -> None:
        super().__init__(seed)
        self.hooks = hooks_for(norm)
        self.norm = self.hooks.norm
        if eps <= 0 or steps < 1 or step_size <= 0 or restarts < 1:
            raise ConfigError(f"{self.name}: need eps > 0, steps >= 1, step_size > 0, restarts >= 1; "
                              f"got eps={eps}, steps={steps}, step_size={step_size}, restarts={restarts}")
        if restarts > 1 and not random_start:
            raise ConfigError(f"{self.name}: restarts > 1 without random_start repeat the same run")
        get_loss(loss)
        if loss == "kl":
            raise ConfigError(f"{self.name}: the 'kl' loss needs reference probabilities (TRADES' inner "
                              f"loop); attacks take 'ce' or 'cw'")
        self.eps, self.steps, self.step_size = float(eps), int(steps), float(step_size)
        self.random_start, self.momentum, self.loss = bool(random_start), float(momentum), loss
        self.restarts = int(restarts)
        self.targeted = self.check_target_rule(targeted)
        self.compact = True

    def config(self) -> dict[str, Any]:
        # ``run_all_steps`` only when set: the keys of attacks run as themselves are unchanged
        return {**super().config(), "steps": self.steps, "step_size": self.step_size,
                "random_start": self.random_start, "momentum": self.momentum, "loss": self.loss,
                "restarts": self.restarts, "targeted": self.targeted,
                **({"run_all_steps": True} if self.run_all_steps else {})}

    def for_transfer(self) -> "GradientAttack":
        """A copy that runs every step on every example: a point frozen at its first success on
        the source barely crosses the source's decision boundary and rarely fools another model
        (on the default suite's standard mnist-cnn, PGD-40 at Linf 0.3 from the surrogate left
        97.0% of 500 test images correct when frozen, 14.4% when run to the end)."""
        crafting = copy.copy(self)
        crafting.run_all_steps = True
        return crafting

    def pass_counts(self) -> tuple[int, int] | None:
        """Per restart a forward and a backward per step, a forward between restarts (run to the
        end with several restarts: one per restart, scoring its last iterate), the final check; a
        targeted rule picking the least-likely class adds one forward."""
        scoring = (self.restarts if self.restarts > 1 else 0) + 1 if self.run_all_steps else self.restarts
        forward = self.steps * self.restarts + scoring + (self.targeted == "least-likely")
        return forward, self.steps * self.restarts

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator, counter: PassCounter,
                target: torch.Tensor | None = None) -> torch.Tensor:
        if self.run_all_steps:
            return self.run_to_the_end(model, x, y, generator, counter, target)
        x_adv = x.clone()
        todo = torch.arange(x.shape[0], device=x.device)
        # The iteration of the first fooling iterate is the same as in a shorter run only with one
        # restart (later restarts start from points the earlier ones did not fool).
        first_fooled = torch.full_like(y, -1) if self.restarts == 1 else None
        for restart in range(self.restarts):
            start = self.hooks.random_start(x, self.eps, generator) if self.random_start else None
            if restart and todo.numel():
                with torch.no_grad():
                    still = ~is_fooled(model(x_adv[todo]), y[todo], None if target is None else target[todo])
                counter.add(todo.numel(), backward=False)
                todo = todo[still]
            if not todo.numel():
                break
            x_adv[todo] = gradient_ascent(
                model, x[todo], y[todo], hooks=self.hooks, eps=self.eps, steps=self.steps,
                step_size=self.step_size, random_start=self.random_start, momentum=self.momentum,
                loss=self.loss, counter=counter, start=None if start is None else start[todo],
                target=None if target is None else target[todo], stop_at_success=True,
                compact=self.compact, first_fooled=first_fooled,
                trace=counter.trace if restart == 0 else None)   # the first run covers every point
        if first_fooled is not None:  # not frozen inside the loop: fooled, if at all, by x_steps
            counter.success_step = torch.where(first_fooled < 0, self.steps, first_fooled)
        return x_adv

    def run_to_the_end(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       generator: torch.Generator, counter: PassCounter,
                       target: torch.Tensor | None = None) -> torch.Tensor:
        """Every restart runs all its steps on every example; with several restarts each example
        keeps the last iterate of highest loss (the loss the attack ascends; targeted: its negative)."""
        best, best_loss = x.clone(), torch.full((x.shape[0],), float("-inf"), device=x.device)
        goal = target if target is not None else y
        for restart in range(self.restarts):
            start = self.hooks.random_start(x, self.eps, generator) if self.random_start else None
            last = gradient_ascent(
                model, x, y, hooks=self.hooks, eps=self.eps, steps=self.steps, step_size=self.step_size,
                random_start=self.random_start, momentum=self.momentum, loss=self.loss, counter=counter,
                start=start, target=target, stop_at_success=False, compact=False,
                trace=counter.trace if restart == 0 else None)
            if self.restarts == 1:
                return last
            with torch.no_grad():
                loss = get_loss(self.loss)(model(last), goal) * (-1 if target is not None else 1)
            counter.add(x.shape[0], backward=False)
            better = loss > best_loss
            best = torch.where(better.view(-1, *([1] * (x.ndim - 1))), last, best)
            best_loss = torch.where(better, loss, best_loss)
        return best


@register_attack("fgsm", kind="bounded", gradients=True, paper="Goodfellow et al. 2015 (FGSM; FGM for L2)")
class FGSM(GradientAttack):
    """Fast gradient (sign) method: one step of size eps along the steepest direction."""

    name = "fgsm"

    def __init__(self, norm: str = "linf", eps: float = 0.3, loss: str = "ce",
                 targeted: str | None = None, seed: int = 0) -> None:
        super().__init__(norm=norm, eps=eps, steps=1, step_size=eps, random_start=False, loss=loss,
                         targeted=targeted, seed=seed)


@register_attack("pgd", kind="bounded", gradients=True, paper="Madry et al. 2018, eq. 2")
class PGD(GradientAttack):
    """Projected gradient descent with random start (BIM when random_start is false)."""

    name = "pgd"

    def __init__(self, norm: str = "linf", eps: float = 0.3, steps: int = 40, step_size: float = 0.01,
                 random_start: bool = True, restarts: int = 1, loss: str = "ce",
                 targeted: str | None = None, seed: int = 0) -> None:
        super().__init__(norm=norm, eps=eps, steps=steps, step_size=step_size,
                         random_start=random_start, restarts=restarts, loss=loss, targeted=targeted,
                         seed=seed)


@register_attack("mim", kind="bounded", gradients=True, paper="Dong et al. 2018, eq. 6")
class MIM(GradientAttack):
    """Momentum iterative method: decay ``decay``, step eps/steps unless given."""

    name = "mim"

    def __init__(self, norm: str = "linf", eps: float = 0.3, steps: int = 10,
                 step_size: float | None = None, decay: float = 1.0, loss: str = "ce",
                 targeted: str | None = None, seed: int = 0) -> None:
        super().__init__(norm=norm, eps=eps, steps=steps,
                         step_size=step_size if step_size is not None else eps / steps,
                         random_start=False, momentum=decay, loss=loss, targeted=targeted, seed=seed)
