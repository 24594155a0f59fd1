"""Paper vs ours: each seed defense's headline claim (``paper_claims.yaml``, copied from
docs/defense-specs.md's headline tables) beside the same metric measured on our final checkpoints.

Papers and advarena differ in data, network and attack, so absolute numbers are not comparable;
the ratio to the paper's own comparator is. Each row therefore gives the paper's value and its
ratio to the reference the paper compares against (PGD-AT/Madry, or the undefended model for the
minimum-norm metrics), and ours with its ratio to our own reference model of the same store: a
PGD-AT final checkpoint, or the standard model of the same architecture. A claim reproduces here
when our ratio reaches 0.8x the paper's (the issue-23 criterion) or lies within 0.1 of it."""

from __future__ import annotations

import math
from functools import lru_cache
from importlib import resources
from typing import Any

import pandas as pd
import yaml

#: Linf attacks by strength: the strongest one a checkpoint was evaluated with is "ours".
LINF_PREFERENCE = ("autoattack", "apgd-ce", "apgd-t", "pgd", "mim", "fgsm")
METRICS = ("linf", "rho_2", "rho_cw", "fixed_set")
REFERENCES = ("pgd-at", "standard")
RATIO_SHARE, RATIO_SLACK = 0.8, 0.1
CAPTION = ("Each seed defense's headline claim (results/paper_claims.yaml, from DEFENSE_SPECS' headline "
           "tables) beside ours. Data, networks and attacks differ, so compare the ratios: the paper's value "
           "over its own comparator's (PGD-AT/Madry, or the undefended model for rho), and ours over our PGD-AT "
           "(or standard model of the same architecture) in this store; likewise seconds per epoch. 'reproduces': "
           "our ratio is at least 0.8x the paper's or within 0.1 of it. Linf values: robust accuracy (%) under "
           "the strongest Linf attack evaluated (the 'our attack' column).")


@lru_cache(maxsize=1)
def load_claims() -> tuple[dict[str, Any], ...]:
    """The shipped claims, validated: a known metric and reference on every row."""
    rows = yaml.safe_load((resources.files("results") / "paper_claims.yaml").read_text())["claims"]
    for row in rows:
        if row["metric"] not in METRICS or row["reference"] not in REFERENCES:
            raise ValueError(f"paper_claims.yaml: bad metric or reference in {row}")
    return tuple(rows)


def claim_for(defense: str, arch: str, hparams: dict[str, Any],
              claims: tuple[dict[str, Any], ...]) -> dict[str, Any] | None:
    """The first claim of ``defense`` whose ``match`` (hparams, or ``arch``) the run satisfies."""
    for claim in claims:
        if claim["defense"] != defense:
            continue
        wanted = claim.get("match") or {}
        if all((arch if key == "arch" else hparams.get(key)) == value for key, value in wanted.items()):
            return claim
    return None


def _ours(metric: str, evaluation_id: int, label: str, attacks: pd.DataFrame,
          minimum_norm: pd.DataFrame) -> tuple[float | None, str]:
    """Our value of ``metric`` for one final checkpoint and the attack it comes from."""
    if metric == "linf":
        own = attacks[(attacks.evaluation_id == evaluation_id) & (attacks.norm == "linf")
                      & attacks.grid_of.isna() & attacks.attack.isin(LINF_PREFERENCE)]
        if own.empty:
            return None, ""
        own = own[own.eps == own.eps.max()]
        best = min(own.itertuples(), key=lambda r: LINF_PREFERENCE.index(r.attack))
        return 100 * float(best.robust_accuracy), f"{best.attack_id}"
    if metric in ("rho_2", "rho_cw") and not minimum_norm.empty:
        kind = "deepfool" if metric == "rho_2" else "cw"
        column = "rho_2" if metric == "rho_2" else "rho (mean L2)"
        rows = minimum_norm[(minimum_norm.label == label) & minimum_norm.attack.str.contains(kind)]
        if not rows.empty and pd.notna(rows.iloc[0][column]):
            return float(rows.iloc[0][column]), str(rows.iloc[0].attack)
    return None, ""


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or (isinstance(reference, float) and math.isnan(reference)):
        return None
    return value / reference if reference else (0.0 if value == 0 else None)


def _verdict(ours: float | None, paper: float | None) -> str:
    if ours is None or paper is None:
        return "not measured"
    holds = ours >= RATIO_SHARE * paper or abs(ours - paper) <= RATIO_SLACK
    return "reproduces" if holds else "falls short"


def claims_table(finals: pd.DataFrame, attacks: pd.DataFrame, training: pd.DataFrame,
                 minimum_norm: pd.DataFrame, claims: tuple[dict[str, Any], ...] | None = None) -> pd.DataFrame:
    """One row per final checkpoint with a claim: the paper's numbers and ratio beside ours."""
    claims = load_claims() if claims is None else claims
    seconds = dict(zip(training.run_id, training.sec_per_epoch)) if not training.empty else {}

    def reference_row(kind: str, arch: str) -> Any:
        pool = finals[finals.defense == kind]
        same = pool[pool.arch == arch]
        pool = same if kind == "standard" or not same.empty else pool
        return None if pool.empty else next(pool.itertuples())

    rows = []
    for run in finals.itertuples():
        claim = claim_for(run.defense, run.arch, run.hparams or {}, claims)
        if claim is None:
            continue
        value, attack = _ours(claim["metric"], run.evaluation_id, run.label, attacks, minimum_norm)
        ref = reference_row(claim["reference"], run.arch)
        ref_value = (_ours(claim["metric"], ref.evaluation_id, ref.label, attacks, minimum_norm)[0]
                     if ref is not None else None)
        paper_ratio = claim.get("claimed_ratio") or _ratio(claim.get("value"), claim.get("reference_value"))
        ours_ratio = _ratio(value, ref_value)
        paper_sec = _ratio(claim.get("paper_seconds"), claim.get("reference_seconds"))
        ours_sec = _ratio(seconds.get(run.run_id), seconds.get(ref.run_id) if ref is not None else None)
        rows.append({"label": run.label, "paper": claim["paper"], "source": claim["source"],
                     "paper setting": claim["setting"], "metric": claim["metric"],
                     "paper attack": claim["attack"], "paper benign %": claim.get("benign"),
                     "paper value": claim.get("value"), "paper / reference": paper_ratio,
                     "ours benign %": 100 * float(run.benign_accuracy), "ours value": value,
                     "our attack": attack or "not measured by this protocol",
                     "reference": claim["reference"], "ours / reference": ours_ratio,
                     "paper s/epoch / reference": paper_sec, "ours s/epoch / reference": ours_sec,
                     "claim": _verdict(ours_ratio, paper_ratio)})
    table = pd.DataFrame(rows)
    ratios = ["paper / reference", "ours / reference", "paper s/epoch / reference", "ours s/epoch / reference"]
    return table.round({name: 3 for name in ratios}).round({"ours value": 3, "ours benign %": 1}) if rows else table
