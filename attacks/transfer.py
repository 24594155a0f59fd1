"""Black-box transfer: adversarials crafted on a source (surrogate) model, scored on the target."""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attacks.base import Attack, AttackResult, PassCounter
from attacks.registry import ATTACKS, register_attack
from bench.errors import ConfigError


#: Crafted batches kept per source network: a suite's evaluations attack the same eval subset with
#: the same surrogate once per defense, and crafting gives the same points every time.
KEEP_BATCHES = 64


@dataclass(frozen=True)
class _Crafted:
    result: AttackResult          # the base attack's outcome on the source
    generator_state: torch.Tensor  # the generator's state after crafting


#: Per source network (held weakly: gone with it), its crafted batches, most recent last.
_CRAFTED: "weakref.WeakKeyDictionary[nn.Module, OrderedDict[str, _Crafted]]" = weakref.WeakKeyDictionary()


def _digest(*tensors: torch.Tensor | None) -> str:
    sha = hashlib.sha256()
    for tensor in tensors:
        sha.update(b"-" if tensor is None else tensor.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


@register_attack("transfer", kind="black-box", gradients=False, source="surrogate", paper="Papernot et al. 2017; seed 003 sec. 3.1, Tables 3, 6, 7")
class Transfer(Attack):
    """Run ``base`` white-box on ``source_model`` and hand its x_adv to the target unchanged.

    ``source_id`` (the source checkpoint's sha256) enters the content key, so results are stored
    per source."""

    name = "transfer"

    def __init__(self, base: str, source_model: nn.Module, source_id: str,
                 base_params: dict[str, Any] | None = None) -> None:
        if base == "transfer":
            raise ConfigError("transfer: the base attack cannot itself be a transfer")
        # crafted to the end on the source: a point frozen at its first success there rarely transfers
        self.base: Attack = ATTACKS.create(base, **(base_params or {})).for_transfer()
        super().__init__(self.base.seed)
        self.norm, self.eps = self.base.norm, self.base.eps
        self.source_model, self.source_id = source_model, source_id

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "base": self.base.config(), "source": self.source_id}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator, counter: PassCounter,
                target: torch.Tensor | None = None) -> torch.Tensor:
        result = self.craft(x, y, generator, target)
        counter.forward += result.forward_passes
        counter.backward += result.backward_passes
        counter.trace.source_fooled = result.success
        return result.x_adv

    def craft(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
              target: torch.Tensor | None) -> AttackResult:
        """The base attack's outcome on the source, crafted once per process for the same source
        weights (identity and in-place version of every parameter), base configuration, images,
        labels, targets and generator state; a repeat leaves the generator as crafting left it, so
        results (pass counts included) are those of crafting again."""
        weights = [(p.data_ptr(), p._version) for p in self.source_model.parameters()]
        key = f"{self.source_id}|{self.base.key()}|{weights}|" + _digest(x, y, target, generator.get_state())
        crafted = _CRAFTED.setdefault(self.source_model, OrderedDict())
        hit = crafted.get(key)
        if hit is None:
            hit = _Crafted(self.base(self.source_model, x, y, generator, target), generator.get_state())
            crafted[key] = hit
            while len(crafted) > KEEP_BATCHES:
                crafted.popitem(last=False)
        else:
            generator.set_state(hit.generator_state)
            crafted.move_to_end(key)
        return hit.result
