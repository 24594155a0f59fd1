"""torchattacks 3.5.1 adapters (``ta-fgsm``, ``ta-pgd`` ...), so users can compare our attacks
with that library's implementation on the same model, images and parameters. torchattacks is an
optional dependency (its metadata pulls torchvision); the adapters import it on first use.

torchattacks draws its random starts from torch's global generator. The adapter runs it inside
``torch.random.fork_rng`` seeded from the attack's own generator, so the caller's global random
state is untouched and a run is reproducible."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attacks.autoattack import PACKAGE_NORMS
from attacks.base import Attack, PassCounter, isolated_global_rng
from attacks.counting import CountingModel
from attacks.registry import register_attack
from bench.enums import Norm
from bench.errors import ConfigError


def load_torchattacks() -> Any:
    try:
        import torchattacks
    except ImportError as err:
        raise ConfigError("the ta-* adapters need torchattacks: pip install --no-deps torchattacks==3.5.1 "
                          "(--no-deps: its metadata requires torchvision, which it does not import)") from err
    return torchattacks


class TorchattacksAdapter(Attack):
    """Calls ``torchattacks.<ta_class>(model, **kwargs)`` on each batch."""

    ta_class: str = ""

    def __init__(self, threat_norm: Norm | None, threat_eps: float | None, attack_seed: int, /,
                 **kwargs: Any) -> None:
        super().__init__(attack_seed)
        self.norm, self.eps, self.kwargs = threat_norm, threat_eps, kwargs

    def config(self) -> dict[str, Any]:
        return {**super().config(), "library": "torchattacks", "class": self.ta_class, **self.kwargs}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator, counter: PassCounter,
                target: torch.Tensor | None = None) -> torch.Tensor:
        if target is not None:
            raise ConfigError(f"{self.name}: the torchattacks adapters are untargeted")
        attack = getattr(load_torchattacks(), self.ta_class)(CountingModel(model, counter), **self.kwargs)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        with isolated_global_rng(x.device, seed):
            return attack(x, y).detach().to(x.dtype)


@register_attack("ta-fgsm", kind="bounded", gradients=True, library="torchattacks")
class TAFGSM(TorchattacksAdapter):
    """torchattacks.FGSM (Linf)."""

    name, ta_class = "ta-fgsm", "FGSM"

    def __init__(self, eps: float = 0.3, seed: int = 0) -> None:
        super().__init__(Norm.LINF, eps, seed, eps=eps)


@register_attack("ta-pgd", kind="bounded", gradients=True, library="torchattacks")
class TAPGD(TorchattacksAdapter):
    """torchattacks.PGD (Linf, random start)."""

    name, ta_class = "ta-pgd", "PGD"

    def __init__(self, eps: float = 0.3, alpha: float = 0.01, steps: int = 40,
                 random_start: bool = True, seed: int = 0) -> None:
        super().__init__(Norm.LINF, eps, seed, eps=eps, alpha=alpha, steps=steps, random_start=random_start)


@register_attack("ta-pgdl2", kind="bounded", gradients=True, library="torchattacks")
class TAPGDL2(TorchattacksAdapter):
    """torchattacks.PGDL2."""

    name, ta_class = "ta-pgdl2", "PGDL2"

    def __init__(self, eps: float = 2.0, alpha: float = 0.1, steps: int = 40,
                 random_start: bool = True, seed: int = 0) -> None:
        super().__init__(Norm.L2, eps, seed, eps=eps, alpha=alpha, steps=steps, random_start=random_start)


@register_attack("ta-mim", kind="bounded", gradients=True, library="torchattacks")
class TAMIM(TorchattacksAdapter):
    """torchattacks.MIFGSM (Linf)."""

    name, ta_class = "ta-mim", "MIFGSM"

    def __init__(self, eps: float = 0.3, alpha: float = 0.03, steps: int = 10, decay: float = 1.0,
                 seed: int = 0) -> None:
        super().__init__(Norm.LINF, eps, seed, eps=eps, alpha=alpha, steps=steps, decay=decay)


@register_attack("ta-deepfool", kind="minimum-norm", gradients=True, library="torchattacks")
class TADeepFool(TorchattacksAdapter):
    """torchattacks.DeepFool (L2)."""

    name, ta_class = "ta-deepfool", "DeepFool"

    def __init__(self, steps: int = 50, overshoot: float = 0.02, seed: int = 0) -> None:
        super().__init__(None, None, seed, steps=steps, overshoot=overshoot)


@register_attack("ta-cw", kind="minimum-norm", gradients=True, library="torchattacks")
class TACW(TorchattacksAdapter):
    """torchattacks.CW (L2, fixed c, no binary search)."""

    name, ta_class = "ta-cw", "CW"

    def __init__(self, c: float = 1.0, kappa: float = 0.0, steps: int = 100, lr: float = 0.01,
                 seed: int = 0) -> None:
        super().__init__(None, None, seed, c=c, kappa=kappa, steps=steps, lr=lr)


@register_attack("ta-apgd", kind="bounded", gradients=True, library="torchattacks")
class TAAPGD(TorchattacksAdapter):
    """torchattacks.APGD."""

    name, ta_class = "ta-apgd", "APGD"

    def __init__(self, norm: str = "linf", eps: float = 0.3, steps: int = 100, n_restarts: int = 1,
                 loss: str = "ce", seed: int = 0) -> None:
        parsed = Norm.parse(norm)
        super().__init__(parsed, eps, seed, norm=PACKAGE_NORMS[parsed], eps=eps,
                         steps=steps, n_restarts=n_restarts, loss=loss, seed=seed)


@register_attack("ta-autoattack", kind="bounded", gradients=True, library="torchattacks")
class TAAutoAttack(TorchattacksAdapter):
    """torchattacks.AutoAttack (standard version; note: 10 steps per APGD stage in 3.5.1)."""

    name, ta_class = "ta-autoattack", "AutoAttack"

    def __init__(self, norm: str = "linf", eps: float = 0.3, n_classes: int = 10, seed: int = 0) -> None:
        parsed = Norm.parse(norm)
        super().__init__(parsed, eps, seed, norm=PACKAGE_NORMS[parsed], eps=eps,
                         version="standard", n_classes=n_classes, seed=seed)
