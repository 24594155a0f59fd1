"""Jobs planned from a suite, each keyed by the hash of everything that determines its result."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from attacks.base import canonical_hash
from bench.errors import ConfigError
from bench.suite import Suite, TrainSpec
from defenses import build_trainer

#: Bump when a change to the training loop changes what a given configuration produces.
TRAINING_CODE_VERSION = 2


@dataclass(frozen=True)
class TrainJob:
    """Train ``defense`` with ``hparams`` on ``arch`` from ``seed``."""

    label: str
    role: str                   # "defense" or "surrogate"
    defense: str
    hparams: dict[str, Any]     # every hyper-parameter, defaults filled in
    arch: str
    arch_params: dict[str, Any]
    seed: int
    save_every_epoch: bool = False
    #: The job whose trained model this one starts from (fine-tuning), or None (from scratch).
    init: "TrainJob | None" = None
    #: The suite entry (label without seed or sweep suffix) and the swept knob's value; not part
    #: of the key (they name the job, they do not change what it trains).
    entry: str = ""
    sweep: dict[str, Any] | None = None
    #: Training arithmetic (``bench.precision``); in the key only when not fp32, so fp32 jobs keep
    #: the keys they had before precision existed.
    precision: str = "fp32"

    def key(self, dataset_fingerprint: str) -> str:
        payload = {"defense": self.defense, "hparams": self.hparams, "arch": self.arch,
                   "arch_params": self.arch_params, "seed": self.seed,
                   "dataset": dataset_fingerprint, "code": TRAINING_CODE_VERSION}
        if self.init is not None:
            payload["init"] = self.init.key(dataset_fingerprint)
        if self.precision != "fp32":
            payload["precision"] = self.precision
        return canonical_hash(payload)


def _job(spec: TrainSpec, suite: Suite, label: str, role: str, seed: int,
         hparams: dict[str, Any] | None = None) -> TrainJob:
    model = spec.model or suite.model
    trainer = build_trainer(spec.defense, {**suite.training, **(spec.hparams if hparams is None else hparams)})
    sweep = {spec.knob: trainer.hparams()[spec.knob]} if spec.swept or spec.sweep_of else None
    return TrainJob(label=label, role=role, defense=spec.defense, hparams=trainer.hparams(),
                    arch=model.arch, arch_params=dict(model.params), seed=seed,
                    save_every_epoch=suite.save_every_epoch, entry=spec.entry, sweep=sweep,
                    precision=suite.precision.value)


def plan_training(suite: Suite) -> tuple[list[TrainJob], dict[str, TrainJob]]:
    """(defense jobs, surrogate jobs by role). A swept strength knob gives one job per value,
    labelled ``label@knob=value``; several seeds give one job per seed, labelled ``...@seedN``; a
    fine-tuning job starts from its ``init_from`` entry's job of the same seed (a surrogate role:
    that surrogate's job)."""
    surrogates = {role: _job(spec, suite, spec.label or role, "surrogate", spec.seed)
                  for role, spec in suite.surrogates.items()}
    by_label = {spec.label or spec.defense: spec for spec in suite.defenses if spec.sweep_of is None}
    defenses: list[TrainJob] = []
    for spec in suite.defenses:
        base = spec.label or spec.defense
        seeds = spec.seeds or suite.seeds
        for hparams in spec.sweep_points():
            named = spec.job_label(hparams)
            for seed in seeds:
                label = named if len(seeds) == 1 else f"{named}@seed{seed}"
                job = _job(spec, suite, label, "defense", seed, hparams)
                if spec.init_from in surrogates:
                    job = replace(job, init=surrogates[spec.init_from])
                elif spec.init_from is not None:
                    parent = by_label[spec.init_from]
                    if parent.swept:
                        raise ConfigError(f"{base}: init_from {spec.init_from!r}, which is a sweep; "
                                          f"fine-tune from a single entry")
                    job = replace(job, init=_job(parent, suite, spec.init_from, "defense", seed))
                defenses.append(job)
    return defenses, surrogates
