"""The Ray executor (``advarena run --executor ray [--address ADDR]``): every training job and
every defense's evaluation is one Ray task. A task's dependencies are its arguments: a fine-tuning
job takes its parent's training task, an evaluation takes its defense's training task, the
surrogates and the learned attackers its attacks replay, so Ray starts each job as soon as what it
needs exists. Workers open the store themselves and write their results to it; each job goes
through the same content-key skip and claim (``bench.claims``) as the local executor, so a task
that Ray re-runs after a worker died, or a second driver on the same store, never duplicates a
row. Checkpoints go to the shared ``--workdir``: on a cluster it must be a shared filesystem, and
the store a database every node reaches (PostgreSQL)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bench.core.console import configure_output
from bench.datasets import Dataset
from bench.errors import AdvarenaError, ConfigError
from bench.jobs import TrainJob, plan_training
from bench.runner import (Context, TrainedModel, attack_sources, ensure_trained, evaluate_trained,
                          load_suite_dataset)
from bench.suite import Protocol, Suite

log = logging.getLogger("advarena")


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker process needs to rebuild the driver's context (picklable, hashable)."""

    db_url: str
    workdir: str
    data_root: str | None
    device: str
    threads: int
    plugins: tuple[str, ...] = ()
    plugin_paths: tuple[str, ...] = ()
    quiet: bool = False
    verbose: bool = False


@dataclass
class _WorkerState:
    settings: WorkerSettings | None = None
    ctx: Context | None = None
    datasets: dict[str, tuple[Dataset, int]] = field(default_factory=dict)


_STATE = _WorkerState()


def _worker_context(settings: WorkerSettings) -> Context:
    """This worker process's context, built once per settings (a worker runs many tasks)."""
    if _STATE.settings != settings:
        from bench.plugins import discover_entry_points, load_plugins
        from results.store import Store

        configure_output(settings.quiet, settings.verbose)
        discover_entry_points()   # installed plugins: this node's own entry points
        load_plugins(settings.plugins, settings.plugin_paths)
        torch.set_num_threads(settings.threads)
        _STATE.settings, _STATE.datasets = settings, {}
        _STATE.ctx = Context(store=Store(settings.db_url, reconnect=True), workdir=Path(settings.workdir),
                             device=torch.device(settings.device), data_root=settings.data_root, progress=False)
    assert _STATE.ctx is not None
    return _STATE.ctx


def _worker_dataset(protocol: Protocol, ctx: Context) -> tuple[Dataset, int]:
    if protocol.dataset not in _STATE.datasets:
        _STATE.datasets[protocol.dataset] = load_suite_dataset(protocol, ctx)
    return _STATE.datasets[protocol.dataset]


def train_task(settings: WorkerSettings, protocol: Protocol, job: TrainJob, *parents: TrainedModel) -> TrainedModel:
    """One training job (its parent, when fine-tuning, is a finished task: ``parents``)."""
    ctx = _worker_context(settings)
    dataset, dataset_id = _worker_dataset(protocol, ctx)
    return ensure_trained(job, dataset, dataset_id, ctx)


def evaluate_task(settings: WorkerSettings, suite: Suite, protocol: Protocol, trained: TrainedModel,
                  surrogate_roles: tuple[str, ...], *sources: TrainedModel) -> str:
    """One defense's evaluation; ``sources`` are the surrogates (in ``surrogate_roles`` order)
    followed by the defenses whose learned attackers the suite's attacks replay."""
    ctx = _worker_context(settings)
    dataset, _ = _worker_dataset(protocol, ctx)
    surrogates = dict(zip(surrogate_roles, sources))
    learned = list(sources[len(surrogate_roles):])
    attack_models = attack_sources(suite, learned, surrogates, ctx.device)
    evaluate_trained(trained, dataset, protocol.with_attacks(suite.attacks), attack_models, ctx,
                     suite.evaluate_every_epoch)
    return trained.job.label


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'advarena[ray]'") from None
    return ray


def run_suite_on_ray(suite: Suite, protocol: Protocol, ctx: Context, settings: WorkerSettings,
                     address: str | None = None, cpus: int | None = None, cpus_per_task: float = 1.0,
                     evaluate: bool = True, dataset: Dataset | None = None) -> list[TrainedModel]:
    """Run the suite's missing jobs as Ray tasks on the cluster at ``address`` (None: start a local
    Ray instance with ``cpus`` CPUs) and wait for all of them; returns the trained surrogates and
    defenses."""
    ray = _import_ray()
    dataset, _ = load_suite_dataset(protocol, ctx, dataset)   # registers the dataset once
    fingerprint = dataset.fingerprint()
    ray.init(address=address, num_cpus=None if address else (cpus or os.cpu_count()), include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=True)
    try:
        gpus = 1 if ctx.device.type == "cuda" else 0
        train = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus)(train_task)
        refs: dict[str, Any] = {}

        def submit(job: TrainJob) -> Any:
            key = job.key(fingerprint)
            if key not in refs:
                parents = [submit(job.init)] if job.init is not None else []
                refs[key] = train.options(name=f"train {job.label}").remote(settings, protocol, job, *parents)
            return refs[key]

        defense_jobs, surrogate_jobs = plan_training(suite)
        surrogate_refs = {role: submit(job) for role, job in surrogate_jobs.items()}
        defense_refs = [submit(job) for job in defense_jobs]
        pending = list(refs.values())
        if evaluate:
            by_label = {job.label: ref for job, ref in zip(defense_jobs, defense_refs)}
            learned = [by_label[str(spec.source)] for spec in suite.attacks
                       if spec.source_kind == "defense" and str(spec.source) in by_label]
            run_eval = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus)(evaluate_task)
            pending += [run_eval.options(name=f"evaluate {job.label}").remote(
                            settings, suite, protocol, ref, tuple(surrogate_refs), *surrogate_refs.values(), *learned)
                        for job, ref in zip(defense_jobs, defense_refs)]
        _wait_all(ray, pending, ctx.progress)
        return [ray.get(ref) for ref in [*surrogate_refs.values(), *defense_refs]]
    finally:
        ray.shutdown()


def _wait_all(ray: Any, pending: list[Any], progress: bool) -> None:
    """Wait for every task, with a progress bar; a task's advarena error is raised as itself."""
    with tqdm(total=len(pending), desc="ray tasks", unit="task", disable=None if progress else True) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(ready)
            except ray.exceptions.RayTaskError as err:
                cause = getattr(err, "cause", None)
                if isinstance(cause, AdvarenaError):
                    raise cause from None
                raise
            bar.update(len(ready))
