"""Indicators of attack failure (Pintor et al., "Indicators of Attack Failure: Debugging and
Improving Optimization of Adversarial Examples", NeurIPS 2022, sec. 3), computed during the
evaluation from each attack's own trace (``attacks.trace``) and stored with its row.

Each indicator is a fraction of the clean-correct images it concerns, and fires above its
threshold; an indicator the attack gives no material for is left out (not "passed"):

- ``silent-success``: the attack queried an adversarial point but returned a non-adversarial one;
- ``incomplete-optimization``: over the last tenth of its steps, the attack's objective still moved
  by more than 1% (the loss still rising on points it did not fool; the smallest perturbation still
  shrinking for minimum-norm attacks): more steps would change the result;
- ``transfer-failure``: most transferred points that fooled the source model do not fool the target;
- ``unavailable-gradients``: the input gradient of the attack's loss is exactly zero at its start
  (shattered or saturated gradients: quantization, logits scaled up);
- ``unstable-predictions``: the model labels the same clean images differently on a second forward
  pass (a randomized model; every gradient row carries the evaluation's value);
- ``unconstrained-attack-failure``: a minimum-norm attack, which may use any perturbation, fools
  fewer than 99% of the clean-correct images."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import torch

from attacks.trace import AttackTrace

#: Relative change of the objective over the last tenth of the steps that counts as "still moving".
STILL_MOVING = 0.01
#: Fewest steps for which the last tenth says anything about convergence.
MIN_STEPS = 10
#: Fraction of the source-fooling points that do not fool the target above which a transfer attack
#: failed: some failure is the measurement itself (a robust target resists points made on another
#: model), most of it says the points barely fooled the source (as when crafting stopped at the
#: source's first success: on the default standard model 97% of them failed; run to the end, 15%).
TRANSFER_FAILURE = 0.5
#: Success below this (%) makes a minimum-norm attack's failure an indicator.
UNBOUNDED_SUCCESS = 99.0


class Indicator(str, Enum):
    SILENT_SUCCESS = "silent-success"
    INCOMPLETE_OPTIMIZATION = "incomplete-optimization"
    TRANSFER_FAILURE = "transfer-failure"
    UNAVAILABLE_GRADIENTS = "unavailable-gradients"
    UNSTABLE_PREDICTIONS = "unstable-predictions"
    UNCONSTRAINED_FAILURE = "unconstrained-attack-failure"


#: Fires when the fraction exceeds this.
THRESHOLD = {Indicator.SILENT_SUCCESS: 0.0, Indicator.INCOMPLETE_OPTIMIZATION: 0.05,
             Indicator.TRANSFER_FAILURE: TRANSFER_FAILURE, Indicator.UNAVAILABLE_GRADIENTS: 0.0,
             Indicator.UNSTABLE_PREDICTIONS: 0.0, Indicator.UNCONSTRAINED_FAILURE: 1 - UNBOUNDED_SUCCESS / 100}


@dataclass(frozen=True)
class Reading:
    """One indicator on one attack row: the fraction of the ``points`` images it concerns."""

    value: float
    points: int
    fired: bool


@dataclass
class TraceFlags:
    """Per image of the eval subset, what the traces of one attack's batches say (None: not recorded)."""

    silent: torch.Tensor | None = None
    zero_gradient: torch.Tensor | None = None
    still_moving: torch.Tensor | None = None
    source_fooled: torch.Tensor | None = None

    @staticmethod
    def of_batch(trace: AttackTrace | None, success: torch.Tensor) -> "TraceFlags":
        """The flags of one attacked batch (on the CPU)."""
        if trace is None:
            return TraceFlags()
        success = success.cpu()
        flags = TraceFlags()
        if trace.ever_fooled is not None:
            flags.silent = trace.ever_fooled.cpu() & ~success
        if trace.first_gradient_norm is not None:
            flags.zero_gradient = trace.first_gradient_norm.cpu() == 0
        objective = trace.objective_matrix()
        if objective is not None and objective.shape[0] >= MIN_STEPS:
            flags.still_moving = _still_moving(objective, trace.maximize)
        if trace.source_fooled is not None:
            flags.source_fooled = trace.source_fooled.cpu()
        return flags

    @staticmethod
    def concatenate(parts: list["TraceFlags"]) -> "TraceFlags":
        def cat(name: str) -> torch.Tensor | None:
            values = [getattr(p, name) for p in parts]
            return torch.cat(values) if values and all(v is not None for v in values) else None
        return TraceFlags(*(cat(name) for name in ("silent", "zero_gradient", "still_moving", "source_fooled")))


def _still_moving(objective: torch.Tensor, maximize: bool) -> torch.Tensor:
    """Per column: did the objective improve by more than ``STILL_MOVING`` (relative) between the
    step at 90% of the run and the last step? Columns not computed to the end (NaN) say no."""
    steps = objective.shape[0]
    before, last = objective[int(0.9 * (steps - 1))], objective[-1]
    change = (last - before) if maximize else (before - last)
    scale = before.abs().clamp_min(1e-3)
    moving = change / scale > STILL_MOVING
    return moving & torch.isfinite(before) & torch.isfinite(last)


def readings(flags: TraceFlags, success: torch.Tensor, clean_correct: torch.Tensor, *, unbounded: bool,
             minimum_norm: bool, unstable: torch.Tensor | None) -> dict[str, dict[str, Any]]:
    """The row's indicators (only those it has material for), keyed by indicator name."""
    out: dict[Indicator, tuple[torch.Tensor, torch.Tensor]] = {}
    if flags.silent is not None:
        out[Indicator.SILENT_SUCCESS] = (flags.silent, clean_correct)
    if flags.still_moving is not None:
        # bounded: the points it did not fool; minimum-norm: the points it did
        concerned = clean_correct & (success if minimum_norm else ~success)
        out[Indicator.INCOMPLETE_OPTIMIZATION] = (flags.still_moving, concerned)
    if flags.source_fooled is not None:   # of the clean-correct points the source was fooled on
        out[Indicator.TRANSFER_FAILURE] = (~success, clean_correct & flags.source_fooled)
    if flags.zero_gradient is not None:
        out[Indicator.UNAVAILABLE_GRADIENTS] = (flags.zero_gradient, clean_correct)
        if unstable is not None:
            out[Indicator.UNSTABLE_PREDICTIONS] = (unstable, clean_correct)
    if unbounded:
        out[Indicator.UNCONSTRAINED_FAILURE] = (~success, clean_correct)
    result = {}
    for indicator, (hits, concerned) in out.items():
        points = int(concerned.sum())
        value = float((hits & concerned).sum()) / points if points else 0.0
        result[indicator.value] = asdict(Reading(value=value, points=points, fired=value > THRESHOLD[indicator]))
    return result


def fired(indicators: dict[str, dict[str, Any]] | None) -> list[str]:
    """Names of the indicators that fired on a stored row (none for rows stored before them)."""
    return [name for name, reading in (indicators or {}).items() if reading.get("fired")]
