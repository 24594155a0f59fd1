"""Reproducibility audit of a stored checkpoint (docs/design.md, "Audits").

Re-hash the weights (a mismatch stops the audit: nothing is loaded), reload, re-run benign accuracy
and the chosen stored attacks with the stored protocol, seeds and eval subset, and compare: on CPU
every per-example outcome must be identical; elsewhere the accuracies must agree within a
tolerance. The recorded environment is diffed against the current one. Each item gets a verdict:
reproduced, differs, or cannot check (with the reason)."""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.audit.masking import Flag, Reattack, masking_flags
from attacks import ATTACKS
from bench.checkpoints import WEIGHTS_FILE, file_sha256, load_aux, load_checkpoint, read_checkpoint
from bench.datasets import load_dataset
from bench.environment import environment_record
from bench.errors import AdvarenaError
from bench.precision import Precision, prepare
from bench.evaluate import (SourceModel, build_attack, eval_subset, predict, robust_points, run_attack,
                            subset_hash)
from bench.suite import Protocol, load_protocol
from results.schema import CheckpointRow, Evaluation
from results.store import Store

REPRODUCED, DIFFERS, CANNOT_CHECK = "reproduced", "differs", "cannot check"
#: Default attacks re-run: protocol attack ids matched by these wildcards.
DEFAULT_ATTACKS = ("fgsm-*", "pgd40-linf-*")
#: Accuracy tolerance (points) off the CPU, where kernels need not be deterministic.
DEVICE_TOLERANCE = 0.5


@dataclass
class AuditItem:
    name: str
    verdict: str
    detail: str
    expected: float | str | None = None
    observed: float | str | None = None


@dataclass
class AuditReport:
    checkpoint_id: int
    label: str
    items: list[AuditItem] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)
    environment_diff: dict[str, Any] = field(default_factory=dict)
    evaluation_id: int | None = None

    @property
    def verdict(self) -> str:
        verdicts = {item.verdict for item in self.items}
        return DIFFERS if DIFFERS in verdicts else CANNOT_CHECK if CANNOT_CHECK in verdicts or not verdicts \
            else REPRODUCED

    def as_row(self, environment: dict[str, Any]) -> dict[str, Any]:
        return {"checkpoint_id": self.checkpoint_id, "evaluation_id": self.evaluation_id, "kind": "reproduce",
                "verdict": self.verdict, "items": [asdict(i) for i in self.items],
                "flags": [f.as_dict() for f in self.flags], "environment_diff": self.environment_diff,
                "environment": environment}


def environment_diff(stored: dict[str, Any], current: dict[str, Any]) -> dict[str, list[Any]]:
    """Keys whose values differ (package versions flattened as ``packages.NAME``): [stored, now].
    The evaluation's ``execution`` record (precision, compile) describes how it ran, not the
    machine, and the re-run replays it: it is not compared."""
    def flat(env: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in env.items() if k not in ("packages", "execution")}
        out.update({f"packages.{k}": v for k, v in (env.get("packages") or {}).items()})
        return out

    old, new = flat(stored or {}), flat(current)
    return {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def audit_checkpoint(store: Store, row: CheckpointRow, label: str, device: torch.device,
                     attack_patterns: tuple[str, ...] = DEFAULT_ATTACKS, data_root: str | None = None,
                     protocol: str | None = None, masking_tolerance: float = 2.0) -> AuditReport:
    """Audit one stored checkpoint against its newest evaluation (under ``protocol`` if given)."""
    report = AuditReport(row.id, label)
    weights = Path(row.path) / WEIGHTS_FILE
    if not weights.is_file():
        report.items.append(AuditItem("sha256", CANNOT_CHECK, f"{weights} is missing"))
        return report
    actual = file_sha256(weights)
    if actual != row.sha256:
        report.items.append(AuditItem("sha256", DIFFERS, "weights file changed since it was stored; not loaded",
                                      row.sha256, actual))
        return report
    report.items.append(AuditItem("sha256", REPRODUCED, "weights file matches the stored sha256",
                                  row.sha256, actual))
    evaluation = store.latest_evaluation(row.id, protocol)
    if evaluation is None:
        report.items.append(AuditItem("evaluation", CANNOT_CHECK, "no stored evaluation of this checkpoint"))
        return report
    report.evaluation_id = evaluation.id
    report.environment_diff = environment_diff(evaluation.environment, environment_record(device))
    try:
        _reproduce_evaluation(store, row, evaluation, report, device, attack_patterns, data_root,
                              masking_tolerance)
    except AdvarenaError as err:
        report.items.append(AuditItem("evaluation", CANNOT_CHECK, str(err)))
    return report


def _reproduce_evaluation(store: Store, row: CheckpointRow, evaluation: Evaluation, report: AuditReport,
                          device: torch.device, attack_patterns: tuple[str, ...], data_root: str | None,
                          masking_tolerance: float) -> None:
    spec = stored_protocol(evaluation)
    if spec.content_hash() != evaluation.protocol_hash:
        report.items.append(AuditItem("protocol", CANNOT_CHECK,
                                      f"the shipped protocol {evaluation.protocol!r} is now v{spec.version} "
                                      f"with other content than the stored v{evaluation.protocol_version}"))
        return
    dataset = load_dataset(spec.dataset, data_root)
    if dataset.fingerprint() != read_checkpoint(row.path).meta["dataset"]["fingerprint"]:
        report.items.append(AuditItem("dataset", DIFFERS, "the dataset's bytes changed since training"))
        return
    indices = eval_subset(dataset.x_test.shape[0], spec.eval_subset.size, spec.eval_subset.seed)
    if subset_hash(indices) != evaluation.subset_hash:
        report.items.append(AuditItem("eval subset", DIFFERS, "the eval subset's indices changed"))
        return
    model, _ = load_checkpoint(row.path, device)
    x, y = dataset.x_test[indices].to(device), dataset.y_test[indices].to(device)
    exact = device.type == "cpu"
    tolerance = 0.0 if exact else DEVICE_TOLERANCE
    clean_correct = predict(model, x, spec.batch_size).cpu() == y.cpu()
    benign = float(clean_correct.float().mean())
    report.items.append(compare_accuracy("benign accuracy", evaluation.benign_accuracy, benign, tolerance))
    stored = store.evaluation_rows(evaluation.id)
    by_id = {r["attack_id"]: r for r in stored}
    chosen = [s for s, _ in spec.expanded_attacks() if any(fnmatch.fnmatchcase(s.id, p) for p in attack_patterns)]
    # the attacks ran in the precision the evaluation records (fp32 where the fidelity guard fell back)
    executed = (evaluation.environment or {}).get("execution", {})
    attacked = prepare(model, Precision(executed.get("precision", "fp32")), bool(executed.get("compile", False)))
    for attack_spec in chosen:
        report.items.append(_rerun(store, attack_spec, by_id.get(attack_spec.id), attacked, x, y, clean_correct,
                                   spec.batch_size, device, exact, tolerance))
    report.flags = masking_flags(stored, evaluation.benign_accuracy, masking_tolerance,
                                 Reattack(model, x, y, spec.batch_size, clean_correct))


def stored_protocol(evaluation: Evaluation) -> Protocol:
    """The protocol an evaluation ran: stored with it (migration 0004), else the shipped file."""
    if evaluation.protocol_spec:
        return Protocol.model_validate(evaluation.protocol_spec)
    return load_protocol(evaluation.protocol)


def compare_accuracy(name: str, expected: float, observed: float, tolerance: float,
                     observed_as: str = "now") -> AuditItem:
    """Reproduced when the accuracies (fractions) differ by at most ``tolerance`` points."""
    diff = 100 * abs(observed - expected)
    verdict = REPRODUCED if diff <= tolerance + 1e-9 else DIFFERS
    return AuditItem(name, verdict, f"stored {100 * expected:.2f}%, {observed_as} {100 * observed:.2f}% "
                                    f"(tolerance {tolerance:g} points)", round(expected, 6), round(observed, 6))


def _rerun(store: Store, spec, stored: dict[str, Any] | None, model, x, y, clean_correct: torch.Tensor,
           batch_size: int, device: torch.device, exact: bool, tolerance: float) -> AuditItem:
    name = f"attack {spec.id}"
    if stored is None:
        return AuditItem(name, CANNOT_CHECK, "not in the stored evaluation")
    sources = {}
    if spec.source:
        with store.session() as session:
            source = session.get(CheckpointRow, stored["source_checkpoint_id"]) if stored["source_checkpoint_id"] else None
            source_path, source_sha = (source.path, source.sha256) if source else (None, None)
        if source_path is None:
            return AuditItem(name, CANNOT_CHECK, "its source checkpoint is not stored")
        if spec.source_kind == "defense":  # a learned attacker saved beside that classifier
            source_model, aux = load_aux(source_path, ATTACKS.get(spec.attack).metadata["learned_aux"], device)
            source_sha = aux.sha256
        else:
            source_model, _ = load_checkpoint(source_path, device)
        sources[spec.source] = SourceModel(source_model, source_sha)
    attack = build_attack(spec, sources)
    if attack.key() != stored["attack_key"]:
        return AuditItem(name, CANNOT_CHECK, "the attack's configuration changed since it was stored")
    outcome = run_attack(attack, model, x, y, batch_size)
    robust = float(robust_points(outcome["pred"], y.cpu(), clean_correct).float().mean())
    item = compare_accuracy(name, stored["robust_accuracy"], robust, tolerance)
    if exact:
        previous = torch.tensor([e["success"] for e in stored["examples"]])
        flipped = int((previous != outcome["success"]).sum())
        if flipped:
            item.verdict = DIFFERS
        item.detail += f"; {flipped} of {len(previous)} per-example outcomes differ"
    return item
