"""``advarena audit --retrain``: train the stored run again from its recorded defense,
hyper-parameters, architecture and seed, and compare benign and robust accuracy with the stored
evaluation within a tolerance (training is not bit-exact across machines and thread counts)."""

from __future__ import annotations

import torch

from bench.audit.reproduce import CANNOT_CHECK, AuditItem, AuditReport, compare_accuracy, stored_protocol
from bench.datasets import load_dataset
from bench.evaluate import build_attack, eval_subset, predict, robust_points, run_attack
from bench.jobs import TrainJob
from bench.runner import build_untrained
from defenses import build_trainer
from results.schema import CheckpointRow, TrainingRun
from results.store import Store

#: Default tolerance in accuracy points.
RETRAIN_TOLERANCE = 1.0


def retrain_checkpoint(store: Store, row: CheckpointRow, run: TrainingRun, device: torch.device,
                       data_root: str | None = None, tolerance: float = RETRAIN_TOLERANCE) -> AuditReport:
    report = AuditReport(row.id, run.label)
    evaluation = store.latest_evaluation(row.id)
    if evaluation is None:
        report.items.append(AuditItem("retrain", CANNOT_CHECK, "no stored evaluation to compare with"))
        return report
    if row.meta.get("init_from"):
        report.items.append(AuditItem("retrain", CANNOT_CHECK, "fine-tuned run: retrain its parent first"))
        return report
    report.evaluation_id = evaluation.id
    protocol = stored_protocol(evaluation)
    dataset = load_dataset(protocol.dataset, data_root)
    job = TrainJob(label=run.label, role=run.role, defense=run.defense, hparams=dict(run.hparams), arch=run.arch,
                   arch_params=dict(run.arch_params), seed=run.seed)
    model = build_untrained(job, dataset).to(device)
    result = build_trainer(run.defense, dict(run.hparams)).fit(model, dataset, run.seed, progress=False)
    model = result.model.eval()
    indices = eval_subset(dataset.x_test.shape[0], protocol.eval_subset.size, protocol.eval_subset.seed)
    x, y = dataset.x_test[indices].to(device), dataset.y_test[indices].to(device)
    clean_correct = predict(model, x, protocol.batch_size).cpu() == y.cpu()
    benign = float(clean_correct.float().mean())
    report.items.append(compare_accuracy("retrained benign accuracy", evaluation.benign_accuracy, benign,
                                         tolerance, "retrained"))
    stored = {r["attack_id"]: r for r in store.evaluation_rows(evaluation.id)}
    spec = next((s for s in protocol.attacks if s.attack == "pgd" and s.id in stored), None)
    if spec is not None:
        outcome = run_attack(build_attack(spec, {}), model, x, y, protocol.batch_size)
        robust = float(robust_points(outcome["pred"], y.cpu(), clean_correct).float().mean())
        report.items.append(compare_accuracy(f"retrained {spec.id}", stored[spec.id]["robust_accuracy"], robust,
                                             tolerance, "retrained"))
    return report

