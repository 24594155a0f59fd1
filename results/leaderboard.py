"""The leaderboard: a pandas table built from the store by SQL, never by attacking again."""

from __future__ import annotations

import pandas as pd
from sqlalchemy import func, select

from results.schema import AttackRow, AuditRow, CheckpointRow, EpochRow, Evaluation, TrainingRun
from results.store import Store


#: Attacks whose rows feed curves and the report's tables, not a leaderboard column (the FGS
#: line's median is an Linf size; the report shows its eps_ref table).
CURVE_ONLY_ATTACKS = ("fgs-line",)


def latest_evaluations(store: Store, protocol: str) -> pd.DataFrame:
    """One row per final defense checkpoint: its newest evaluation under the protocol's newest version."""
    query = (select(Evaluation.id.label("evaluation_id"), Evaluation.protocol_version,
                    Evaluation.benign_accuracy, Evaluation.created_at, TrainingRun.id.label("run_id"),
                    TrainingRun.label, TrainingRun.defense, TrainingRun.seed, CheckpointRow.arch,
                    CheckpointRow.id.label("checkpoint_id"))
             .join(CheckpointRow, Evaluation.checkpoint_id == CheckpointRow.id)
             .join(TrainingRun, CheckpointRow.run_id == TrainingRun.id)
             .where(Evaluation.protocol == protocol, CheckpointRow.final.is_(True),
                    TrainingRun.role == "defense"))
    with store.engine.connect() as conn:
        frame = pd.read_sql(query, conn)
    if frame.empty:
        return frame
    frame = frame[frame.protocol_version == frame.protocol_version.max()]
    frame = frame.sort_values(["created_at", "evaluation_id"]).groupby("run_id", as_index=False).last()
    return frame.sort_values("run_id").reset_index(drop=True)


def leaderboard(store: Store, protocol: str) -> pd.DataFrame:
    """Benign accuracy, robust accuracy per attack (black-box columns marked), sec/epoch; in %."""
    evaluations = latest_evaluations(store, protocol)
    if evaluations.empty:
        return pd.DataFrame()
    ids = [int(i) for i in evaluations.evaluation_id]
    with store.engine.connect() as conn:
        attacks = pd.read_sql(select(AttackRow.evaluation_id, AttackRow.id, AttackRow.attack_id,
                                     AttackRow.threat, AttackRow.eps, AttackRow.robust_accuracy,
                                     AttackRow.median_l2)
                              .where(AttackRow.evaluation_id.in_(ids), AttackRow.grid_of.is_(None),
                                     AttackRow.attack.notin_(CURVE_ONLY_ATTACKS)), conn)
        timing = pd.read_sql(select(EpochRow.run_id, func.avg(EpochRow.seconds).label("sec_per_epoch"))
                             .where(EpochRow.run_id.in_([int(r) for r in evaluations.run_id]))
                             .group_by(EpochRow.run_id), conn)
    order = attacks.sort_values("id").drop_duplicates("attack_id")
    names = {row.attack_id: _column_name(row) for row in order.itertuples()}
    # bounded attacks: robust accuracy in %; minimum-norm attacks (no eps): median L2 of the
    # perturbations that fooled correctly classified points
    attacks["value"] = attacks.robust_accuracy.where(attacks.eps.notna(), attacks.median_l2)
    attacks.loc[attacks.eps.notna(), "value"] *= 100
    robust = attacks.pivot(index="evaluation_id", columns="attack_id", values="value")
    robust = robust[list(order.attack_id)].rename(columns=names)
    table = evaluations.merge(timing, on="run_id", how="left").set_index("evaluation_id")
    badges = audit_badges(store)
    table["audit"] = [badges.get(int(c), "-") for c in table.checkpoint_id]
    table = table[["label", "defense", "arch", "seed", "benign_accuracy", "sec_per_epoch", "audit"]].join(robust)
    table["benign_accuracy"] *= 100
    columns = ["label", "defense", "arch", "seed", "benign_accuracy", *names.values(), "sec_per_epoch", "audit"]
    return table[columns].rename(columns={"benign_accuracy": "benign", "sec_per_epoch": "sec/epoch"}
                                 ).reset_index(drop=True)


def audit_badges(store: Store) -> dict[int, str]:
    """Per checkpoint id, its newest reproducibility audit as a badge: the verdict, then the
    gradient-masking flags it raised (``bench.audit.masking``), e.g. "reproduced" or
    "reproduced [!ce-cw-disagree]"."""
    with store.engine.connect() as conn:
        audits = pd.read_sql(select(AuditRow.checkpoint_id, AuditRow.verdict, AuditRow.flags)
                             .where(AuditRow.kind == "reproduce").order_by(AuditRow.id), conn)
    badges = {}
    for row in audits.itertuples():  # later rows overwrite earlier ones
        raised = list(dict.fromkeys(f["check"] for f in (row.flags or []) if f.get("flagged")))
        badges[int(row.checkpoint_id)] = row.verdict + (f" [!{' !'.join(raised)}]" if raised else "")
    return badges


def _column_name(row) -> str:
    if row.threat == "black-box":
        return f"{row.attack_id} (black-box)"
    if pd.isna(row.eps):
        return f"{row.attack_id} median L2"
    return row.attack_id


def format_table(table: pd.DataFrame, protocol: str) -> str:
    if table.empty:
        return f"no evaluations stored under protocol {protocol!r}"
    header = (f"Leaderboard, protocol {protocol}: accuracy in % on the eval subset "
              "(robust columns: accuracy under that attack; 'median L2' columns: median size of the "
              "minimum-norm attack's successful perturbations, in [0, 1] pixel units)")
    formatters = {c: "{:.3f}".format for c in table.columns if str(c).endswith("median L2")}
    return header + "\n" + table.to_string(index=False, float_format=lambda v: f"{v:.1f}",
                                           formatters=formatters, na_rep="-")
