"""Metrics from stored per-example rows (docs/design.md, "Metrics"). Pure functions of pandas frames
with the ``example_results`` columns; nothing here touches a model.

- robust accuracy with a 95% Wilson score interval (Wilson 1927);
- minimum-norm attacks: success rate on clean-correct points, mean (rho; rho_cw for C&W, seed 000
  eq. 9) and median L2 of the successful perturbations, and rho_2 = mean ||delta||_2 / ||x||_2
  (seed 002 eq. 7) over the same points; always reported with the success rate;
- the FGS line (seed 002 sec. 4.1): accuracy at any eps, eps_ref (half the images misclassified)
  and accuracy at fractions of it;
- accuracy vs L2 budget from minimum norms (seed 000 fig. 4) and vs attack iterations from each
  point's first fooling iteration (seeds 001, 003)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

#: Slack when comparing stored float32 norms with a budget.
NORM_TOLERANCE = 1e-6


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n`` (scipy's); (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    interval = stats.binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


@dataclass(frozen=True)
class AttackMetrics:
    """One attack on one checkpoint, from its per-example rows (fractions, not %)."""

    n: int
    benign_accuracy: float
    robust_accuracy: float
    robust_low: float
    robust_high: float
    success_rate: float | None      # on clean-correct points; None when there are none
    mean_l2: float | None           # over successful clean-correct points
    median_l2: float | None
    rho_2: float | None             # mean ||delta|| / ||x|| over the same points


def attack_metrics(examples: pd.DataFrame) -> AttackMetrics:
    """Metrics of one attack row's examples (columns clean_correct, adv_correct, success, l2, x_l2)."""
    n = len(examples)
    robust = int(examples.adv_correct.sum())
    low, high = wilson_interval(robust, n)
    correct = examples[examples.clean_correct.astype(bool)]
    fooled = correct[correct.success.astype(bool)]
    has_norms = len(fooled) and fooled.x_l2.notna().all() and (fooled.x_l2 > 0).all()
    return AttackMetrics(
        n=n, benign_accuracy=float(examples.clean_correct.mean()) if n else 0.0,
        robust_accuracy=robust / n if n else 0.0, robust_low=low, robust_high=high,
        success_rate=float(correct.success.mean()) if len(correct) else None,
        mean_l2=float(fooled.l2.mean()) if len(fooled) else None,
        median_l2=float(fooled.l2.median()) if len(fooled) else None,
        rho_2=float((fooled.l2 / fooled.x_l2).mean()) if has_norms else None)


def accuracy_within(examples: pd.DataFrame, budgets: np.ndarray, norm: str) -> np.ndarray:
    """Accuracy when an adversary may use a perturbation of size at most each budget: a point
    counts as robust if it is clean-correct and the attack's successful perturbation (``l2`` or
    ``linf``) is larger than the budget (minimum-norm attacks, the FGS line)."""
    size = examples[norm].to_numpy(dtype=float)
    broken_at = np.where(examples.success.to_numpy(dtype=bool), size, np.inf)
    correct = examples.clean_correct.to_numpy(dtype=bool)
    budgets = np.asarray(budgets, dtype=float)
    robust = correct[None, :] & (broken_at[None, :] > budgets[:, None] + NORM_TOLERANCE)
    return robust.mean(axis=1) if len(size) else np.zeros(len(budgets))


def accuracy_by_iteration(examples: pd.DataFrame, iterations: list[int]) -> np.ndarray:
    """Accuracy after k iterations of one stored run, for each k: robust points are clean-correct
    and not fooled at any iterate <= k (``success_step``; exact for one-restart runs, which
    store it)."""
    step = examples.success_step.to_numpy(dtype=float)  # NaN: never fooled
    correct = examples.clean_correct.to_numpy(dtype=bool)
    ks = np.asarray(iterations, dtype=float)
    fooled = ~np.isnan(step)[None, :] & (np.nan_to_num(step, nan=np.inf)[None, :] <= ks[:, None])
    return (correct[None, :] & ~fooled).mean(axis=1) if len(step) else np.zeros(len(ks))


def doubling_iterations(steps: int) -> list[int]:
    """1, 2, 4, ... up to ``steps``, which is always included."""
    out, k = [], 1
    while k < steps:
        out.append(k)
        k *= 2
    return [*out, steps]


@dataclass(frozen=True)
class EpsRef:
    """Seed 002's FGS robustness: eps_ref from a reference model and accuracies at fractions of it."""

    eps_ref: float | None           # None: the line never misclassifies half the images
    accuracies: dict[float, float]  # fraction of eps_ref -> accuracy


def fgs_eps_ref(reference: pd.DataFrame) -> float | None:
    """The smallest eps at which at least half of the reference model's images are misclassified
    along the FGS line (clean errors count as misclassified at every eps)."""
    n = len(reference)
    if n == 0:
        return None
    size = reference.linf.to_numpy(dtype=float)
    broken_at = np.where(~reference.clean_correct.to_numpy(dtype=bool), 0.0,
                         np.where(reference.success.to_numpy(dtype=bool), size, np.inf))
    ordered = np.sort(broken_at)
    candidate = ordered[math.ceil(n / 2) - 1]  # misclassified at eps >= candidate: at least n/2
    return float(candidate) if np.isfinite(candidate) else None


def fgs_accuracies(examples: pd.DataFrame, eps_ref: float | None,
                   fractions: tuple[float, ...] = (0.2, 0.5, 1.0)) -> EpsRef:
    if eps_ref is None:
        return EpsRef(None, {})
    values = accuracy_within(examples, np.array([f * eps_ref for f in fractions]), "linf")
    return EpsRef(eps_ref, {f: float(v) for f, v in zip(fractions, values)})


def mean_and_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value) over training seeds."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), (float(array.std(ddof=1)) if len(array) > 1 else None)


def optimality(sizes: dict[str, np.ndarray], correct: np.ndarray) -> dict[str, float]:
    """AttackBench's optimality (Cina et al. 2025, sec. 3.2) of each attack in ``sizes`` (per image,
    the size of its successful perturbation in one norm, inf where it failed):

        1 - (A_attack - A_best) / (clean_acc * max_dist - A_best)

    with A the area under robust accuracy vs perturbation size over [0, max_dist], A_best that of
    the per-image best over every attack given, and max_dist the largest successful perturbation of
    any attack on a clean-correct image. Robust accuracy at budget e counts clean-correct images whose attack
    size exceeds e, so A = mean over images of min(size, max_dist) on clean-correct ones. 1: as
    good as the best on every image; 0: no better than not attacking. An attack no other beats
    scores 1; images no attack fooled count max_dist for every attack."""
    correct = np.asarray(correct, dtype=bool)
    if not sizes or not correct.any():
        return {}
    stacked = np.stack([np.asarray(v, dtype=float)[correct] for v in sizes.values()])
    best = stacked.min(axis=0)
    finite = stacked[np.isfinite(stacked)]
    if not len(finite) or finite.max() <= 0:
        return {name: 1.0 for name in sizes}
    max_dist = float(finite.max())
    area_best = np.minimum(best, max_dist).sum()
    ceiling = len(best) * max_dist
    out = {}
    for name, row in zip(sizes, stacked):
        area = np.minimum(row, max_dist).sum()
        out[name] = 1.0 if ceiling <= area_best else float(1 - (area - area_best) / (ceiling - area_best))
    return out
