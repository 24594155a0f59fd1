"""The standardized evaluator: attack one model with every attack of a protocol on the protocol's
fixed eval subset, and return per-attack aggregates plus per-example rows ready for the store."""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from attacks import ATTACKS, Attack
from attacks.base import canonical_hash
from bench.datasets import Dataset
from bench.enums import PseudoAttack
from bench.errors import ConfigError
from bench.indicators import TraceFlags, readings
from bench.precision import GuardResult, Precision, guard_size, judge, prepare
from bench.suite import AttackSpec, Protocol

log = logging.getLogger("advarena")


@dataclass(frozen=True)
class SourceModel:
    """A network an attack runs: a transfer surrogate or a trained attacker, with its checkpoint's
    sha256 and the id of the stored checkpoint it belongs to (the attacker's classifier)."""

    model: nn.Module
    sha256: str
    checkpoint_id: int | None = None


def eval_subset(n_test: int, size: int, seed: int) -> np.ndarray:
    """The protocol's eval indices into the test split: all of it when ``size >= n_test``, else
    ``size`` indices drawn without replacement by ``np.random.RandomState(seed)``; sorted."""
    if size >= n_test:
        return np.arange(n_test)
    return np.sort(np.random.RandomState(seed).choice(n_test, size=size, replace=False))


def subset_hash(indices: np.ndarray) -> str:
    return canonical_hash([int(i) for i in indices])


def build_attack(spec: AttackSpec, sources: dict[str, SourceModel]) -> Attack:
    """Instantiate a protocol attack; one that runs a trained network of the suite (a transfer
    source, a learned attacker) gets it from ``sources`` by the spec's ``source`` name."""
    if spec.source is None:
        return ATTACKS.create(spec.attack, **spec.params)
    if spec.source not in sources:
        raise ConfigError(f"attack {spec.id!r} needs {spec.source_kind} {spec.source!r}, which the suite does "
                          f"not provide (provided: {sorted(sources) or 'none'})")
    source = sources[spec.source]
    return ATTACKS.create(spec.attack, **spec.params, source_model=source.model, source_id=source.sha256)


#: Bump when a change to the evaluator changes what a given evaluation stores (2: a point is
#: robust only if it is also classified correctly when clean).
EVALUATOR_VERSION = 2


def evaluation_key(checkpoint_sha: str, protocol: Protocol, subset: str,
                   attacks: dict[str, Attack]) -> str:
    """Content key of an evaluation: checkpoint, protocol content, subset, resolved attacks and
    the evaluator's version."""
    return canonical_hash({"checkpoint": checkpoint_sha, "protocol": protocol.content_hash(),
                           "subset": subset, "attacks": {k: a.key() for k, a in attacks.items()},
                           "evaluator": EVALUATOR_VERSION})


def robust_points(pred: torch.Tensor, y: torch.Tensor, clean_correct: torch.Tensor) -> torch.Tensor:
    """Robust = classified correctly clean and under attack (a clean error stays an error even when
    a random start or a transferred adversarial happens to fix it), as AutoAttack counts."""
    return (pred == y) & clean_correct


def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Predicted labels (on the model's device) of ``x``, which may stay in host memory: batches
    are copied to the device one at a time."""
    from bench.datasets.loader import eval_batches

    was_training = model.training
    model.eval()
    device = _model_device(model, x)
    with torch.no_grad():
        preds = [model(xb).argmax(1) for xb, _ in eval_batches(x, None, batch_size, device)]
    model.train(was_training)
    return torch.cat(preds)


def _model_device(model: nn.Module, x: torch.Tensor) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else x.device


#: Images of each evaluation kept for the report's gallery: the same seeded positions of the eval
#: subset for every defense (so every defense's page shows the same digits).
GALLERY_SIZE = 8
GALLERY_SEED = 0


def gallery_positions(n: int, size: int = GALLERY_SIZE, seed: int = GALLERY_SEED) -> np.ndarray:
    """Sorted positions into the eval subset of the gallery images: ``size`` drawn without
    replacement by ``np.random.default_rng(seed)`` (its own generator, not the global one)."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))


def run_attack(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               batch_size: int, progress: bool = False, label: str = "",
               keep: np.ndarray | None = None) -> dict[str, Any]:
    """Attack ``x`` in batches of ``batch_size`` with one generator for the whole set (a
    ``whole_set`` attack gets every image in one call and batches internally). ``x`` and ``y``
    may stay in host memory: each batch is copied to the model's device as it is attacked. With
    ``keep`` (sorted positions), the adversarial images at those positions come back as ``kept``."""
    device = _model_device(model, x)
    generator = attack.make_generator(device)
    kept: list[torch.Tensor] = []
    parts: dict[str, list[torch.Tensor]] = {"success": [], "pred": [], "l2": [], "linf": [], "success_step": []}
    flags: list[TraceFlags] = []
    forward = backward = 0
    chunk = x.shape[0] if attack.whole_set else batch_size
    start = time.perf_counter()
    for begin in tqdm(range(0, x.shape[0], chunk), desc=label, leave=False, unit="batch",
                      disable=None if progress else True):
        result = attack(model, x[begin:begin + chunk].to(device, non_blocking=True),
                        y[begin:begin + chunk].to(device, non_blocking=True), generator)
        for name in parts:
            value = getattr(result, name)
            if value is not None:
                parts[name].append(value.detach().cpu())
        if keep is not None:
            inside = keep[(keep >= begin) & (keep < begin + chunk)] - begin
            kept.append(result.x_adv[torch.as_tensor(inside, dtype=torch.long, device=result.x_adv.device)]
                        .detach().cpu())
        forward += result.forward_passes
        backward += result.backward_passes
        flags.append(TraceFlags.of_batch(result.trace, result.success))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "forward": forward, "backward": backward,
            "flags": TraceFlags.concatenate(flags),
            "kept": torch.cat(kept) if kept else None,
            **{name: torch.cat(values) if values else None for name, values in parts.items()}}


class PartialRows:
    """Each finished attack's row, kept in a folder until the whole evaluation is stored, so that an
    evaluation interrupted after some attacks resumes from the next one. The folder is named by the
    evaluation's content key, so a kept row is only ever reused for the same checkpoint, protocol,
    subset and attacks; rows are written atomically (temp file + rename)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _file(self, position: int, attack_id: str) -> Path:
        return self.folder / f"{position:03d}-{canonical_hash(attack_id)[:12]}.json"

    def get(self, position: int, attack_id: str) -> dict[str, Any] | None:
        path = self._file(position, attack_id)
        try:
            row = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return row if row.get("attack_id") == attack_id else None

    def keep(self, position: int, row: dict[str, Any]) -> None:
        from bench.checkpoints import atomic_write

        self.folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(row)
        atomic_write(self._file(position, row["attack_id"]), lambda tmp: tmp.write_text(text))

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def evaluate_model(model: nn.Module, dataset: Dataset, protocol: Protocol,
                   sources: dict[str, SourceModel], device: torch.device, progress: bool = True,
                   label: str = "", partial: PartialRows | None = None,
                   gallery_dir: Path | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Attack ``model`` with every protocol attack; returns (evaluation fields, attack rows). With
    ``partial``, each attack's row is kept as it finishes and a row kept earlier is reused. With
    ``gallery_dir``, the gallery images are written there (``write_gallery``) and the evaluation
    points to the file.

    Below fp32 (``protocol.precision``) the fidelity guard reruns the first gradient attack in
    fp32 on a fixed slice; if the low-precision result is weaker there, every attack is rerun in
    fp32. ``evaluation["execution"]`` says which precision the stored rows come from, and why."""
    indices = eval_subset(dataset.x_test.shape[0], protocol.eval_subset.size, protocol.eval_subset.seed)
    # The eval subset stays in host memory (pinned on CUDA); batches go to the device as attacked.
    x, y = dataset.x_test[indices], dataset.y_test[indices]
    if device.type == "cuda":
        x, y = x.pin_memory(), y.pin_memory()
    start = time.perf_counter()
    clean_pred = predict(model, x, protocol.batch_size).cpu()
    clean_correct = clean_pred == y.cpu()
    # a second clean forward: a model that labels the same images differently is randomized
    unstable = predict(model, x, protocol.batch_size).cpu() != clean_pred
    subset = Subset(indices, x, y, clean_correct, x.flatten(1).norm(dim=1).cpu(), unstable)
    requested = Precision(protocol.precision)
    execution: dict[str, Any] = {"precision": requested.value, "compile": protocol.compile}
    if requested is not Precision.FP32:
        guard_attack(protocol)   # a protocol the guard cannot check is refused before any attack runs
    attack_model = prepare(model, requested, protocol.compile)
    keep = gallery_positions(len(indices)) if gallery_dir is not None else None
    rows = _attack_all(attack_model, protocol, sources, subset, progress, label, partial, keep)
    if requested is not Precision.FP32:
        guard = _fidelity_guard(model, protocol, sources, subset, rows, requested, label)
        execution["fidelity_guard"] = guard.record()
        if not guard.passed:
            log.warning("%s: the fidelity guard discarded the %s results (%s); rerunning every attack in fp32",
                        label, requested.value, guard.summary())
            if partial is not None:
                partial.clear()
            execution["precision"] = Precision.FP32.value
            rows = _attack_all(prepare(model, Precision.FP32, protocol.compile), protocol, sources, subset,
                               progress, label, None, keep)
    protocol_rows = [r for r in rows if r["grid_of"] is None]
    rows.extend(worst_case_rows(protocol_rows, clean_pred, y.cpu(), indices))
    if protocol.minimum_norm_worst_case:
        rows.extend(minimum_norm_worst_case_rows(protocol_rows, clean_pred, y.cpu(), indices))
    evaluation = {"protocol": protocol.name, "protocol_version": protocol.version,
                  "protocol_hash": protocol.content_hash(), "protocol_spec": protocol.spec(),
                  "subset_hash": subset_hash(indices),
                  "n_examples": int(len(indices)), "benign_accuracy": float(clean_correct.float().mean()),
                  "seconds": time.perf_counter() - start, "execution": execution}
    adversarial = {row["attack_id"]: row.pop("gallery_adv") for row in rows if "gallery_adv" in row}
    if gallery_dir is not None and keep is not None:
        evaluation["gallery"] = write_gallery(gallery_dir, x[keep].cpu(), y.cpu()[keep], clean_pred[keep],
                                              indices[keep], keep, rows, adversarial)
    return evaluation, rows


@dataclass(frozen=True)
class Subset:
    """The protocol's eval images (in host memory; batches go to the device as attacked), their
    labels and what is known of them clean."""

    indices: np.ndarray
    x: torch.Tensor
    y: torch.Tensor
    clean_correct: torch.Tensor   # on the CPU
    x_l2: torch.Tensor            # on the CPU
    unstable: torch.Tensor | None = None   # labelled differently by a second clean forward (CPU)


def _attack_all(model: nn.Module, protocol: Protocol, sources: dict[str, SourceModel], subset: Subset,
                progress: bool, label: str, partial: PartialRows | None,
                keep: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One row per protocol attack (grid points included), in protocol order; with ``keep``, each
    protocol attack's row also holds the adversarial images at those positions (``gallery_adv``)."""
    specs = protocol.expanded_attacks()
    attacks = {spec.id: build_attack(spec, sources) for spec, _ in specs}
    rows = []
    for position, (spec, grid_of) in enumerate(tqdm(specs, desc=f"{label} attacks".strip(), unit="attack",
                                                    leave=False, disable=None if progress else True)):
        kept = partial.get(position, spec.id) if partial is not None else None
        if kept is not None:
            log.info("%s: %s done before the interruption; reusing its kept row", label, spec.id)
            rows.append(kept)
            continue
        attack = attacks[spec.id]
        outcome = run_attack(attack, model, subset.x, subset.y, protocol.batch_size, progress,
                             f"{label} {spec.id}".strip(), keep if grid_of is None else None)
        check_budget(spec, outcome, len(subset.indices))
        rows.append({**_attack_row(spec, attack, outcome, subset.clean_correct, subset.y.cpu(), subset.indices,
                                   subset.x_l2, sources), "grid_of": grid_of,
                     "indicators": _indicators(spec, attack, outcome, subset)})
        if outcome["kept"] is not None:
            rows[-1]["gallery_adv"] = outcome["kept"].to(torch.float16).tolist()
        if partial is not None:
            partial.keep(position, rows[-1])
    return rows


def check_budget(spec: AttackSpec, outcome: dict[str, Any], images: int) -> None:
    """A fixed query budget (``AttackSpec.max_passes_per_image``) the attack's counted passes
    exceeded is a bug in the attack's declared bound: refused, nothing stored."""
    if spec.max_passes_per_image is None or not images:
        return
    spent = (outcome["forward"] + outcome["backward"]) / images
    if spent > spec.max_passes_per_image:
        from attacks import AttackCheckError

        raise AttackCheckError(f"{spec.id}: spent {spent:.1f} forward+backward passes per image, above its "
                               f"max_passes_per_image {spec.max_passes_per_image}")


def _indicators(spec: AttackSpec, attack: Attack, outcome: dict[str, Any], subset: Subset) -> dict[str, Any]:
    """The row's indicators of attack failure (``bench.indicators``) from its attack's trace."""
    metadata = ATTACKS.get(spec.attack).metadata
    return readings(outcome["flags"], outcome["success"], subset.clean_correct,
                    unbounded=bool(metadata.get("unbounded")), minimum_norm=attack.eps is None,
                    unstable=subset.unstable)


def guard_attack(protocol: Protocol) -> AttackSpec:
    """The attack the fidelity guard reruns: the protocol's first that follows the model's
    gradients (registry metadata ``gradients``)."""
    for spec in protocol.attacks:
        if ATTACKS.get(spec.attack).metadata.get("gradients"):
            return spec
    raise ConfigError(f"precision {protocol.precision.value}: protocol {protocol.name!r} has no gradient attack "
                      f"for the fidelity guard to rerun in fp32 (attacks: {[a.attack for a in protocol.attacks]})")


def _fidelity_guard(model: nn.Module, protocol: Protocol, sources: dict[str, SourceModel], subset: Subset,
                    rows: list[dict[str, Any]], precision: Precision, label: str) -> GuardResult:
    """Rerun the guard attack in fp32 on the first ``guard_size`` images of the subset and compare
    its robust points with the low-precision row's on the same images."""
    spec = guard_attack(protocol)
    k = guard_size(len(subset.indices))
    outcome = run_attack(build_attack(spec, sources), model, subset.x[:k], subset.y[:k], protocol.batch_size,
                         False, f"{label} fidelity guard {spec.id}".strip())
    fp32_robust = robust_points(outcome["pred"], subset.y[:k].cpu(), subset.clean_correct[:k])
    row = next(r for r in rows if r["attack_id"] == spec.id)
    low_robust = torch.tensor([e["adv_correct"] for e in row["examples"][:k]])
    return judge(spec.id, precision, low_robust, fp32_robust)


def write_gallery(folder: Path, clean: torch.Tensor, labels: torch.Tensor, clean_pred: torch.Tensor,
                  example_index: np.ndarray, positions: np.ndarray, rows: list[dict[str, Any]],
                  adversarial: dict[str, list]) -> dict[str, Any]:
    """Write the gallery as ``folder/<sha256>.npz`` (content-addressed: float16 clean and
    adversarial images, labels and predictions per attack) and return the evaluation's pointer to
    it: the file name under the work directory, its sha256, the images' eval-subset positions and
    dataset indices, and the attacks it holds."""
    import hashlib
    import io

    arrays: dict[str, np.ndarray] = {"clean": clean.to(torch.float16).numpy(), "label": labels.numpy(),
                                     "clean_pred": clean_pred.numpy(), "example_index": example_index.astype(np.int64)}
    ids = []
    for row in rows:
        if row["attack_id"] not in adversarial:
            continue
        ids.append(row["attack_id"])
        arrays[f"adv/{row['attack_id']}"] = np.asarray(adversarial[row["attack_id"]], dtype=np.float16)
        arrays[f"pred/{row['attack_id']}"] = np.asarray([row["examples"][int(p)]["pred"] for p in positions],
                                                        dtype=np.int64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    digest = hashlib.sha256(b"".join(name.encode() + arrays[name].tobytes() for name in sorted(arrays))).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}.npz"
    if not path.exists():
        from bench.checkpoints import atomic_write

        data = buffer.getvalue()
        atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return {"file": f"{folder.name}/{path.name}", "sha256": digest, "positions": [int(p) for p in positions],
            "example_index": [int(i) for i in example_index], "attacks": ids}


def _attack_row(spec: AttackSpec, attack: Attack, outcome: dict[str, Any], clean_correct: torch.Tensor,
                y: torch.Tensor, indices: np.ndarray, x_l2: torch.Tensor,
                sources: dict[str, SourceModel]) -> dict[str, Any]:
    adv_correct = robust_points(outcome["pred"], y, clean_correct)
    success = outcome["success"]
    on_correct = success[clean_correct]
    fooled_l2 = outcome["l2"][success & clean_correct].tolist()
    steps = (outcome["success_step"].tolist() if outcome["success_step"] is not None
             else [-1] * len(indices))
    examples = [{"example_index": int(i), "label": int(lab), "clean_correct": bool(c), "adv_correct": bool(a),
                 "success": bool(s), "l2": float(l2), "linf": float(li), "pred": int(p),
                 "success_step": int(t) if t >= 0 else None, "x_l2": float(n)}
                for i, lab, c, a, s, l2, li, p, t, n in zip(indices, y.tolist(), clean_correct.tolist(),
                                                            adv_correct.tolist(), success.tolist(),
                                                            outcome["l2"].tolist(), outcome["linf"].tolist(),
                                                            outcome["pred"].tolist(), steps, x_l2.tolist())]
    source = sources.get(spec.source) if spec.source else None
    return {"attack_id": spec.id, "attack": spec.attack, "attack_key": attack.key(), "config": attack.config(),
            "threat": spec.threat, "norm": attack.norm.value if attack.norm else None, "eps": attack.eps,
            "source_checkpoint_id": source.checkpoint_id if source else None,
            "n_examples": len(examples), "robust_accuracy": float(adv_correct.float().mean()),
            "success_rate": float(on_correct.float().mean()) if on_correct.numel() else 0.0,
            "mean_l2": statistics.fmean(fooled_l2) if fooled_l2 else None,
            "median_l2": statistics.median(fooled_l2) if fooled_l2 else None,
            "forward_passes": outcome["forward"], "backward_passes": outcome["backward"],
            "seconds": outcome["seconds"], "examples": examples}


def _threat_size(row: dict[str, Any], norm: str) -> list[float]:
    return [example["linf" if norm == "linf" else "l2"] for example in row["examples"]]


def worst_case_rows(rows: list[dict[str, Any]], clean_pred: torch.Tensor, y: torch.Tensor,
                    indices: np.ndarray) -> list[dict[str, Any]]:
    """One row per threat model (norm, eps) of the protocol's bounded attacks: an example is
    broken when any attack of that threat model fooled it: a bounded attack of the same norm and
    eps (white- or black-box), or a minimum-norm attack of that norm whose perturbation fits in
    eps. Its per-example norms and label come from the first such attack in protocol order."""
    threats = sorted({(r["norm"], r["eps"]) for r in rows if r["eps"] is not None and r["attack"] != PseudoAttack.WORST_CASE})
    out = []
    for norm, eps in threats:
        members = []
        for row in rows:
            if row["norm"] == norm and row["eps"] == eps:
                members.append((row, [e["success"] for e in row["examples"]]))
            elif row["eps"] is None and row["config"].get("threat_norm") == norm:
                fits = [e["success"] and size <= eps * (1 + 1e-6)
                        for e, size in zip(row["examples"], _threat_size(row, norm))]
                members.append((row, fits))
        examples = []
        for i, (index, label, clean) in enumerate(zip(indices, y.tolist(), clean_pred.tolist())):
            first = next((row["examples"][i] for row, broken in members if broken[i]), None)
            correct = clean == label
            broken = first is not None or not correct
            examples.append({"example_index": int(index), "label": int(label), "clean_correct": bool(correct),
                             "adv_correct": not broken, "success": first is not None,
                             "l2": first["l2"] if first else 0.0, "linf": first["linf"] if first else 0.0,
                             "pred": first["pred"] if first else int(clean), "success_step": None,
                             "x_l2": members[0][0]["examples"][i]["x_l2"] if members else None})
        ids = [row["attack_id"] for row, _ in members]
        out.append({"attack_id": f"worst-case-{norm}-{eps:g}", "attack": PseudoAttack.WORST_CASE.value,
                    "attack_key": canonical_hash({PseudoAttack.WORST_CASE.value: [row["attack_key"] for row, _ in members]}),
                    "config": {"name": PseudoAttack.WORST_CASE.value, "norm": norm, "eps": eps, "members": ids},
                    "threat": "worst-case", "norm": norm, "eps": eps, **_derived_row_fields(examples)})
    return out


def _derived_row_fields(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """The aggregates of a row derived from other rows (a worst case): computed from its
    examples; it ran no attack, so it spent no passes and no time."""
    fooled_l2 = [e["l2"] for e in examples if e["success"] and e["clean_correct"]]
    n_correct = sum(e["clean_correct"] for e in examples)
    return {"source_checkpoint_id": None, "n_examples": len(examples),
            "robust_accuracy": sum(e["adv_correct"] for e in examples) / max(len(examples), 1),
            "success_rate": (sum(e["success"] for e in examples if e["clean_correct"]) / n_correct
                             if n_correct else 0.0),
            "mean_l2": statistics.fmean(fooled_l2) if fooled_l2 else None,
            "median_l2": statistics.median(fooled_l2) if fooled_l2 else None,
            "forward_passes": 0, "backward_passes": 0, "seconds": 0.0, "grid_of": None, "examples": examples}


MINIMUM_NORM_WORST_CASE = PseudoAttack.MINIMUM_NORM_WORST_CASE.value


def minimum_norm_members(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The protocol's minimum-norm rows (no eps, a ``threat_norm``) grouped by that norm, without
    the curve-only ones (registry metadata ``curve_only``: the FGS line searches one direction up
    to a fixed eps for seed 002's curve, it does not search for the smallest perturbation)."""
    members: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        norm = row["config"].get("threat_norm")
        if (row["eps"] is None and norm is not None and row["attack"] in ATTACKS
                and not ATTACKS.get(row["attack"]).metadata.get("curve_only")):
            members.setdefault(norm, []).append(row)
    return members


def minimum_norm_worst_case_rows(rows: list[dict[str, Any]], clean_pred: torch.Tensor, y: torch.Tensor,
                                 indices: np.ndarray) -> list[dict[str, Any]]:
    """One row per norm of the protocol's minimum-norm attacks (``minimum-norm-L2`` ...): per
    example, the smallest successful perturbation in that norm over all of them (its norms and
    label from the attack that found it; ties go to the first in protocol order). Each attack's
    own row stays stored beside it. Robust: clean-correct and fooled by none of them."""
    out = []
    for norm, members in sorted(minimum_norm_members(rows).items()):
        examples = []
        for i, (index, label, clean) in enumerate(zip(indices, y.tolist(), clean_pred.tolist())):
            found = [row["examples"][i] for row in members if row["examples"][i]["success"]]
            smallest = min(found, key=lambda e: e["linf" if norm == "linf" else "l2"], default=None)
            correct = clean == label
            examples.append({"example_index": int(index), "label": int(label), "clean_correct": bool(correct),
                             "adv_correct": correct and smallest is None, "success": smallest is not None,
                             "l2": smallest["l2"] if smallest else 0.0, "linf": smallest["linf"] if smallest else 0.0,
                             "pred": smallest["pred"] if smallest else int(clean), "success_step": None,
                             "x_l2": members[0]["examples"][i]["x_l2"]})
        ids = [row["attack_id"] for row in members]
        out.append({"attack_id": f"minimum-norm-{norm}", "attack": MINIMUM_NORM_WORST_CASE,
                    "attack_key": canonical_hash({MINIMUM_NORM_WORST_CASE: [row["attack_key"] for row in members]}),
                    "config": {"name": MINIMUM_NORM_WORST_CASE, "threat_norm": norm, "members": ids},
                    "threat": "worst-case", "norm": norm, "eps": None, **_derived_row_fields(examples)})
    return out
