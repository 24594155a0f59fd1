"""Paired comparisons (``results.paired``) against scipy and mlxtend on known counts."""

import numpy as np
import pytest
from mlxtend.evaluate import mcnemar
from scipy import stats

from results.paired import compare, mcnemar_exact, paired_bootstrap


def outcomes(both: int, only_a: int, only_b: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([1] * both + [1] * only_a + [0] * only_b + [0] * neither, dtype=bool)
    b = np.array([1] * both + [0] * only_a + [1] * only_b + [0] * neither, dtype=bool)
    return a, b


@pytest.mark.parametrize("b, c", [(1, 9), (30, 10), (0, 7), (12, 12), (250, 190)])
def test_mcnemar_exact_is_the_binomial_test_on_discordant_pairs(b, c):
    p = mcnemar_exact(b, c)
    assert p == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-12)
    table = np.array([[500, b], [c, 300]])
    assert p == pytest.approx(mcnemar(table, exact=True)[1], rel=1e-9)
    assert mcnemar_exact(c, b) == pytest.approx(p, rel=1e-12)


def test_mcnemar_on_hand_computed_counts():
    # b = 1, c = 9: p = 2 * (C(10,0) + C(10,1)) / 2^10
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024, rel=1e-12)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0


@pytest.mark.parametrize("counts", [(560, 30, 10, 400), (900, 2, 3, 95), (100, 40, 0, 0)])
def test_bootstrap_interval_matches_scipy_paired_bootstrap(counts):
    a, b = outcomes(*counts)
    low, high = paired_bootstrap(counts[1], counts[2], len(a), resamples=20_000, seed=1)
    reference = stats.bootstrap((a.astype(float), b.astype(float)), lambda x, y, axis=-1: x.mean(axis) - y.mean(axis),
                                paired=True, vectorized=True, n_resamples=20_000, method="percentile",
                                rng=np.random.default_rng(7)).confidence_interval
    step = 1 / len(a)  # the bootstrap distribution lives on multiples of 1/n
    assert low == pytest.approx(reference.low, abs=1.5 * step)
    assert high == pytest.approx(reference.high, abs=1.5 * step)
    difference = (counts[1] - counts[2]) / len(a)
    assert low <= difference <= high


def test_bootstrap_is_seeded_and_degenerate_cases_are_exact():
    assert paired_bootstrap(30, 10, 1000, seed=3) == paired_bootstrap(30, 10, 1000, seed=3)
    assert paired_bootstrap(0, 0, 50) == (0.0, 0.0)
    with pytest.raises(ValueError, match="b \\+ c <= n"):
        paired_bootstrap(30, 80, 100)


def test_compare_from_outcome_vectors():
    a, b = outcomes(560, 30, 10, 400)
    result = compare(a, b)
    assert (result.n, result.b, result.c) == (1000, 30, 10)
    assert result.difference == pytest.approx(0.02) and result.accuracy_a - result.accuracy_b == pytest.approx(0.02)
    assert result.p_value == pytest.approx(stats.binomtest(30, 40).pvalue)
    assert 0 < result.low < 0.02 < result.high < 0.04
    with pytest.raises(ValueError, match="same images"):
        compare(a, b[:-1])
