"""The report's tables, as pandas frames computed from ``StoreFrames`` (fractions become % here).

Every table is sorted deterministically and rounded, so rerunning the report on an unchanged
store writes identical CSV and JSON files."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from bench.enums import PseudoAttack
from results.frames import StoreFrames, examples_by_row, white_box_config
from results.leaderboard import CURVE_ONLY_ATTACKS, audit_badges
from results.matching import NOT_REACHABLE, Point, match
from results.metrics import attack_metrics, fgs_accuracies, fgs_eps_ref, mean_and_std

#: Decimal places kept in exported tables.
DECIMALS = 4
#: Minimum-norm attacks whose mean L2 is the robustness-curve's rho, best first (seed 000 uses C&W).
RHO_ATTACKS = ("cw", "deepfool")
_PSEUDO_ATTACKS = {p.value for p in PseudoAttack}


@dataclass(frozen=True)
class MatchingOptions:
    """``target``: benign accuracy (fraction) to match at, None: the standard model's per
    architecture; ``attack``: the attack id whose robust accuracy is matched, None: the first
    Linf worst case; ``tolerance``: for the nearest-checkpoint rule."""

    target: float | None = None
    attack: str | None = None
    tolerance: float = 0.005


def _pct(value: float | None) -> float | None:
    return None if value is None or pd.isna(value) else round(100 * float(value), 2)


def _round(value: float | None) -> float | None:
    return None if value is None or pd.isna(value) else round(float(value), DECIMALS)


def final_checkpoints(frames: StoreFrames) -> pd.DataFrame:
    return frames.checkpoints[frames.checkpoints.final.astype(bool)].reset_index(drop=True)


def protocol_attacks(frames: StoreFrames) -> pd.DataFrame:
    """Attack rows of the protocol proper: no eps-grid points, no worst-case rows."""
    a = frames.attacks
    return a[a.grid_of.isna() & (a.attack != PseudoAttack.WORST_CASE)]


def table_attacks(frames: StoreFrames) -> pd.DataFrame:
    """Protocol attacks shown in per-attack tables (the FGS line has its own table)."""
    a = protocol_attacks(frames)
    return a[~a.attack.isin(CURVE_ONLY_ATTACKS)]


def matched_attack_id(frames: StoreFrames, options: MatchingOptions) -> str | None:
    ids = list(dict.fromkeys(frames.attacks.attack_id))
    if options.attack is not None:
        if options.attack not in ids:
            raise ValueError(f"no attack {options.attack!r} under protocol {frames.protocol} "
                             f"(stored: {', '.join(ids)})")
        return options.attack
    worst = [i for i in ids if i.startswith("worst-case-linf")]
    return worst[0] if worst else next((i for i in ids if i.startswith("worst-case")), None)


def results_table(frames: StoreFrames) -> pd.DataFrame:
    """One row per trained configuration (label without seed suffix): benign accuracy and robust
    accuracy under every protocol attack and worst case, mean and std over training seeds, and
    the newest audit's badge (verdict and gradient-masking flags) of each seed's checkpoint."""
    finals = final_checkpoints(frames)
    attacks = frames.attacks[frames.attacks.grid_of.isna() & ~frames.attacks.attack.isin(CURVE_ONLY_ATTACKS)]
    badges = audit_badges(frames.store)
    rows = []
    for (entry, sweep_value, arch), group in finals.groupby(["entry", "sweep_value", "arch"], dropna=False,
                                                              sort=False):
        label = group.label.iloc[0].split("@seed")[0]
        benign, benign_std = mean_and_std(list(group.benign_accuracy))
        row = {"label": label, "entry": entry, "defense": group.defense.iloc[0], "arch": arch,
               "seeds": len(group), "benign": _pct(benign), "benign std": _pct(benign_std),
               "audit": "; ".join(badges.get(int(c), "not audited") for c in group.checkpoint_id)}
        for attack_id, per_attack in attacks[attacks.evaluation_id.isin(group.evaluation_id)].groupby(
                "attack_id", sort=False):
            if per_attack.eps.isna().all():
                medians = list(per_attack.median_l2.dropna())
                row[f"{attack_id} median L2"] = _round(mean_and_std(medians)[0]) if medians else None
                continue
            value, std = mean_and_std(list(per_attack.robust_accuracy))
            row[attack_id] = _pct(value)
            row[f"{attack_id} std"] = _pct(std)
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.dropna(axis=1, how="all") if not table.empty else table


def _points(frames: StoreFrames, entry: str, attack_id: str) -> list[Point]:
    c = frames.checkpoints[frames.checkpoints.entry == entry]
    a = frames.attacks[(frames.attacks.attack_id == attack_id) & frames.attacks.evaluation_id.isin(c.evaluation_id)]
    robust = dict(zip(a.evaluation_id, a.robust_accuracy))
    return [Point(float(r.benign_accuracy), float(robust[r.evaluation_id]),
                  f"{r.label} epoch {r.epoch}" + ("" if not r.final else " (final)"))
            for r in c.itertuples() if r.evaluation_id in robust]


def matching_table(frames: StoreFrames, options: MatchingOptions) -> pd.DataFrame:
    """The leaderboard at matched benign accuracy: one row per suite entry."""
    attack_id = matched_attack_id(frames, options)
    if attack_id is None:
        return pd.DataFrame()
    finals = final_checkpoints(frames)
    rows = []
    for entry, group in finals.groupby("entry", sort=False):
        arch = group.arch.iloc[0]
        target, target_from = options.target, "given"
        if target is None:
            standard = finals[(finals.defense == "standard") & (finals.arch == arch)]
            target = float(standard.benign_accuracy.mean()) if len(standard) else None
            target_from = "standard, same architecture"
        points = _points(frames, entry, attack_id)
        if target is None:
            result = None
        else:
            result = match(points, target, options.tolerance)
        best = max(points, key=lambda p: p.robust) if points else None
        rows.append({"entry": entry, "defense": group.defense.iloc[0], "arch": arch,
                     "points": len(points), "target benign": _pct(target), "target from": target_from,
                     "matched attack": attack_id,
                     "robust at target": _pct(result.robust) if result else None,
                     "method": result.method if result else NOT_REACHABLE,
                     "detail": result.detail if result else f"no standard model on {arch}; give a target",
                     "most robust point": _pct(best.robust) if best else None,
                     "its benign": _pct(best.benign) if best else None})
    table = pd.DataFrame(rows)
    order = table["robust at target"].fillna(-1)
    return table.assign(_order=order).sort_values(["_order", "entry"], ascending=[False, True]) \
        .drop(columns="_order").reset_index(drop=True)


def attack_table(frames: StoreFrames) -> pd.DataFrame:
    """Seed 000 Table 1 layout, per final checkpoint: one row per white-box attack with its
    accuracy and Wilson interval, success rate, mean and median L2 of successful perturbations,
    the accuracy under the transfer attack with the same base attack (B-box), benign accuracy
    and sec/epoch."""
    finals = final_checkpoints(frames)
    attacks = table_attacks(frames)
    timing = dict(zip(frames.training.run_id, frames.training.sec_per_epoch)) if not frames.training.empty else {}
    by_row = examples_by_row(frames, list(attacks[attacks.threat == "white-box"].id))
    rows = []
    for checkpoint in finals.itertuples():
        own = attacks[attacks.evaluation_id == checkpoint.evaluation_id]
        transfers = own[own.threat == "black-box"]
        for attack in own[own.threat == "white-box"].itertuples():
            metrics = attack_metrics(by_row[attack.id]) if attack.id in by_row else None
            bbox = transfers[transfers.config.map(lambda t: white_box_config(t) == attack.config).astype(bool)]
            rows.append({"label": checkpoint.label, "attack": attack.attack_id,
                         "W-box accuracy": _pct(attack.robust_accuracy) if pd.notna(attack.eps) else None,
                         "W-box 95% low": _pct(metrics.robust_low) if metrics and pd.notna(attack.eps) else None,
                         "W-box 95% high": _pct(metrics.robust_high) if metrics and pd.notna(attack.eps) else None,
                         "success %": _pct(attack.success_rate),
                         "mean L2": _round(attack.mean_l2), "median L2": _round(attack.median_l2),
                         "B-box accuracy": _pct(bbox.robust_accuracy.iloc[0]) if len(bbox) else None,
                         "benign accuracy": _pct(checkpoint.benign_accuracy),
                         "sec/epoch": _round(timing.get(checkpoint.run_id))})
    return pd.DataFrame(rows)


def minimum_norm_table(frames: StoreFrames) -> pd.DataFrame:
    """Per final checkpoint and minimum-norm L2 attack: success rate beside rho (mean L2),
    median L2 and rho_2 (seed 002 eq. 7), all over successful clean-correct points."""
    finals = final_checkpoints(frames)
    attacks = table_attacks(frames)
    attacks = attacks[attacks.eps.isna()]
    by_row = examples_by_row(frames, list(attacks.id))
    label_of = dict(zip(finals.evaluation_id, finals.label))
    rows = []
    for attack in attacks[attacks.evaluation_id.isin(finals.evaluation_id)].itertuples():
        m = attack_metrics(by_row[attack.id])
        rows.append({"label": label_of[attack.evaluation_id], "attack": attack.attack_id,
                     "success %": _pct(m.success_rate), "rho (mean L2)": _round(m.mean_l2),
                     "median L2": _round(m.median_l2), "rho_2": _round(m.rho_2)})
    return pd.DataFrame(rows)


def fgs_table(frames: StoreFrames, reference: dict[str, str] | None = None) -> pd.DataFrame:
    """Seed 002 sec. 4.1: per architecture, eps_ref from a reference model (``reference`` maps
    arch -> label; default: the first Deep Defense entry of that architecture, else its standard
    model), and every model's FGS accuracy at 0.2, 0.5 and 1.0 eps_ref."""
    finals = final_checkpoints(frames)
    lines = frames.attacks[(frames.attacks.attack == "fgs-line") & frames.attacks.evaluation_id.isin(finals.evaluation_id)]
    if lines.empty:
        return pd.DataFrame()
    evaluation_of = dict(zip(lines.id, lines.evaluation_id))
    by_evaluation = {evaluation_of[k]: g for k, g in examples_by_row(frames, list(lines.id)).items()}
    rows = []
    for arch, group in finals.groupby("arch", sort=True):
        chosen = (reference or {}).get(arch)
        if chosen is None:
            dd = group[group.defense == "deep-defense"]
            std = group[group.defense == "standard"]
            chosen = dd.label.iloc[0] if len(dd) else (std.label.iloc[0] if len(std) else group.label.iloc[0])
        ref_rows = group[group.label == chosen]
        if ref_rows.empty or ref_rows.evaluation_id.iloc[0] not in by_evaluation:
            continue
        eps_ref = fgs_eps_ref(by_evaluation[ref_rows.evaluation_id.iloc[0]])
        for checkpoint in group.itertuples():
            if checkpoint.evaluation_id not in by_evaluation:
                continue
            result = fgs_accuracies(by_evaluation[checkpoint.evaluation_id], eps_ref)
            rows.append({"arch": arch, "label": checkpoint.label, "reference": chosen, "eps_ref": _round(eps_ref),
                         "benign": _pct(checkpoint.benign_accuracy),
                         **{f"acc @ {f:g} eps_ref": _pct(result.accuracies.get(f)) for f in (0.2, 0.5, 1.0)}})
    return pd.DataFrame(rows)


def transfer_table(frames: StoreFrames) -> pd.DataFrame:
    """Black-box accuracy, long format: transfer attack, source (surrogate label), target."""
    finals = final_checkpoints(frames)
    transfers = frames.attacks[(frames.attacks.threat == "black-box") & frames.attacks.evaluation_id.isin(finals.evaluation_id)]
    if transfers.empty:
        return pd.DataFrame()
    source_name = frames.run_labels([int(i) for i in transfers.source_checkpoint_id.dropna().unique()])
    label_of = dict(zip(finals.evaluation_id, finals.label))
    rows = [{"attack": t.attack_id,
             "source": source_name.get(t.source_checkpoint_id, "unknown") if pd.notna(t.source_checkpoint_id) else "unknown",
             "target": label_of[t.evaluation_id], "accuracy": _pct(t.robust_accuracy)}
            for t in transfers.itertuples()]
    return pd.DataFrame(rows)


def transfer_matrix(long: pd.DataFrame) -> pd.DataFrame:
    """Sources x targets, one block per transfer attack."""
    if long.empty:
        return long
    matrix = long.pivot_table(index=["attack", "source"], columns="target", values="accuracy", sort=False)
    matrix.columns.name = None
    return matrix.reset_index()


def training_table(frames: StoreFrames) -> pd.DataFrame:
    """Training cost per final checkpoint's run: epochs, sec/epoch, passes per epoch, total."""
    finals = final_checkpoints(frames)
    t = frames.training.set_index("run_id") if not frames.training.empty else pd.DataFrame()
    rows = []
    for checkpoint in finals.itertuples():
        if checkpoint.run_id not in t.index:
            continue
        r = t.loc[checkpoint.run_id]
        rows.append({"label": checkpoint.label, "defense": checkpoint.defense, "arch": checkpoint.arch,
                     "epochs": int(r.epochs), "kept epoch": int(checkpoint.epoch),
                     "sec/epoch": _round(r.sec_per_epoch), "forward/epoch": int(round(r.forward_per_epoch)),
                     "backward/epoch": int(round(r.backward_per_epoch)),
                     "train seconds": _round(r.train_seconds)})
    return pd.DataFrame(rows)


def environment_table(frames: StoreFrames) -> pd.DataFrame:
    """The distinct environments the evaluations ran in (package versions, device, commit) and
    how the attacks ran: precision, compilation and the fidelity guard's verdict (``bench.precision``;
    evaluations stored before these existed ran in fp32, uncompiled)."""
    seen: dict[str, dict] = {}
    for env in frames.checkpoints.environment:
        env = dict(env or {})
        execution = env.pop("execution", None) or {}
        guard = execution.get("fidelity_guard")
        env["precision"] = execution.get("precision", "fp32")
        env["compile"] = bool(execution.get("compile", False))
        env["fidelity guard"] = (f"{guard['low_precision']} {100 * guard['low_precision_robust_accuracy']:.1f}% vs fp32 "
                                 f"{100 * guard['fp32_robust_accuracy']:.1f}% on {guard['n_examples']} images: "
                                 f"{'kept' if guard['passed'] else 'discarded, rerun in fp32'}") if guard else "-"
        flat = {k: (v if isinstance(v, (str, int, float, bool)) or v is None else str(v))
                for k, v in sorted(env.items())}
        seen.setdefault(str(sorted(flat.items())), flat)
    return pd.DataFrame(list(seen.values())) if seen else pd.DataFrame()


def strength_table(frames: StoreFrames) -> pd.DataFrame:
    """Per final checkpoint and protocol attack: the indicators of attack failure that fired
    (``bench.indicators``; "not recorded" for evaluations stored before them) and, for minimum-norm
    attacks, AttackBench optimality against the per-image best of the evaluation's attacks."""
    from bench.indicators import fired
    from results.optimality import attack_optimality

    finals = final_checkpoints(frames)
    out = []
    for checkpoint in finals.itertuples():
        rows = frames.store.evaluation_rows(int(checkpoint.evaluation_id))
        scores = {o.attack_id: o.value for o in attack_optimality(rows)}
        for row in rows:
            if row.get("grid_of") is not None or row["attack"] in _PSEUDO_ATTACKS:
                continue
            indicators = row.get("indicators")
            badges = "not recorded" if indicators is None else (", ".join(fired(indicators)) or "none fired")
            out.append({"label": checkpoint.label, "attack": row["attack_id"],
                        "optimality": _round(scores.get(row["attack_id"])), "indicators": badges})
    return pd.DataFrame(out)
