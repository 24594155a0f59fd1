"""Benign-accuracy matching (seed 000 sec. 4.2; docs/design.md, "Metrics").

Defenses trade benign accuracy for robustness, so a leaderboard compares them at one target
benign accuracy (default: the standard model's). Each defense contributes (benign accuracy,
robustness) points: its hyper-parameter sweep values and its evaluated per-epoch checkpoints.
Its robustness at the target is interpolated linearly on the Pareto front of those points (no
point has both higher benign accuracy and higher robustness); when the target lies outside the
front's benign range, the nearest point within ``tolerance`` is used; otherwise the defense is
"not reachable" at that target: no extrapolation."""

from __future__ import annotations

from dataclasses import dataclass

INTERPOLATED = "interpolated"
NEAREST = "nearest"
NOT_REACHABLE = "not reachable"


@dataclass(frozen=True)
class Point:
    benign: float
    robust: float
    name: str = ""


@dataclass(frozen=True)
class Match:
    target: float
    robust: float | None
    method: str
    detail: str


def pareto_front(points: list[Point]) -> list[Point]:
    """The non-dominated points, sorted by benign accuracy ascending (robustness then descends).
    Of equal-benign points only the most robust is kept."""
    front: list[Point] = []
    for point in sorted(points, key=lambda p: (-p.benign, -p.robust)):
        if not front or point.robust > front[-1].robust:
            front.append(point)
    return front[::-1]


def match(points: list[Point], target: float, tolerance: float) -> Match:
    """Robustness at benign accuracy ``target`` (fractions), as described in the module doc."""
    if not points:
        return Match(target, None, NOT_REACHABLE, "no evaluated checkpoints")
    front = pareto_front(points)
    for left, right in zip(front, front[1:]):
        if left.benign <= target <= right.benign:
            weight = (target - left.benign) / (right.benign - left.benign)
            robust = left.robust + weight * (right.robust - left.robust)
            return Match(target, robust, INTERPOLATED, f"between {left.name} and {right.name}")
    nearest = min(points, key=lambda p: (abs(p.benign - target), -p.robust))
    if abs(nearest.benign - target) <= tolerance:
        return Match(target, nearest.robust, NEAREST,
                     f"{nearest.name} (benign {100 * nearest.benign:.1f}%)")
    low, high = front[0].benign, front[-1].benign
    return Match(target, None, NOT_REACHABLE,
                 f"benign accuracy spans {100 * low:.1f}-{100 * high:.1f}%, target "
                 f"{100 * target:.1f}% +- {100 * tolerance:.1f}")
