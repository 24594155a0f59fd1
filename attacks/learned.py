"""Trained attacker networks replayed as attacks on any model (white-box: they read the target's
own input gradient, as they did on the classifier they were trained against).

- ``pgn-generator``: seed 000's generator G (``defenses.pgn``); x_adv in tanh space, then, when
  ``eps`` is set, projected onto the ``norm`` ball (PGN itself has no ball: c_L sets its size).
- ``l2l-attacker``: seed 003's attacker g (``defenses.l2l``, naive / grad / 2-step as trained);
  its output is already in its training Linf ball; a smaller ``eps`` clamps it further.

``source_model`` is the trained network (a suite's ``source`` names the defense entry whose run
saved it) and ``source_id`` its checkpoint's sha256, which enters the content key."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attacks.base import Attack, PassCounter
from attacks.norms import hooks_for
from attacks.registry import register_attack
from bench.enums import Norm
from bench.errors import ConfigError
from bench.models.learned_attackers import (L2LAttacker, PerturbationGenerator, class_probability_gradient,
                                            l2l_adversarial, pgn_adversarial)


class _LearnedAttack(Attack):
    network_type: type = nn.Module

    def __init__(self, source_model: nn.Module, source_id: str, norm: str, eps: float | None, seed: int) -> None:
        super().__init__(seed)
        if not isinstance(source_model, self.network_type):
            raise ConfigError(f"{self.name}: expected a trained {self.network_type.__name__}, got "
                              f"{type(source_model).__name__}")
        if eps is not None and eps <= 0:
            raise ConfigError(f"{self.name}: eps must be positive or None, got {eps}")
        self.network, self.source_id = source_model.eval(), source_id
        self.norm, self.eps = Norm.parse(norm), eps
        self.hooks = hooks_for(self.norm.value)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "source": self.source_id}

    def fit_ball(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        if self.eps is None:
            return x_adv
        return (x + self.hooks.project(x_adv - x, self.eps)).clamp(0, 1)


@register_attack("pgn-generator", kind="learned", gradients=True, source="defense", learned_aux="generator",
                 paper="seed 000 sec. 3 (the trained perturbation generator)")
class GeneratorAttack(_LearnedAttack):
    """One pass of a trained PGN generator on the target's class-probability gradient."""

    name = "pgn-generator"
    network_type = PerturbationGenerator

    def __init__(self, source_model: nn.Module, source_id: str, norm: str = "l2", eps: float | None = 2.0,
                 seed: int = 0) -> None:
        super().__init__(source_model, source_id, norm, eps, seed)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator, counter: PassCounter,
                target: torch.Tensor | None = None) -> torch.Tensor:
        grad = class_probability_gradient(model, x, y, self.network.grad_batch, create_graph=False)
        counter.add(x.shape[0], backward=True)
        with torch.no_grad():
            return self.fit_ball(x, pgn_adversarial(self.network, x, y, grad))


@register_attack("l2l-attacker", kind="learned", gradients=True, source="defense", learned_aux="attacker",
                 paper="seed 003 sec. 3 (the trained attacker network)")
class L2LAttack(_LearnedAttack):
    """A trained L2L attacker (one or two applications, as trained) on the target's gradients."""

    name = "l2l-attacker"
    network_type = L2LAttacker

    def __init__(self, source_model: nn.Module, source_id: str, norm: str = "linf", eps: float | None = None,
                 seed: int = 0) -> None:
        if Norm.parse(norm) is not Norm.LINF:
            raise ConfigError(f"l2l-attacker: the attacker is trained in an Linf ball, got norm {norm!r}")
        super().__init__(source_model, source_id, norm, eps, seed)
        if self.eps is None:
            self.eps = self.network.eps

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator, counter: PassCounter,
                target: torch.Tensor | None = None) -> torch.Tensor:
        applications = {"naive": 0, "grad": 1, "2step": 2}[self.network.variant]
        counter.forward += applications * x.shape[0]
        counter.backward += applications * x.shape[0]
        return self.fit_ball(x, l2l_adversarial(self.network, model, x, y).detach())
