"""RobustBench interop: leaderboard entries as ``model_info`` JSON files, and such files imported
as reference rows shown beside our evaluations, marked "reported, not re-evaluated".

RobustBench keeps one file per model at ``model_info/<dataset>/<threat model>/<name>.json`` with
accuracies as percent strings (``"clean_acc": "85.34"``, ``"autoattack_acc": "53.42"``) and eps as
written (``"8/255"``). Export writes that layout; the robust accuracy is the stored ``autoattack``
row of the threat model, or the attack ``--attack`` names, which the file's footnote then states
(an APGD-CE column is not AutoAttack). Import reads the same layout (threat model and dataset from
the fields, else from the folders) and keeps every field as given, so export -> import -> export
reproduces the file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import select

from bench.errors import ConfigError
from results.leaderboard import latest_evaluations
from results.schema import AttackRow, CheckpointRow, DatasetRow, ReferenceRow, TrainingRun
from results.store import Store, utcnow

THREAT_MODELS = {"linf": "Linf", "l2": "L2", "l1": "L1"}
REPORTED = "reported, not re-evaluated"


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name)


def model_info_records(store: Store, protocol: str, attack_id: str | None = None) -> list[dict[str, Any]]:
    """One model_info dict per final defense checkpoint and threat model: the ``autoattack`` rows of
    its newest evaluation under ``protocol``, or the row ``attack_id``."""
    evaluations = latest_evaluations(store, protocol)
    if evaluations.empty:
        raise ConfigError(f"no evaluations stored under protocol {protocol!r}")
    ids = [int(i) for i in evaluations.evaluation_id]
    with store.connect() as conn:
        rows = pd.read_sql(select(AttackRow.evaluation_id, AttackRow.attack_id, AttackRow.attack, AttackRow.norm,
                                  AttackRow.eps, AttackRow.robust_accuracy, AttackRow.n_examples)
                           .where(AttackRow.evaluation_id.in_(ids)), conn)
        datasets = dict(conn.execute(select(TrainingRun.id, DatasetRow.name)
                                     .join(DatasetRow, TrainingRun.dataset_id == DatasetRow.id)).all())
        provenance = dict(conn.execute(select(CheckpointRow.id, TrainingRun.hparams)
                                       .join(TrainingRun, CheckpointRow.run_id == TrainingRun.id)).all())
    chosen = rows[rows.attack_id == attack_id] if attack_id else rows[rows.attack == "autoattack"]
    chosen = chosen[chosen.eps.notna() & chosen.norm.isin(list(THREAT_MODELS))]
    if chosen.empty:
        raise ConfigError(f"no {'attack ' + repr(attack_id) if attack_id else 'autoattack'} rows with a threat "
                          f"model (norm and eps) in the newest {protocol!r} evaluations; pass --attack with one "
                          f"of: {sorted(set(rows[rows.eps.notna()].attack_id))}")
    records = []
    for entry in evaluations.itertuples():
        for row in chosen[chosen.evaluation_id == entry.evaluation_id].itertuples():
            external = (provenance.get(int(entry.checkpoint_id)) or {}).get("provenance") == "external"
            info = {"name": entry.label, "dataset": datasets[int(entry.run_id)],
                    "threat_model": THREAT_MODELS[row.norm], "eps": f"{row.eps:g}",
                    "clean_acc": _percent(entry.benign_accuracy), "autoattack_acc": _percent(row.robust_accuracy),
                    "additional_data": False, "number_forward_passes": 1, "architecture": entry.arch}
            notes = [f"advarena protocol {protocol} v{int(entry.protocol_version)}, {int(row.n_examples)} test images"]
            if row.attack != "autoattack":
                notes.append(f"autoattack_acc is advarena's {row.attack_id} ({row.attack}), not AutoAttack")
            if external:
                notes.append("trained outside advarena (external checkpoint)")
            info["footnote"] = "; ".join(notes)
            records.append(info)
    return records


def export_model_info(store: Store, protocol: str, out: Path, attack_id: str | None = None) -> list[Path]:
    """Write ``out/<dataset>/<threat model>/<name>.json`` per record; returns the files."""
    return [write_model_info(out, info) for info in model_info_records(store, protocol, attack_id)]


def write_model_info(out: Path, info: dict[str, Any]) -> Path:
    """Write ``info`` to ``out/<dataset>/<threat model>/<name>.json`` (RobustBench's layout)."""
    path = out / _safe_name(str(info["dataset"])) / info["threat_model"] / f"{_safe_name(str(info['name']))}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path


def _accuracy(info: dict[str, Any], field: str, path: Path) -> float | None:
    value = info.get(field)
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: {field} must be a percentage like \"85.34\", got {value!r}") from None
    if not 0 <= number <= 100:
        raise ConfigError(f"{path}: {field} must lie in [0, 100], got {number}")
    return number / 100


def read_model_info(path: Path) -> dict[str, Any]:
    """Parse one model_info file into the reference row's fields (``info``: the file as given)."""
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(info, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(info).__name__}")
    threat = info.get("threat_model") or path.parent.name
    dataset = info.get("dataset") or path.parent.parent.name
    if threat not in (*THREAT_MODELS.values(), "corruptions"):
        raise ConfigError(f"{path}: unknown threat model {threat!r}; expected a threat_model field or a "
                          f"Linf/L2/corruptions folder")
    clean = _accuracy(info, "clean_acc", path)
    if clean is None or not dataset:
        raise ConfigError(f"{path}: needs clean_acc and a dataset (field or folder)")
    robust_field = "corruptions_acc" if threat == "corruptions" else "autoattack_acc"
    return {"name": str(info.get("name") or path.stem), "dataset": str(dataset), "threat_model": threat,
            "eps": None if info.get("eps") in (None, "") else str(info["eps"]), "clean_accuracy": clean,
            "robust_accuracy": _accuracy(info, robust_field, path), "architecture": info.get("architecture"),
            "additional_data": info.get("additional_data"), "source": str(path), "info": info}


def read_model_infos(paths: list[Path]) -> list[dict[str, Any]]:
    """The reference rows' fields of every model_info file in ``paths`` (files, or folders
    searched for .json files); any bad file is an error before anything is stored."""
    files = [f for p in paths for f in (sorted(p.rglob("*.json")) if p.is_dir() else [p])]
    if not files:
        raise ConfigError(f"no model_info .json files in {', '.join(map(str, paths))}")
    return [read_model_info(f) for f in files]


def import_model_info(store: Store, parsed: list[dict[str, Any]]) -> list[int]:
    """Store each parsed file (``read_model_infos``) as a reference row; one for the same name,
    dataset, threat model and eps replaces the earlier one."""
    ids = []
    with store.session() as session:
        for fields in parsed:
            old = session.scalar(select(ReferenceRow).where(
                ReferenceRow.name == fields["name"], ReferenceRow.dataset == fields["dataset"],
                ReferenceRow.threat_model == fields["threat_model"], ReferenceRow.eps == fields["eps"]))
            if old is not None:
                session.delete(old)
                session.flush()
            row = ReferenceRow(**fields, created_at=utcnow())
            session.add(row)
            session.flush()
            ids.append(row.id)
    return ids


def reference_infos(store: Store, dataset: str | None = None) -> list[dict[str, Any]]:
    """The imported files' fields as given (what ``export`` of a reference writes back)."""
    query = select(ReferenceRow.info).order_by(ReferenceRow.id)
    if dataset is not None:
        query = query.where(ReferenceRow.dataset == dataset)
    with store.session() as session:
        return [dict(info) for info in session.scalars(query)]


def reference_table(store: Store, dataset: str | None = None) -> pd.DataFrame:
    """Reference rows as a table in %, each marked "reported, not re-evaluated"."""
    query = select(ReferenceRow.name, ReferenceRow.dataset, ReferenceRow.architecture, ReferenceRow.threat_model,
                   ReferenceRow.eps, ReferenceRow.clean_accuracy, ReferenceRow.robust_accuracy).order_by(ReferenceRow.id)
    if dataset is not None:
        query = query.where(ReferenceRow.dataset == dataset)
    with store.connect() as conn:
        table = pd.read_sql(query, conn)
    table["clean_accuracy"] *= 100
    table["robust_accuracy"] *= 100
    table["status"] = REPORTED
    return table.rename(columns={"clean_accuracy": "clean", "robust_accuracy": "robust (reported)",
                                 "threat_model": "threat"})
