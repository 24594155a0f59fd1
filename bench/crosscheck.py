"""``advarena crosscheck``: our minimum-norm L2 attacks beside the same attacks of adv-lib and
foolbox (where installed) on one checkpoint and the same images.

For every contender: success on clean-correct images, median and mean L2 of its successful
perturbations, the median over clean-correct images of its L2 divided by the per-image best over
all contenders (a failure counts as an infinite ratio), and forward+backward passes per image
(counted by a wrapper around the model for code we do not own). "advarena worst case" is, per
image, the smallest successful perturbation over our own contenders, with their passes summed.

adv-lib declares torchvision and visdom and foolbox declares GitPython, which none of the attacks
run here uses; installed with ``--no-deps``, they are imported with empty stand-ins for those
modules in ``sys.modules`` (only where the real module is absent)."""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import time
import types
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn

from attacks import ATTACKS
from attacks.base import PassCounter
from attacks.counting import CountingModel

#: A contender's run: (model, x, y) -> x_adv; passes are counted around it.
Runner = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Contender:
    name: str
    library: str
    run: Runner
    #: contenders of one group (a protocol's minimum-norm attacks) also get their per-image best
    #: scored, as "advarena GROUP worst case"
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """One contender on the crosscheck's images (L2 in [0, 1] pixel units)."""

    name: str
    library: str
    success_percent: float
    median_l2: float | None
    mean_l2: float | None
    median_ratio_to_best: float
    passes_per_image: float
    seconds: float
    #: per image, the L2 of its successful perturbation (None: not fooled or not clean-correct)
    l2_per_image: list[float | None]


#: Our minimum-norm L2 attacks: (name, registry name, params, groups). A group is a shipped
#: protocol's minimum-norm L2 attacks, whose per-image best is its minimum-norm-l2 worst case.
QUICK_ALMA = {"steps": 100, "init_lr_distance": 1.0, "alpha": 0.6}
BUDGET_ALMA = {"steps": 145, "init_lr_distance": 1.0, "alpha": 0.5, "lr_reduction": 0.001}
OURS: list[tuple[str, str, dict[str, Any], tuple[str, ...]]] = [
    ("deepfool-l2", "deepfool", {"norm": "l2", "steps": 50, "overshoot": 0.02, "candidates": 3,
                                 "box_mask": True, "damping": 0.5, "damped_steps": 2}, ("quick", "full")),
    ("alma-l2 100", "alma", QUICK_ALMA, ("quick",)),
    ("alma-l2 300", "alma", {**QUICK_ALMA, "steps": 300}, ("full",)),
    # the strongest configuration found at 300 passes per image (145 steps; a slower decay of the
    # learning rate to 1e-3 of its start): the budgeted single attack of AttackBench's comparison
    ("alma-l2 145", "alma", BUDGET_ALMA, ()),
    ("fmn-l2 100", "fmn", {"norm": "l2", "steps": 100}, ("full",)),
    ("ddn 100", "ddn", {"steps": 100}, ("full",)),
]


def ours() -> list[Contender]:
    def runner(name: str, params: dict[str, Any]) -> Runner:
        return lambda model, x, y: ATTACKS.create(name, **params)(model, x, y).x_adv
    return [Contender(label, "advarena", runner(name, params), groups) for label, name, params, groups in OURS]


def _stand_in(name: str, **attributes: Any) -> None:
    if name in sys.modules or importlib.util.find_spec(name.split(".")[0]) is not None:
        return
    module = types.ModuleType(name)
    module.__path__ = []  # type: ignore[attr-defined]
    for key, value in attributes.items():
        setattr(module, key, value)
    sys.modules[name] = module


def _import(module: str) -> Any | None:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def peers(steps: int, cw_search_steps: int, cw_steps: int | None = None) -> tuple[list[Contender], list[str]]:
    """The peers' attacks that are installed, and a line for each library that is not. C&W runs
    ``cw_search_steps`` rounds of ``cw_steps`` (default ``steps``) iterations."""
    cw_steps = cw_steps or steps
    _stand_in("torchvision.models")
    _stand_in("torchvision", models=sys.modules.get("torchvision.models"))
    _stand_in("visdom", Visdom=object)
    _stand_in("git", Repo=object)
    found, missing = [], []
    adv_lib = _import("adv_lib.attacks")
    if adv_lib is None:
        missing.append("adv-lib (pip install --no-deps adv-lib==0.2.8)")
    else:
        found += [
            Contender(f"ALMA-L2 {steps}", "adv-lib",
                      lambda m, x, y: adv_lib.alma(m, x, y, distance="l2", num_steps=steps)),
            Contender(f"DDN {steps}", "adv-lib", lambda m, x, y: adv_lib.ddn(m, x, y, steps=steps)),
            Contender(f"FMN-L2 {steps}", "adv-lib", lambda m, x, y: adv_lib.fmn(m, x, y, norm=2, steps=steps)),
        ]
    foolbox = _import("foolbox")
    if foolbox is None:
        missing.append("foolbox (pip install --no-deps foolbox==3.3.4 eagerpy)")
    else:
        def cw(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            attack = foolbox.attacks.L2CarliniWagnerAttack(binary_search_steps=cw_search_steps, steps=cw_steps)
            _, clipped, _ = attack(foolbox.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=None)
            return clipped
        found.append(Contender(f"C&W-L2 {cw_search_steps} x {cw_steps}", "foolbox", cw))
    return found, missing


def run_contender(contender: Contender, model: nn.Module, x: torch.Tensor, y: torch.Tensor
                  ) -> tuple[torch.Tensor, float, float]:
    """(x_adv, passes per image, seconds); the model's mode and the global RNG are restored."""
    counter = PassCounter()
    counting = CountingModel(model, counter)
    was_training = model.training
    counting.eval()
    start = time.perf_counter()
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            x_adv = contender.run(counting, x, y).detach()
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    return x_adv, (counter.forward + counter.backward) / max(len(y), 1), seconds


def crosscheck(model: nn.Module, x: torch.Tensor, y: torch.Tensor, contenders: list[Contender],
               progress: Callable[[str], None] = lambda _: None) -> list[Outcome]:
    """Run every contender and score it against the per-image best of all of them."""
    with torch.no_grad():
        correct = model.eval()(x).argmax(1) == y
    sizes, meta = {}, {}
    for contender in contenders:
        x_adv, passes, seconds = run_contender(contender, model, x, y)
        with torch.no_grad():
            fooled = model.eval()(x_adv).argmax(1) != y
        l2 = (x_adv - x).flatten(1).norm(dim=1)
        in_box = (x_adv.flatten(1).amin(1) >= -1e-6) & (x_adv.flatten(1).amax(1) <= 1 + 1e-6)
        sizes[contender.name] = torch.where(fooled & in_box & correct, l2, torch.tensor(math.inf))
        meta[contender.name] = (contender.library, passes, seconds)
        progress(f"{contender.library} {contender.name}: {seconds:.1f}s")
    groups = {"advarena worst case": [c.name for c in contenders if c.library == "advarena"]}
    for group in dict.fromkeys(g for c in contenders for g in c.groups):
        groups[f"advarena {group} worst case"] = [c.name for c in contenders if group in c.groups]
    for name, members in groups.items():
        if len(members) > 1:
            sizes[name] = torch.stack([sizes[n] for n in members]).amin(0)
            meta[name] = ("advarena", sum(meta[n][1] for n in members), sum(meta[n][2] for n in members))
    best = torch.stack(list(sizes.values())).amin(0)
    outcomes = []
    for name, size in sizes.items():
        library, passes, seconds = meta[name]
        ok = size[correct]
        hits = ok[torch.isfinite(ok)]
        ratio = (size / best)[correct]
        outcomes.append(Outcome(
            name=name, library=library, success_percent=100 * float(torch.isfinite(ok).float().mean()),
            median_l2=float(hits.median()) if hits.numel() else None,
            mean_l2=float(hits.mean()) if hits.numel() else None,
            median_ratio_to_best=float(ratio.nan_to_num(nan=math.inf, posinf=math.inf).median()),
            passes_per_image=passes, seconds=seconds,
            l2_per_image=[float(v) if math.isfinite(v) else None for v in size.tolist()]))
    return outcomes


def as_records(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    return [asdict(o) for o in outcomes]
