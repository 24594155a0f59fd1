"""AttackBench optimality of each minimum-norm attack of an evaluation (``results.metrics.optimality``),
from the evaluator-shaped rows (attack fields plus per-example ``examples``).

Per norm, the per-image best is taken over every attack row of that norm, bounded ones (and their
eps-grid points) included: a bounded attack's successful point is a perturbation of that size too.
Only minimum-norm rows are scored: a bounded attack's curve stops at its eps by construction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.enums import PseudoAttack
from results.metrics import optimality

#: Below this, the audit flags an attack as suboptimal (AttackBench's line between good and poor).
SUBOPTIMAL = 0.9
_PSEUDO = {p.value for p in PseudoAttack}


@dataclass(frozen=True)
class Optimality:
    attack_id: str
    norm: str
    value: float
    contenders: int   # attack rows the per-image best was taken over


def _norm_of(row: dict[str, Any]) -> str | None:
    return row["norm"] if row["eps"] is not None else row["config"].get("threat_norm")


def attack_optimality(rows: list[dict[str, Any]]) -> list[Optimality]:
    """One entry per minimum-norm row (per its norm), in row order."""
    rows = [r for r in rows if r["attack"] not in _PSEUDO and _norm_of(r) in ("l2", "linf")]
    out = []
    for norm in ("l2", "linf"):
        members = [r for r in rows if _norm_of(r) == norm]
        scored = [r for r in members if r["eps"] is None and r.get("grid_of") is None]
        if not scored:
            continue
        sizes = {r["attack_id"]: np.array([e[norm] if e["success"] else np.inf for e in r["examples"]])
                 for r in members}
        correct = np.array([e["clean_correct"] for e in members[0]["examples"]], dtype=bool)
        values = optimality(sizes, correct)
        out += [Optimality(r["attack_id"], norm, values[r["attack_id"]], len(members))
                for r in scored if r["attack_id"] in values]
    return out
