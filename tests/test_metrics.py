"""Metrics and benign-accuracy matching on hand-made per-example rows, against values worked out by
hand (the comments show the arithmetic)."""

import math

import numpy as np
import pandas as pd
import pytest

from results.matching import INTERPOLATED, NEAREST, NOT_REACHABLE, Point, match, pareto_front
from results.metrics import (accuracy_by_iteration, accuracy_within, attack_metrics, doubling_iterations,
                             fgs_accuracies, fgs_eps_ref, mean_and_std, wilson_interval)


def rows(clean, success, l2=None, linf=None, step=None, x_l2=None):
    n = len(clean)
    clean, success = np.array(clean, bool), np.array(success, bool)
    return pd.DataFrame({"clean_correct": clean, "success": success,
                         "adv_correct": clean & ~success,
                         "l2": l2 if l2 is not None else [0.0] * n, "linf": linf if linf is not None else [0.0] * n,
                         "success_step": step if step is not None else [None] * n,
                         "x_l2": x_l2 if x_l2 is not None else [10.0] * n})


@pytest.mark.parametrize("k,n,low,high", [(8, 10, 0.4902, 0.9433), (0, 20, 0.0, 0.1611),
                                          (1000, 1000, 0.9962, 1.0)])
def test_wilson_interval_matches_the_textbook_values(k, n, low, high):
    assert wilson_interval(k, n) == pytest.approx((low, high), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_attack_metrics_by_hand():
    # 5 points: #4 clean-wrong; the attack fools #0 (l2 1.0), #2 (l2 3.0) and the wrong #4
    ex = rows(clean=[1, 1, 1, 1, 0], success=[1, 0, 1, 0, 1], l2=[1.0, 0.0, 3.0, 0.0, 0.0],
              x_l2=[10.0, 10.0, 20.0, 10.0, 10.0])
    m = attack_metrics(ex)
    assert m.n == 5 and m.benign_accuracy == 0.8
    assert m.robust_accuracy == 0.4                      # #1 and #3
    assert (m.robust_low, m.robust_high) == pytest.approx(wilson_interval(2, 5))
    assert m.success_rate == 0.5                         # 2 of the 4 clean-correct
    assert m.mean_l2 == 2.0 and m.median_l2 == 2.0       # (1 + 3) / 2
    assert m.rho_2 == pytest.approx((1 / 10 + 3 / 20) / 2)  # 0.125


def test_accuracy_within_a_budget_and_by_iteration():
    ex = rows(clean=[1, 1, 1, 0], success=[1, 1, 0, 1], l2=[0.5, 1.5, 9.0, 0.0], step=[1, 6, None, 0])
    # budget 0: all 3 clean-correct robust; 1.0: #0 falls; 2.0: #1 falls too
    assert accuracy_within(ex, np.array([0.0, 1.0, 2.0]), "l2") == pytest.approx([0.75, 0.5, 0.25])
    # k = 1: #0 fooled at step 1; k = 4: same; k = 8: #1 (step 6) too
    assert accuracy_by_iteration(ex, [1, 4, 8]) == pytest.approx([0.5, 0.5, 0.25])
    assert doubling_iterations(40) == [1, 2, 4, 8, 16, 32, 40]
    assert doubling_iterations(1) == [1]


def test_fgs_eps_ref_and_fractions():
    # 6 images, one clean error; line crossings at 0.1, 0.2, 0.3, 0.4 and one never fooled:
    # breaking eps sorted [0, 0.1, 0.2, 0.3, 0.4, inf]; half (3) misclassified from eps 0.2
    ref = rows(clean=[1, 1, 1, 1, 1, 0], success=[1, 1, 1, 1, 0, 1], linf=[0.1, 0.2, 0.3, 0.4, 0.5, 0.0])
    assert fgs_eps_ref(ref) == pytest.approx(0.2)
    result = fgs_accuracies(ref, 0.2)
    # at 0.04: 5/6 robust; at 0.1: 4/6 (crossing at 0.1 counts); at 0.2: 3/6
    assert result.accuracies == pytest.approx({0.2: 5 / 6, 0.5: 4 / 6, 1.0: 3 / 6})
    robust = rows(clean=[1, 1, 1], success=[0, 0, 1], linf=[0.5, 0.5, 0.3])
    assert fgs_eps_ref(robust) is None and fgs_accuracies(robust, None).accuracies == {}


def test_mean_and_std_over_seeds():
    assert mean_and_std([0.5]) == (0.5, None)
    mean, std = mean_and_std([0.4, 0.6])
    assert mean == pytest.approx(0.5) and std == pytest.approx(math.sqrt(0.02))


def test_pareto_front_drops_dominated_points():
    points = [Point(0.90, 0.50, "a"), Point(0.95, 0.40, "b"), Point(0.93, 0.30, "dominated"),
              Point(0.98, 0.10, "c"), Point(0.95, 0.35, "same benign, less robust")]
    assert [p.name for p in pareto_front(points)] == ["a", "b", "c"]


def test_matching_interpolates_then_nearest_then_not_reachable():
    points = [Point(0.90, 0.50, "a"), Point(0.95, 0.40, "b"), Point(0.98, 0.10, "c")]
    # 0.965 lies between b and c: 0.40 + (0.015 / 0.03) * (0.10 - 0.40) = 0.25
    result = match(points, 0.965, tolerance=0.005)
    assert result.method == INTERPOLATED and result.robust == pytest.approx(0.25)
    assert match(points, 0.95, 0.005).robust == pytest.approx(0.40)
    # above the front, within tolerance of c
    above = match(points, 0.984, 0.005)
    assert above.method == NEAREST and above.robust == pytest.approx(0.10)
    # above the front, beyond tolerance; below it too: no extrapolation
    for target in (0.99, 0.80):
        far = match(points, target, 0.005)
        assert far.method == NOT_REACHABLE and far.robust is None
    assert match([], 0.9, 0.005).method == NOT_REACHABLE
