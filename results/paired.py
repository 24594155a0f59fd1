"""Paired comparisons of two entries on the same images (docs/design.md, "Metrics").

Every evaluation of a protocol attacks the same eval subset, and each per-example outcome is
stored, so two checkpoints' robust accuracies are compared on paired data:

- the difference in robust accuracy, with a paired percentile bootstrap 95% interval (Efron &
  Tibshirani 1993, ch. 13; images resampled with replacement, both outcomes of an image kept
  together) from a seeded generator. Outcomes are binary, so a resample is fully described by how
  many images of each of the four (A robust?, B robust?) kinds it draws: one multinomial draw
  per resample, the same distribution as ``scipy.stats.bootstrap(paired=True)`` (a test checks
  the two agree) at a thousandth of the cost;
- McNemar's exact test (McNemar 1947): under "no difference", each of the b + c discordant images
  (robust for one entry only) is equally likely either way, so b ~ Binomial(b + c, 1/2); the
  two-sided p-value is ``scipy.stats.binomtest(b, b + c, 0.5)``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

#: Bootstrap resamples and the seed of their generator (fixed: reruns give the same interval).
RESAMPLES = 10_000
SEED = 0


@dataclass(frozen=True)
class Paired:
    """A minus B on ``n`` paired images (fractions): ``b`` images robust for A only, ``c`` for B only."""

    n: int
    accuracy_a: float
    accuracy_b: float
    difference: float
    low: float
    high: float
    b: int
    c: int
    p_value: float


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 when there are none)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    return 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)


def paired_bootstrap(b: int, c: int, n: int, resamples: int = RESAMPLES, seed: int = SEED,
                     level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the paired difference in accuracy (A - B) over ``resamples``
    bootstrap resamples of ``n`` images of which ``b`` are robust for A only and ``c`` for B only."""
    if n < 1 or b < 0 or c < 0 or b + c > n:
        raise ValueError(f"expected 0 <= b, c and b + c <= n >= 1, got b={b}, c={c}, n={n}")
    draws = np.random.default_rng(seed).multinomial(n, [b / n, c / n, (n - b - c) / n], size=resamples)
    differences = (draws[:, 0] - draws[:, 1]) / n
    tail = (1 - level) / 2
    low, high = np.quantile(differences, [tail, 1 - tail])
    return float(low), float(high)


def compare(robust_a: np.ndarray, robust_b: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> Paired:
    """A versus B from per-image robust outcomes (booleans, the same images in the same order)."""
    a, b = np.asarray(robust_a, dtype=bool), np.asarray(robust_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need the same images, got {a.shape} and {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    low, high = paired_bootstrap(only_a, only_b, len(a), resamples, seed)
    return Paired(n=len(a), accuracy_a=float(a.mean()), accuracy_b=float(b.mean()),
                  difference=(only_a - only_b) / len(a), low=low, high=high, b=only_a, c=only_b,
                  p_value=mcnemar_exact(only_a, only_b))
