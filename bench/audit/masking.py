"""Gradient-masking checks (Chen & Lee, seed 001 sec. 2.4 and 4.3; Athalye et al. 2018; Carlini et
al. 2019 sec. 5). Each check reads an evaluation's rows (the evaluator's shape: attack fields plus
per-example ``examples``); three re-attack the model, which the caller supplies. A flag carries the
numbers behind it. Tolerances are in accuracy points.

1. ``noise-beats-gradient``: the random-noise baseline fools points that every gradient attack of
   the same threat model missed.
2. ``one-step-beats-iterative``: FGSM is more successful than PGD at the same norm and eps.
3. ``eps-not-monotone``: accuracy rises with eps on the PGD eps grid, or does not fall at all.
4. ``unbounded-not-total``: a minimum-norm attack, or PGD over the whole [0, 1] box, falls short of
   ~100% success.
5. ``black-box-beats-white-box``: the transfer attack beats the white-box attack it transfers.
6. ``iterations-unconverged``: PGD re-run with twice the iterations (same step size) leaves fewer
   points robust than the stored run, by more than the tolerance. (Half of the stored run is no
   substitute: with the protocol's step size, 20 steps of 0.01 cannot even reach eps 0.3.)
7. ``ce-cw-disagree``: PGD with the CW margin loss leaves fewer points robust than the stored
   CE-loss PGD, by more than the tolerance (saturated softmax hides CE gradients, not margins; a
   weaker CW run does not put the stored number in doubt, so that direction is not flagged).
8. ``attack-suboptimal``: a minimum-norm attack's AttackBench optimality against the per-image best
   of the evaluation's attacks of its norm is below 0.9 (``results.optimality``): its distances,
   and the rho and curves built on it alone, overstate the model's robustness."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from attacks import ATTACKS
from bench.enums import PseudoAttack
from bench.evaluate import predict, run_attack
from bench.indicators import UNBOUNDED_SUCCESS, Indicator
from results.frames import white_box_config
from results.optimality import SUBOPTIMAL, attack_optimality

CHECKS = ("noise-beats-gradient", "one-step-beats-iterative", "eps-not-monotone", "unbounded-not-total",
          "black-box-beats-white-box", "iterations-unconverged", "ce-cw-disagree", "attack-suboptimal")


@dataclass(frozen=True)
class Flag:
    check: str
    flagged: bool
    evidence: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Reattack:
    """What the re-attacking checks need: the model and the eval subset it was evaluated on.
    The clean predictions are computed once, on first use, for every re-attack."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    batch_size: int
    #: The clean-correct mask (CPU), when the caller has it already; else computed on first use.
    known_clean_correct: torch.Tensor | None = field(default=None, repr=False)

    @property
    def clean_correct(self) -> torch.Tensor:
        if self.known_clean_correct is None:
            self.known_clean_correct = predict(self.model, self.x, self.batch_size).cpu() == self.y.cpu()
        return self.known_clean_correct

    def run(self, attack) -> tuple[int, int]:
        """(successes on clean-correct points, clean-correct points) of ``attack`` on the subset."""
        outcome = run_attack(attack, self.model, self.x, self.y, self.batch_size)
        return int((outcome["success"] & self.clean_correct).sum()), int(self.clean_correct.sum())

    def robust_percent(self, attack) -> float:
        """Robust accuracy (%) under ``attack``: clean-correct and not fooled."""
        success, correct = self.run(attack)
        return _pct(correct - success, len(self.y))


def _pgd_variant(config: dict[str, Any], **changes: Any):
    """The stored PGD's configuration with ``changes`` (more steps, another loss)."""
    params = {k: config[k] for k in ("norm", "eps", "steps", "step_size", "random_start", "restarts", "loss",
                                     "seed")}
    return ATTACKS.create("pgd", **{**params, **changes})


def _follows_gradients(row: dict[str, Any]) -> bool:
    """A white-box attack that follows the model's gradient (registry metadata ``gradients``)."""
    return row["attack"] in ATTACKS and bool(ATTACKS.get(row["attack"]).metadata.get("gradients"))


def _pct(count: int | float, n: int) -> float:
    return 100.0 * count / n if n else 0.0


def _threat(row: dict[str, Any]) -> tuple[str | None, float | None]:
    return row["norm"], row["eps"]


def _protocol_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("grid_of") is None and r["attack"] != PseudoAttack.WORST_CASE]


def noise_beats_gradient(rows: list[dict[str, Any]], tolerance: float) -> list[Flag]:
    flags = []
    for noise in (r for r in _protocol_rows(rows) if r["attack"] == "noise"):
        gradient = [r for r in _protocol_rows(rows) if _follows_gradients(r) and _threat(r) == _threat(noise)]
        if not gradient:
            continue
        n = len(noise["examples"])
        only_noise = sum(1 for i, e in enumerate(noise["examples"])
                         if e["clean_correct"] and e["success"] and not any(g["examples"][i]["success"] for g in gradient))
        share = _pct(only_noise, n)
        flags.append(Flag(CHECKS[0], share > tolerance,
                          f"{noise['attack_id']} fools {only_noise} of {n} points ({share:.1f}%) that "
                          f"{', '.join(g['attack_id'] for g in gradient)} all miss"))
    return flags


def one_step_beats_iterative(rows: list[dict[str, Any]], tolerance: float) -> list[Flag]:
    flags = []
    rows = _protocol_rows(rows)
    for fgsm in (r for r in rows if r["attack"] == "fgsm"):
        for pgd in (r for r in rows if r["attack"] in ("pgd", "mim") and _threat(r) == _threat(fgsm)):
            gap = 100 * (pgd["robust_accuracy"] - fgsm["robust_accuracy"])
            flags.append(Flag(CHECKS[1], gap > tolerance,
                              f"{fgsm['attack_id']} {100 * fgsm['robust_accuracy']:.1f}% vs {pgd['attack_id']} "
                              f"{100 * pgd['robust_accuracy']:.1f}%"))
    return flags


def eps_not_monotone(rows: list[dict[str, Any]], benign: float, tolerance: float) -> list[Flag]:
    flags = []
    for parent in sorted({r["grid_of"] for r in rows if r.get("grid_of")}):
        curve = sorted(((r["eps"], 100 * r["robust_accuracy"]) for r in rows
                        if r["attack_id"] == parent or r.get("grid_of") == parent), key=lambda p: p[0])
        points = [(0.0, 100 * benign), *curve]
        rises = [(a, b) for a, b in zip(points, points[1:]) if b[1] > a[1] + tolerance]
        flat = points[-1][1] >= points[0][1] - tolerance
        text = ", ".join(f"eps {e:g}: {v:.1f}%" for e, v in points)
        flags.append(Flag(CHECKS[2], bool(rises) or flat,
                          f"{parent}: {text}" + (" (rises)" if rises else "") + (" (does not fall)" if flat else "")))
    return flags


def unbounded_not_total(rows: list[dict[str, Any]], reattack: Reattack | None) -> list[Flag]:
    flags = []
    for row in _protocol_rows(rows):
        # the evaluation's own indicator where it recorded one (the same test, one place for it)
        reading = (row.get("indicators") or {}).get(Indicator.UNCONSTRAINED_FAILURE.value)
        if reading is not None:
            flags.append(Flag(CHECKS[3], reading["fired"],
                              f"{row['attack_id']} succeeds on {100 * (1 - reading['value']):.1f}% of "
                              f"{reading['points']} clean-correct points (indicator recorded by the evaluation)"))
        elif row["attack"] in ATTACKS and ATTACKS.get(row["attack"]).metadata.get("unbounded"):
            success = 100 * row["success_rate"]
            flags.append(Flag(CHECKS[3], success < UNBOUNDED_SUCCESS,
                              f"{row['attack_id']} succeeds on {success:.1f}% of clean-correct points"))
    if reattack is not None:
        attack = ATTACKS.create("pgd", norm="linf", eps=1.0, steps=40, step_size=0.05, seed=0)
        success, correct = reattack.run(attack)
        share = _pct(success, correct)
        flags.append(Flag(CHECKS[3], share < UNBOUNDED_SUCCESS,
                          f"PGD-40 over the whole [0, 1] box (Linf eps 1) succeeds on {share:.1f}% of "
                          f"{correct} clean-correct points"))
    return flags


def black_box_beats_white_box(rows: list[dict[str, Any]], tolerance: float) -> list[Flag]:
    flags = []
    rows = _protocol_rows(rows)
    for transfer in (r for r in rows if r["threat"] == "black-box"):
        base = white_box_config(transfer["config"])
        white = next((r for r in rows if r["threat"] == "white-box" and r["config"] == base), None)
        if white is None:
            continue
        n = len(transfer["examples"])
        only_black = sum(1 for t, w in zip(transfer["examples"], white["examples"])
                         if t["clean_correct"] and t["success"] and not w["success"])
        gap = 100 * (white["robust_accuracy"] - transfer["robust_accuracy"])
        flags.append(Flag(CHECKS[4], gap > tolerance or _pct(only_black, n) > tolerance,
                          f"{transfer['attack_id']} {100 * transfer['robust_accuracy']:.1f}% vs white-box "
                          f"{white['attack_id']} {100 * white['robust_accuracy']:.1f}%; transfer alone fools "
                          f"{only_black} of {n} points"))
    return flags


def iterations_unconverged(rows: list[dict[str, Any]], reattack: Reattack | None,
                           tolerance: float) -> list[Flag]:
    """Re-run each one-restart PGD with twice the iterations (same step size and seed: its first
    half repeats the stored run) and compare the accuracies."""
    if reattack is None:
        return []
    flags = []
    for row in _protocol_rows(rows):
        config = row["config"]
        if row["attack"] != "pgd" or config.get("restarts", 1) != 1 or config.get("targeted"):
            continue
        doubled = reattack.robust_percent(_pgd_variant(config, steps=2 * config["steps"]))
        stored = 100 * row["robust_accuracy"]
        flags.append(Flag(CHECKS[5], stored - doubled > tolerance,
                          f"{row['attack_id']}: {stored:.1f}% after {config['steps']} iterations, "
                          f"{doubled:.1f}% after {2 * config['steps']}"))
    return flags


def ce_cw_disagree(rows: list[dict[str, Any]], reattack: Reattack | None, tolerance: float) -> list[Flag]:
    if reattack is None:
        return []
    flags = []
    for row in _protocol_rows(rows):
        config = row["config"]
        if row["attack"] != "pgd" or config.get("loss") != "ce" or config.get("targeted"):
            continue
        cw_robust = reattack.robust_percent(_pgd_variant(config, loss="cw"))
        gap = 100 * row["robust_accuracy"] - cw_robust
        flags.append(Flag(CHECKS[6], gap > tolerance,
                          f"{row['attack_id']} (CE) {100 * row['robust_accuracy']:.1f}% vs the same PGD with "
                          f"the CW loss {cw_robust:.1f}%"))
    return flags


def attack_suboptimal(rows: list[dict[str, Any]]) -> list[Flag]:
    """Curve-only attacks (registry metadata ``curve_only``: the FGS line searches one direction
    for a curve, not for the smallest perturbation) are left out: no headline number rests on them."""
    curve_only = {r["attack_id"] for r in rows
                  if r["attack"] in ATTACKS and ATTACKS.get(r["attack"]).metadata.get("curve_only")}
    return [Flag(CHECKS[7], score.value < SUBOPTIMAL,
                 f"{score.attack_id}: optimality {score.value:.3f} against the per-image best of "
                 f"{score.contenders} {score.norm} attacks")
            for score in attack_optimality(rows) if score.attack_id not in curve_only]


def masking_flags(rows: list[dict[str, Any]], benign_accuracy: float, tolerance: float = 2.0,
                  reattack: Reattack | None = None) -> list[Flag]:
    """Every check that the rows (and the model, when given) allow, in ``CHECKS`` order."""
    return [*noise_beats_gradient(rows, tolerance), *one_step_beats_iterative(rows, tolerance),
            *eps_not_monotone(rows, benign_accuracy, tolerance), *unbounded_not_total(rows, reattack),
            *black_box_beats_white_box(rows, tolerance), *iterations_unconverged(rows, reattack, tolerance),
            *ce_cw_disagree(rows, reattack, tolerance), *attack_suboptimal(rows)]
