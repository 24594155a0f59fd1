"""The store as pandas frames: every analysis in ``results`` starts from these, never from a model.

Three frames, for one protocol (its newest stored version):
- ``checkpoints``: one row per evaluated defense checkpoint (final and per-epoch), with its run's
  label, suite entry, swept knob, seed, architecture, epoch and benign accuracy;
- ``attacks``: one row per (evaluation, attack) aggregate;
- ``examples``: the per-example rows of those attacks (loaded on demand, by attack rows)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import func, select

from results.schema import AttackRow, CheckpointRow, EpochRow, Evaluation, ExampleRow, TrainingRun
from results.store import Store


@dataclass
class StoreFrames:
    """What the report reads from the store for one protocol version."""

    protocol: str
    version: int
    checkpoints: pd.DataFrame
    attacks: pd.DataFrame
    training: pd.DataFrame
    store: Store

    def examples(self, attack_row_ids: list[int]) -> pd.DataFrame:
        """Per-example rows of the given attack rows, ordered by (attack row, example index)."""
        if not attack_row_ids:
            return pd.DataFrame(columns=["attack_result_id", "example_index", "clean_correct", "adv_correct",
                                         "success", "l2", "linf", "success_step", "x_l2"])
        query = (select(ExampleRow.attack_result_id, ExampleRow.example_index, ExampleRow.clean_correct,
                        ExampleRow.adv_correct, ExampleRow.success, ExampleRow.l2, ExampleRow.linf,
                        ExampleRow.success_step, ExampleRow.x_l2)
                 .where(ExampleRow.attack_result_id.in_([int(i) for i in attack_row_ids]))
                 .order_by(ExampleRow.attack_result_id, ExampleRow.example_index))
        with self.store.connect() as conn:
            return pd.read_sql(query, conn)

    def run_labels(self, checkpoint_ids: list[int]) -> dict[int, str]:
        """Checkpoint id -> its training run's label (surrogates included)."""
        query = (select(CheckpointRow.id, TrainingRun.label).join(TrainingRun, CheckpointRow.run_id == TrainingRun.id)
                 .where(CheckpointRow.id.in_(checkpoint_ids)))
        with self.store.connect() as conn:
            return {int(i): label for i, label in conn.execute(query)}


def examples_by_row(frames: "StoreFrames", attack_row_ids: list[int]) -> dict[int, pd.DataFrame]:
    """Per-example rows of the given attack rows, one frame per attack row id (rows without
    stored examples are absent)."""
    return {int(k): g for k, g in frames.examples(attack_row_ids).groupby("attack_result_id")}


def load_frames(store: Store, protocol: str) -> StoreFrames:
    """Frames of the newest stored version of ``protocol``; each checkpoint's newest evaluation."""
    query = (select(Evaluation.id.label("evaluation_id"), Evaluation.protocol_version,
                    Evaluation.benign_accuracy, Evaluation.n_examples, Evaluation.created_at,
                    Evaluation.environment, Evaluation.subset_hash, Evaluation.gallery,
                    CheckpointRow.id.label("checkpoint_id"), CheckpointRow.sha256,
                    CheckpointRow.epoch, CheckpointRow.final, CheckpointRow.arch,
                    TrainingRun.id.label("run_id"), TrainingRun.label, TrainingRun.entry, TrainingRun.sweep,
                    TrainingRun.defense, TrainingRun.seed, TrainingRun.role, TrainingRun.hparams)
             .join(CheckpointRow, Evaluation.checkpoint_id == CheckpointRow.id)
             .join(TrainingRun, CheckpointRow.run_id == TrainingRun.id)
             .where(Evaluation.protocol == protocol, TrainingRun.role == "defense"))
    with store.connect() as conn:
        checkpoints = pd.read_sql(query, conn)
    if checkpoints.empty:
        return StoreFrames(protocol, 0, checkpoints, pd.DataFrame(), pd.DataFrame(), store)
    version = int(checkpoints.protocol_version.max())
    checkpoints = checkpoints[checkpoints.protocol_version == version]
    checkpoints = (checkpoints.sort_values(["created_at", "evaluation_id"])
                   .drop_duplicates("checkpoint_id", keep="last")
                   .sort_values(["run_id", "final", "epoch"]).reset_index(drop=True))
    checkpoints["entry"] = checkpoints.entry.fillna(checkpoints.label)
    checkpoints["sweep_value"] = [_sweep_value(s) for s in checkpoints.sweep]
    checkpoints["sweep_value"] = _fill_sweep_values(checkpoints)
    ids = [int(i) for i in checkpoints.evaluation_id]
    with store.connect() as conn:
        attacks = pd.read_sql(select(AttackRow.id, AttackRow.evaluation_id, AttackRow.attack_id, AttackRow.attack,
                                     AttackRow.config, AttackRow.threat, AttackRow.norm, AttackRow.eps,
                                     AttackRow.grid_of, AttackRow.source_checkpoint_id, AttackRow.n_examples,
                                     AttackRow.robust_accuracy, AttackRow.success_rate, AttackRow.mean_l2,
                                     AttackRow.median_l2, AttackRow.seconds)
                              .where(AttackRow.evaluation_id.in_(ids)).order_by(AttackRow.id), conn)
        training = pd.read_sql(select(EpochRow.run_id, func.count(EpochRow.id).label("epochs"),
                                      func.avg(EpochRow.seconds).label("sec_per_epoch"),
                                      func.avg(EpochRow.forward_passes).label("forward_per_epoch"),
                                      func.avg(EpochRow.backward_passes).label("backward_per_epoch"),
                                      func.sum(EpochRow.seconds).label("train_seconds"))
                               .where(EpochRow.run_id.in_([int(r) for r in checkpoints.run_id.unique()]))
                               .group_by(EpochRow.run_id).order_by(EpochRow.run_id), conn)
    return StoreFrames(protocol, version, checkpoints, attacks, training, store)


def _fill_sweep_values(checkpoints: pd.DataFrame) -> pd.Series:
    """An entry's run without a recorded sweep value whose siblings sweep one knob (a suite's
    ``sweep_of`` points) takes that knob's value from its own hyper-parameters."""
    values = checkpoints.sweep_value.astype(object).copy()
    for _, group in checkpoints.groupby("entry", sort=False):
        knobs = {k for s in group.sweep if isinstance(s, dict) for k in s}
        if len(knobs) != 1:
            continue
        knob = knobs.pop()
        for index, row in group[group.sweep_value.isna()].iterrows():
            value = (row.hparams or {}).get(knob)
            values[index] = float(value) if isinstance(value, (int, float)) else None
    return pd.to_numeric(values, errors="coerce")


def _sweep_value(sweep: object) -> float | None:
    if isinstance(sweep, dict) and len(sweep) == 1:
        value = next(iter(sweep.values()))
        return float(value) if isinstance(value, (int, float)) else None
    return None


def white_box_config(transfer_config: dict[str, Any]) -> dict[str, Any]:
    """The stored configuration of a transfer attack's base attack run as itself, white-box: the
    transfer's base config less the crafting flag (``run_all_steps``) that ``for_transfer`` adds."""
    return {k: v for k, v in (transfer_config.get("base") or {}).items() if k != "run_all_steps"}
