"""Jobs planned from a suite, each keyed by the hash of everything that determines its result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from attacks.base import canonical_hash
from bench.suite import Suite, TrainSpec
from defenses import build_trainer

#: Bump when a change to the training loop changes what a given configuration produces.
TRAINING_CODE_VERSION = 1


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
    extra: dict[str, Any] = field(default_factory=dict)

    def key(self, dataset_fingerprint: str) -> str:
        return canonical_hash({"defense": self.defense, "hparams": self.hparams, "arch": self.arch,
                               "arch_params": self.arch_params, "seed": self.seed,
                               "dataset": dataset_fingerprint, "code": TRAINING_CODE_VERSION})


def _job(spec: TrainSpec, suite: Suite, label: str, role: str, seed: int) -> TrainJob:
    model = spec.model or suite.model
    trainer = build_trainer(spec.defense, {**suite.training, **spec.hparams})
    return TrainJob(label=label, role=role, defense=spec.defense, hparams=trainer.hparams(),
                    arch=model.arch, arch_params=dict(model.params), seed=seed,
                    save_every_epoch=suite.save_every_epoch)


def plan_training(suite: Suite) -> tuple[list[TrainJob], dict[str, TrainJob]]:
    """(defense jobs, surrogate jobs by role). A defense with several seeds gets one job per seed,
    labelled ``label@seedN``."""
    defenses: list[TrainJob] = []
    for spec in suite.defenses:
        base = spec.label or spec.defense
        seeds = spec.seeds or suite.seeds
        for seed in seeds:
            label = base if len(seeds) == 1 else f"{base}@seed{seed}"
            defenses.append(_job(spec, suite, label, "defense", seed))
    surrogates = {role: _job(spec, suite, spec.label or role, "surrogate", spec.seed)
                  for role, spec in suite.surrogates.items()}
    return defenses, surrogates
