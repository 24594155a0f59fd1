"""AutoAttack (Croce & Hein, ICML 2020) through the ``pyautoattack`` package.

``autoattack`` runs the standard version (APGD-CE, APGD-T, FAB-T, Square with the paper's
settings); ``apgd-ce``, ``apgd-t``, ``fab-t`` and ``square`` run one component with the same
settings. The package runs the cascade (each stage only on points still robust, the first
successful adversarial kept per point) and batches internally, so these attacks take the whole
eval set in one call (``whole_set``) with ``batch_size`` images per forward: the same grouping,
hence the same random starts, as calling the package directly. The package seeds torch's global
generator with ``seed``; the adapter runs it inside ``torch.random.fork_rng`` so the caller's
global random state is left exactly as it was."""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any

import torch
from torch import nn

from attacks.base import Attack, PassCounter, isolated_global_rng
from attacks.counting import CountingModel
from attacks.norms import hooks_for
from attacks.registry import register_attack
from bench.enums import Norm
from bench.errors import ConfigError

COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")
PACKAGE_NORMS = {Norm.LINF: "Linf", Norm.L2: "L2"}


def load_pyautoattack() -> Any:
    try:
        import pyautoattack
    except ImportError as err:
        raise ConfigError("the AutoAttack adapters need the 'pyautoattack' package "
                          "(pip install pyautoattack)") from err
    return pyautoattack


class AutoAttackAdapter(Attack):
    """Run pyautoattack's ``stages`` (a sub-list of the standard version) on the whole set."""

    whole_set = True
    stages: tuple[str, ...] = COMPONENTS

    def __init__(self, norm: str = "linf", eps: float = 0.3, batch_size: int = 250, seed: int = 0) -> None:
        super().__init__(seed)
        self.norm = hooks_for(norm).norm
        if eps <= 0 or batch_size < 1:
            raise ConfigError(f"{self.name}: need eps > 0 and batch_size >= 1, got eps={eps}, "
                              f"batch_size={batch_size}")
        self.eps, self.batch_size = float(eps), int(batch_size)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "stages": list(self.stages), "batch_size": self.batch_size,
                "package": "pyautoattack"}

    def build(self, model: nn.Module, device: torch.device) -> Any:
        """The package's AutoAttack object with the standard version's settings."""
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints its settings
            adversary = load_pyautoattack().AutoAttack(model, norm=PACKAGE_NORMS[self.norm], eps=self.eps,
                                                       version="standard", seed=self.seed, device=device)
        adversary.attacks_to_run = list(self.stages)
        adversary.logger.setLevel(logging.WARNING)
        return adversary

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator, counter: PassCounter,
                target: torch.Tensor | None = None) -> torch.Tensor:
        if target is not None:
            raise ConfigError(f"{self.name}: explicit targets are not supported (APGD-T and FAB-T "
                              f"pick their own target classes)")
        adversary = self.build(CountingModel(model, counter), x.device)
        with isolated_global_rng(x.device):
            x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=self.batch_size)
        return x_adv.to(x.dtype)


@register_attack("autoattack", kind="bounded", gradients=True, paper="Croce & Hein 2020 (standard version)")
class AutoAttack(AutoAttackAdapter):
    """AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square in a cascade (pyautoattack)."""

    name = "autoattack"


def _component(stage: str, summary: str) -> type[AutoAttackAdapter]:
    cls = type(f"AutoAttack_{stage.replace('-', '_')}", (AutoAttackAdapter,),
               {"name": stage, "stages": (stage,), "__doc__": summary, "__module__": __name__})
    register_attack(stage, kind="bounded", gradients=stage != "square", paper="Croce & Hein 2020")(cls)
    return cls


APGDCE = _component("apgd-ce", "APGD with cross-entropy loss, 100 iterations (pyautoattack).")
APGDT = _component("apgd-t", "Targeted APGD on the DLR loss, 9 target classes (pyautoattack).")
FABT = _component("fab-t", "Targeted FAB, 9 target classes (pyautoattack).")
Square = _component("square", "Square Attack, 5,000 queries, score-based black-box (pyautoattack).")
