"""The local executor: train what is missing, evaluate what is missing, in order, with progress
bars. Every job is skipped when its content key is already stored, so an interrupted run resumes."""

from __future__ import annotations

import logging
import time
from typing import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from attacks import ATTACKS
from attacks.base import canonical_hash
from bench.checkpoints import (Checkpoint, load_aux, load_checkpoint, read_checkpoint, save_checkpoint,
                              verify_checkpoint)
from bench.claims import Claim, claim_job
from bench.datasets import Dataset, load_dataset
from bench.environment import environment_record
from bench.errors import AdvarenaError, CheckpointError, ConfigError
from bench.evaluate import (PartialRows, SourceModel, build_attack, eval_subset, evaluate_model, evaluation_key,
                            subset_hash)
from bench.jobs import TrainJob, plan_training
from bench.precision import Precision, prepare, unwrap
from bench.models import build_model
from bench.suite import Protocol, Suite
from defenses import EpochRecord, build_trainer
from defenses.resume import EpochStates
from results.schema import CheckpointRow
from results.store import Store

log = logging.getLogger("advarena")

#: Folder of the work directory holding the evaluations' gallery files (``bench.evaluate.write_gallery``).
GALLERY_FOLDER = "gallery"


@dataclass
class Context:
    """Where and how jobs run."""

    store: Store
    workdir: Path
    device: torch.device
    data_root: str | None = None
    progress: bool = True
    #: DataLoader worker processes per training job (0: batches gathered in this process).
    workers: int = 0
    #: Finished-epoch training states kept per unfinished run (mid-run resume; ``defenses.resume``).
    keep_states: int = 1


@dataclass(frozen=True)
class TrainedModel:
    job: TrainJob
    checkpoint_id: int
    checkpoint_path: Path
    sha256: str


def build_untrained(job: TrainJob, dataset: Dataset) -> nn.Module:
    """The job's architecture, initialized from the job's seed without disturbing the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(job.seed)
        return build_model(job.arch, dataset.input_shape, dataset.num_classes, dataset.channel_mean,
                           dataset.channel_std, **job.arch_params)


def _checkpoint_meta(job: TrainJob, dataset: Dataset, epoch: int, record: EpochRecord,
                     device: torch.device, key: str) -> dict:
    return {"arch": job.arch, "arch_params": job.arch_params, "input_shape": list(dataset.input_shape),
            "num_classes": dataset.num_classes, "mean": list(dataset.channel_mean),
            "std": list(dataset.channel_std),
            "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint()},
            "defense": job.defense, "hparams": job.hparams, "seed": job.seed, "epoch": epoch,
            "benign_accuracy": record.test_accuracy, "label": job.label, "run_key": key,
            "environment": environment_record(device)}


def ensure_trained(job: TrainJob, dataset: Dataset, dataset_id: int, ctx: Context) -> TrainedModel:
    """Return the job's final checkpoint, training it first unless its key is stored and verifies.
    The training is claimed by its key (``bench.claims``): a worker that finds the job running
    elsewhere waits for it and then uses its checkpoint."""
    key = job.key(dataset.fingerprint())
    stored = _stored_trained(job, key, ctx, quiet=False)
    if stored is not None:
        return stored
    with claim_job(ctx.store, key, "train", job.label, lambda: _stored_trained(job, key, ctx) is not None) as claim:
        if claim:
            return _train(job, key, dataset, dataset_id, ctx, claim)
    stored = _stored_trained(job, key, ctx, quiet=False)
    if stored is None:
        raise CheckpointError(f"{job.label}: run {key[:12]} was trained by another worker, but its checkpoint "
                              f"cannot be used")
    return stored


def _stored_trained(job: TrainJob, key: str, ctx: Context, quiet: bool = True) -> TrainedModel | None:
    """The job's stored final checkpoint when its run finished and the files verify, else None."""
    row = _finished_checkpoint(key, ctx)
    if row is None:
        return None
    try:
        on_disk = read_checkpoint(row.path)
        verify_checkpoint(on_disk)
        if on_disk.sha256 != row.sha256:
            raise CheckpointError(f"{row.path} holds another checkpoint than the stored one")
    except AdvarenaError as err:
        if not quiet:
            log.warning("%s: stored checkpoint unusable (%s); retraining", job.label, err)
        return None
    if not quiet:
        log.info("%s: trained already (run %s), skipping", job.label, key[:12])
    return TrainedModel(job, row.id, Path(row.path), row.sha256)


def _finished_checkpoint(key: str, ctx: Context) -> CheckpointRow | None:
    """The final checkpoint row of the finished run ``key``, or None."""
    done = ctx.store.finished_run(key)
    return ctx.store.final_checkpoint(done.id) if done is not None else None


def _train(job: TrainJob, key: str, dataset: Dataset, dataset_id: int, ctx: Context, claim: Claim) -> TrainedModel:
    folder = ctx.workdir / "checkpoints" / f"{job.label}-{key[:12]}"
    states = EpochStates(folder / "states", ctx.keep_states)
    fields = dict(label=job.label, role=job.role, defense=job.defense, hparams=job.hparams, arch=job.arch,
                  arch_params=job.arch_params, dataset_id=dataset_id, seed=job.seed, entry=job.entry,
                  sweep=job.sweep, environment=environment_record(ctx.device))
    saved_epochs = states.epochs()
    if saved_epochs:
        run_id = ctx.store.resume_run(key, saved_epochs[-1], **fields)
        log.info("%s: resuming after epoch %d (saved training state)", job.label, saved_epochs[-1])
    else:
        run_id = ctx.store.start_run(key, **fields)
    trainer = build_trainer(job.defense, job.hparams)
    model = build_untrained(job, dataset).to(ctx.device)
    if job.init is not None:
        parent = ensure_trained(job.init, dataset, dataset_id, ctx)
        model.load_state_dict(_load(parent, ctx.device)[0].state_dict())
        log.info("%s: fine-tuning from %s (checkpoint %s)", job.label, job.init.label, parent.sha256[:12])
    epochs = trainer.common.epochs

    def record_epoch(epoch: int, trained: nn.Module, record: EpochRecord) -> None:
        trained = unwrap(trained)
        ctx.store.add_epoch(run_id, vars(record).copy())
        if job.save_every_epoch and epoch < epochs:
            saved = save_checkpoint(folder / f"epoch-{epoch:03d}", trained,
                                    _checkpoint_meta(job, dataset, epoch, record, ctx.device, key))
            ctx.store.add_checkpoint(run_id, saved.sha256, str(saved.path), saved.meta, final=False)

    log.info("%s: training %s on %s (seed %d, %d epochs)", job.label, job.defense, job.arch, job.seed, epochs)
    start = time.perf_counter()
    try:
        result = trainer.fit(prepare(model, Precision(job.precision)), dataset, job.seed, [record_epoch],
                             progress=ctx.progress, workers=ctx.workers, states=states)
    except BaseException as err:
        ctx.store.fail_run(run_id, f"{type(err).__name__}: {err}")
        raise
    kept = result.final_record
    meta = _checkpoint_meta(job, dataset, kept.epoch, kept, ctx.device, key)
    if job.init is not None:
        meta["init_from"] = {"label": job.init.label, "run_key": job.init.key(dataset.fingerprint())}
    if result.kept_epoch is not None:
        meta["early_stop"] = {"stopped_at_epoch": result.epochs[-1].epoch, "kept_epoch": result.kept_epoch}
        log.warning("%s: early stop at epoch %d (collapse); keeping epoch %d", job.label,
                    result.epochs[-1].epoch, result.kept_epoch)
    meta["aux"] = {name: _save_aux(folder / f"aux-{name}", name, module, meta, result.aux_arch.get(name))
                   for name, module in result.aux.items()}
    final = save_checkpoint(folder / "final", unwrap(result.model), meta)
    checkpoint_id = ctx.store.add_checkpoint(run_id, final.sha256, str(final.path), final.meta, final=True)
    ctx.store.finish_run(run_id, time.perf_counter() - start, claim)
    states.clear()
    log.info("%s: trained in %.1fs, test accuracy %.2f%%", job.label, time.perf_counter() - start,
             100 * kept.test_accuracy)
    return TrainedModel(job, checkpoint_id, final.path, final.sha256)


def _save_aux(folder: Path, name: str, module: nn.Module, meta: dict,
              arch: tuple[str, dict] | None) -> dict[str, str]:
    """Save an auxiliary network (weights + meta, like a checkpoint) beside the classifier; one with
    a registered architecture loads back with ``load_checkpoint``."""
    arch_name, arch_params = arch if arch is not None else (f"aux:{name}", {})
    saved = save_checkpoint(folder, module, {**meta, "arch": arch_name, "arch_params": arch_params,
                                             "aux_of": meta["label"], "aux_class": type(module).__qualname__})
    return {"path": str(saved.path), "sha256": saved.sha256}


def ensure_evaluated(model: nn.Module, checkpoint: Checkpoint, checkpoint_id: int, dataset: Dataset,
                     protocol: Protocol, sources: dict[str, SourceModel], ctx: Context,
                     label: str) -> bool:
    """Evaluate unless the evaluation's content key is stored; True when it ran."""
    indices = eval_subset(dataset.x_test.shape[0], protocol.eval_subset.size, protocol.eval_subset.seed)
    attacks = {spec.id: build_attack(spec, sources) for spec, _ in protocol.expanded_attacks()}
    key = evaluation_key(checkpoint.sha256, protocol, subset_hash(indices), attacks)
    if ctx.store.has_evaluation(key):
        log.info("%s: evaluated already under %s v%d, skipping", label, protocol.name, protocol.version)
        return False
    with claim_job(ctx.store, key, "evaluate", label, lambda: ctx.store.has_evaluation(key)) as claim:
        if not claim:
            log.info("%s: evaluated by another worker under %s v%d", label, protocol.name, protocol.version)
            return False
        log.info("%s: evaluating under protocol %s v%d", label, protocol.name, protocol.version)
        partial = PartialRows(ctx.workdir / "partial" / key[:16])
        evaluation, rows = evaluate_model(model, dataset, protocol, sources, ctx.device, ctx.progress, label,
                                          partial, ctx.workdir / GALLERY_FOLDER)
        execution = evaluation.pop("execution")
        ctx.store.save_evaluation({**evaluation, "key": key, "checkpoint_id": checkpoint_id,
                                   "environment": {**environment_record(ctx.device), "execution": execution}},
                                  rows, claim)
        partial.clear()
    return True


def _load(trained: TrainedModel, device: torch.device) -> tuple[nn.Module, Checkpoint]:
    return _load_stored(trained.checkpoint_path, trained.sha256, device)


def _load_stored(path: str | Path, sha256: str, device: torch.device) -> tuple[nn.Module, Checkpoint]:
    """Load a checkpoint the store knows, refusing one whose weights changed since."""
    model, checkpoint = load_checkpoint(path, device)
    if checkpoint.sha256 != sha256:
        raise CheckpointError(f"{path}: sha256 changed since it was stored")
    return model, checkpoint


def load_suite_dataset(protocol: Protocol, ctx: Context, dataset: Dataset | None = None) -> tuple[Dataset, int]:
    """The protocol's dataset (``dataset`` when the caller loaded it already) and its store id."""
    dataset = dataset if dataset is not None else load_dataset(protocol.dataset, ctx.data_root)
    return dataset, ctx.store.dataset_id(dataset.fingerprint(), dataset.describe())


def train_suite(suite: Suite, dataset: Dataset, dataset_id: int, ctx: Context,
                overall: tqdm | None = None) -> tuple[list[TrainedModel], dict[str, TrainedModel]]:
    """Train every missing defense and surrogate of the suite (``overall``: a progress bar over
    the run's jobs, advanced as each finishes)."""
    defense_jobs, surrogate_jobs = plan_training(suite)

    def train(job: TrainJob) -> TrainedModel:
        if overall is not None:
            overall.set_postfix_str(f"training {job.label}")
        trained = ensure_trained(job, dataset, dataset_id, ctx)
        if overall is not None:
            overall.update()
        return trained

    surrogates = {role: train(job) for role, job in surrogate_jobs.items()}
    defenses = [train(job) for job in defense_jobs]
    return defenses, surrogates


def attack_sources(suite: Suite, defenses: list[TrainedModel], surrogates: dict[str, TrainedModel],
                   device: torch.device) -> dict[str, SourceModel]:
    """The trained networks the suite's and protocol's attacks run: every surrogate by role, and
    each learned attacker a suite attack names, by its defense job's label."""
    sources = {}
    for role, trained in surrogates.items():
        source_model, _ = _load(trained, device)
        sources[role] = SourceModel(source_model, trained.sha256, trained.checkpoint_id)
    by_label = {trained.job.label: trained for trained in defenses}
    for spec in suite.attacks:
        if spec.source_kind != "defense":
            continue
        trained = by_label.get(str(spec.source))
        if trained is None:
            raise ConfigError(f"attack {spec.id!r}: no trained job is labelled {spec.source!r} (jobs: "
                              f"{sorted(by_label)})")
        network, checkpoint = load_aux(trained.checkpoint_path, ATTACKS.get(spec.attack).metadata["learned_aux"],
                                       device)
        sources[str(spec.source)] = SourceModel(network, checkpoint.sha256, trained.checkpoint_id)
    return sources


def evaluate_trained(trained: TrainedModel, dataset: Dataset, protocol: Protocol,
                     sources: dict[str, SourceModel], ctx: Context, every_epoch: bool = False) -> None:
    """Evaluate a trained defense's final checkpoint (and, with ``every_epoch``, its per-epoch
    checkpoints) unless stored; ``protocol`` already holds the suite's own attacks."""
    model, checkpoint = _load(trained, ctx.device)
    ensure_evaluated(model, checkpoint, trained.checkpoint_id, dataset, protocol, sources, ctx, trained.job.label)
    if every_epoch:
        for row in ctx.store.epoch_checkpoints(trained.checkpoint_id):
            epoch_model, epoch_checkpoint = _load_stored(row.path, row.sha256, ctx.device)
            ensure_evaluated(epoch_model, epoch_checkpoint, row.id, dataset, protocol, sources, ctx,
                             f"{trained.job.label} epoch {row.epoch}")


def run_suite(suite: Suite, protocol: Protocol, ctx: Context, evaluate: bool = True,
              dataset: Dataset | None = None) -> list[TrainedModel]:
    """``advarena run`` (and, without ``evaluate``, ``advarena train``) with the local executor:
    train what is missing, then evaluate every defense under the protocol plus the suite's own
    attacks, one job after another in this process. Returns the trained surrogates and defenses."""
    dataset, dataset_id = load_suite_dataset(protocol, ctx, dataset)
    defense_jobs, surrogate_jobs = plan_training(suite)
    total = len(defense_jobs) * (2 if evaluate else 1) + len(surrogate_jobs)
    # The whole run's jobs, with time remaining; each training job shows its epochs and each
    # evaluation its attacks beneath it.
    with tqdm(total=total, desc=f"advarena {suite.name}", unit="job", disable=None if ctx.progress else True,
              position=0) as overall:
        defenses, surrogates = train_suite(suite, dataset, dataset_id, ctx, overall)
        if evaluate:
            sources = attack_sources(suite, defenses, surrogates, ctx.device)
            with_attacks = protocol.with_attacks(suite.attacks)
            for trained in defenses:
                overall.set_postfix_str(f"evaluating {trained.job.label}")
                evaluate_trained(trained, dataset, with_attacks, sources, ctx, suite.evaluate_every_epoch)
                overall.update()
    return [*surrogates.values(), *defenses]


def store_external(model: nn.Module, weights_sha: str, spec: str, weights: Path, kwargs: dict, label: str,
                   dataset: Dataset, ctx: Context) -> tuple[Checkpoint, int]:
    """Register a model trained elsewhere, loaded by ``bench.external.load_external``: copy it into
    an advarena checkpoint and store a finished run marked ``defense: external`` (once per model:
    factory, arguments, code and weights)."""
    from bench.external import external_key, external_provenance, save_external

    provenance = external_provenance(spec, kwargs, weights, weights_sha)
    key = external_key(provenance, dataset.fingerprint())
    return _store_imported(model, key, label, "external", provenance, "external", dataset, ctx,
                           lambda folder, benign: save_external(folder, model, provenance, label, dataset, benign))


def store_robustbench(model: nn.Module, arch: str, weights: Path, threat_model: str, label: str,
                      dataset: Dataset, ctx: Context) -> tuple[Checkpoint, int]:
    """Register a RobustBench-format model loaded into our zoo architecture (``bench.robustbench``)
    as a checkpoint of that architecture and a finished run marked ``defense: robustbench`` (once per
    weights file, architecture and data)."""
    from bench.checkpoints import file_sha256
    from bench.robustbench import ARCHS

    spec = ARCHS[arch]
    provenance = {"provenance": "robustbench", "robustbench_arch": arch, "threat_model": threat_model,
                  "weights_file": str(weights.resolve()), "weights_sha256": file_sha256(weights)}
    key = canonical_hash({"robustbench": {k: v for k, v in provenance.items() if k != "weights_file"},
                          "dataset": dataset.fingerprint()})
    normalize = model.normalize

    def save(folder: Path, benign: float) -> Checkpoint:
        meta = {"arch": spec.zoo_arch, "arch_params": dict(spec.params), "input_shape": list(dataset.input_shape),
                "num_classes": dataset.num_classes, "mean": normalize.mean.flatten().tolist(),
                "std": normalize.std.flatten().tolist(),
                "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint()}, "defense": "robustbench",
                "hparams": provenance, "seed": 0, "epoch": 0, "label": label, "benign_accuracy": benign,
                "provenance": "robustbench"}
        return save_checkpoint(folder, model, meta)

    return _store_imported(model, key, label, "robustbench", provenance, spec.zoo_arch, dataset, ctx, save)


def _store_imported(model: nn.Module, key: str, label: str, defense: str, provenance: dict, arch: str,
                    dataset: Dataset, ctx: Context,
                    save: Callable[[Path, float], Checkpoint]) -> tuple[Checkpoint, int]:
    """The stored checkpoint of an imported model (``key``), else ``save(folder, benign accuracy)``
    recorded as a finished run of ``defense`` with ``provenance`` as its hyper-parameters."""
    from bench.evaluate import predict

    dataset_id = ctx.store.dataset_id(dataset.fingerprint(), dataset.describe())
    row = _finished_checkpoint(key, ctx)
    if row is not None:
        return _load_stored(row.path, row.sha256, ctx.device)[1], row.id
    x, y = dataset.x_test.to(ctx.device), dataset.y_test.to(ctx.device)
    benign = float((predict(model, x, 250) == y).float().mean())
    run_id = ctx.store.start_run(key, label=label, role="defense", defense=defense, hparams=provenance,
                                 arch=arch, arch_params={}, dataset_id=dataset_id, seed=0, entry=label,
                                 sweep=None, environment=environment_record(ctx.device))
    checkpoint = save(ctx.workdir / "checkpoints" / f"{label}-{key[:12]}", benign)
    checkpoint_id = ctx.store.add_checkpoint(run_id, checkpoint.sha256, str(checkpoint.path), checkpoint.meta,
                                             final=True)
    ctx.store.finish_run(run_id, 0.0)
    log.info("%s: %s model stored (benign accuracy %.2f%%)", label, defense, 100 * benign)
    return checkpoint, checkpoint_id
