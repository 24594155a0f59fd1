"""AttackBench optimality: the closed cases of the area formula, and which rows it scores."""

import numpy as np
import pytest

from results.metrics import optimality
from results.optimality import attack_optimality

INF = np.inf


def test_the_best_scores_one_a_failure_zero_and_a_twice_larger_attack_in_between():
    correct = np.array([True, True, True, False])
    scores = optimality({"best": np.array([1.0, 2.0, 3.0, 0.0]), "twice": np.array([2.0, 4.0, 6.0, 0.0]),
                         "fails": np.array([INF, INF, INF, INF])}, correct)
    assert scores["best"] == 1.0 and scores["fails"] == 0.0
    # max_dist 6: areas best 6, twice 12, ceiling 18 -> 1 - 6 / 12
    assert scores["twice"] == pytest.approx(0.5)


def test_images_no_attack_fools_count_the_same_for_everyone():
    scores = optimality({"a": np.array([1.0, INF]), "b": np.array([2.0, INF])}, np.array([True, True]))
    assert scores == {"a": 1.0, "b": pytest.approx(1 - (2 + 2 - 1 - 2) / (4 - 3))}


def _row(attack_id, attack, eps, norm, sizes, threat_norm=None, grid_of=None):
    examples = [{"clean_correct": True, "success": np.isfinite(s), "l2": float(s) if np.isfinite(s) else 0.0,
                 "linf": float(s) if np.isfinite(s) else 0.0} for s in sizes]
    return {"attack_id": attack_id, "attack": attack, "eps": eps, "norm": norm, "grid_of": grid_of,
            "config": {"threat_norm": threat_norm} if threat_norm else {}, "examples": examples}


def test_only_minimum_norm_rows_are_scored_and_bounded_points_count_towards_the_best():
    rows = [_row("pgd-l2", "pgd", 1.0, "l2", [0.5, INF, INF]),
            _row("deepfool", "deepfool", None, None, [1.0, 2.0, 3.0], threat_norm="l2"),
            _row("fmn", "fmn", None, None, [1.0, 1.5, 3.0], threat_norm="l2"),
            _row("fgs-line", "fgs-line", None, None, [0.1, 0.2, INF], threat_norm="linf"),
            _row("minimum-norm-l2", "minimum-norm-worst-case", None, "l2", [1.0, 1.5, 3.0], threat_norm="l2"),
            _row("worst-case-l2-1", "worst-case", 1.0, "l2", [0.5, INF, INF])]
    scores = {(o.attack_id, o.norm): o for o in attack_optimality(rows)}
    assert set(scores) == {("deepfool", "l2"), ("fmn", "l2"), ("fgs-line", "linf")}
    assert scores[("fmn", "l2")].contenders == 3     # pgd, deepfool, fmn: not the derived rows
    assert scores[("fmn", "l2")].value < 1.0         # PGD found a smaller point on the first image
    assert scores[("deepfool", "l2")].value < scores[("fmn", "l2")].value
    assert scores[("fgs-line", "linf")].value == 1.0


def test_the_audit_flags_a_poor_minimum_norm_attack_but_not_a_curve_only_one():
    from bench.audit.masking import attack_suboptimal

    rows = [_row("deepfool", "deepfool", None, None, [3.0, 6.0, 9.0], threat_norm="l2"),
            _row("alma", "alma", None, None, [1.0, 2.0, 3.0], threat_norm="l2"),
            _row("pgd-linf", "pgd", 0.3, "linf", [0.01, 0.02, 0.03]),
            _row("fgs-line", "fgs-line", None, None, [0.3, 0.3, INF], threat_norm="linf")]
    flags = {flag.evidence.split(":")[0]: flag.flagged for flag in attack_suboptimal(rows)}
    assert flags == {"deepfool": True, "alma": False}
