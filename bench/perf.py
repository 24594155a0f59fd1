"""``advarena perf``: our attacks against torchattacks and pyautoattack on the same model, images
and parameters, in one process, with the forward+backward floor measured in the same run.

Efficiency of a run = wall / (F * t_fwd + B * (t_fb - t_fwd)), with F and B the counted forward
and backward image-passes and t_fwd, t_fb the per-image floor times of a plain forward and of a
forward + cross-entropy + backward to the input at the protocol's batch size, probed right before
that run; the reported efficiency is the median over the runs (so slow drifts of the machine's
speed cancel). 1.0 means the attack costs exactly its passes.

The probes run on attack-like inputs: the eval images plus uniform noise in the Linf 0.3 ball,
clipped to [0, 1], because pass time depends on the data (on this CPU a batch of clean MNIST
digits, mostly exact zeros, runs about 5-8% faster than the same batch perturbed, and every attack
iterate is perturbed). The clean-input floor is reported beside it."""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from attacks import ATTACKS, Attack, PassCounter
from attacks.autoattack import load_pyautoattack
from attacks.base import isolated_global_rng
from attacks.counting import CountingModel
from bench.evaluate import run_attack

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


@dataclass(frozen=True)
class PerfCase:
    """One comparison: our attack against an equivalent from another library."""

    name: str
    ours: tuple[str, dict[str, Any]]
    theirs: list[tuple[str, str, dict[str, Any]]]   # (library, registry name or "direct", params)
    repeats: int = 5
    slow_theirs: bool = False                        # run theirs once, on --slow-n images
    minimum_norm: bool = False


DEEPFOOL_PARAMS = {"norm": "l2", "steps": 50, "overshoot": 0.02, "candidates": 3, "box_mask": True,
                   "damping": 0.5, "damped_steps": 2}
CW_PARAMS = {"steps": 100, "search_steps": 5, "initial_const": 0.1, "learning_rate": 0.1}

CASES: list[PerfCase] = [
    PerfCase("FGSM", ("fgsm", {"norm": "linf", "eps": 0.3}), [("torchattacks", "ta-fgsm", {"eps": 0.3})]),
    PerfCase("PGD-40", ("pgd", {"norm": "linf", "eps": 0.3, "steps": 40, "step_size": 0.01}),
             [("torchattacks", "ta-pgd", {"eps": 0.3, "alpha": 0.01, "steps": 40})]),
    PerfCase("MIM-10", ("mim", {"norm": "linf", "eps": 0.3, "steps": 10, "step_size": 0.03, "decay": 1.0}),
             [("torchattacks", "ta-mim", {"eps": 0.3, "alpha": 0.03, "steps": 10, "decay": 1.0})]),
    PerfCase("PGD-L2-40", ("pgd", {"norm": "l2", "eps": 2.0, "steps": 40, "step_size": 0.1}),
             [("torchattacks", "ta-pgdl2", {"eps": 2.0, "alpha": 0.1, "steps": 40})]),
    PerfCase("DeepFool", ("deepfool", DEEPFOOL_PARAMS),
             [("torchattacks", "ta-deepfool", {"steps": 50, "overshoot": 0.02})],
             slow_theirs=True, minimum_norm=True),
    PerfCase("CW-L2", ("cw", CW_PARAMS), [("torchattacks", "ta-cw", {"c": 1.0, "kappa": 0.0, "steps": 100,
                                                                      "lr": 0.01})],
             repeats=1, minimum_norm=True),
    PerfCase("APGD-CE", ("apgd-ce", {"norm": "linf", "eps": 0.3}),
             [("pyautoattack", "direct", {"stages": ["apgd-ce"], "norm": "Linf", "eps": 0.3}),
              ("torchattacks", "ta-apgd", {"norm": "linf", "eps": 0.3, "steps": 100})], repeats=3),
    PerfCase("AutoAttack", ("autoattack", {"norm": "linf", "eps": 0.3}),
             [("pyautoattack", "direct", {"stages": ["apgd-ce", "apgd-t", "fab-t", "square"],
                                          "norm": "Linf", "eps": 0.3}),
              ("torchattacks", "ta-autoattack", {"norm": "linf", "eps": 0.3})], repeats=3),
]


@dataclass
class Floor:
    """Per-image seconds of a forward and of a forward+backward to the input, probed repeatedly."""

    fwd: list[float] = field(default_factory=list)
    fb: list[float] = field(default_factory=list)

    def probe(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
              repeats: int = 1) -> None:
        """Time a sweep over ``x`` in batches: the plain forward, then the forward + cross-entropy +
        backward to the input that every gradient step needs (what an attack cannot avoid)."""
        batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        for _ in range(repeats):
            start = time.perf_counter()
            with torch.no_grad():
                for xb, _ in batches:
                    model(xb)
            self.fwd.append((time.perf_counter() - start) / x.shape[0])
            start = time.perf_counter()
            for xb, yb in batches:
                leaf = xb.detach().requires_grad_(True)
                torch.autograd.grad(F.cross_entropy(model(leaf), yb, reduction="sum"), leaf)
            self.fb.append((time.perf_counter() - start) / x.shape[0])

    def cost(self, forward: int, backward: int) -> float:
        t_fwd, t_fb = statistics.median(self.fwd), statistics.median(self.fb)
        return forward * t_fwd + backward * max(t_fb - t_fwd, 0.0)

    def summary(self) -> dict[str, float]:
        return {"fwd_s_per_image": statistics.median(self.fwd), "fb_s_per_image": statistics.median(self.fb),
                "fwd_img_per_s": 1 / statistics.median(self.fwd), "fb_img_per_s": 1 / statistics.median(self.fb),
                "probes": len(self.fb)}


def _direct_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int,
                       stages: list[str], norm: str, eps: float) -> dict[str, Any]:
    """pyautoattack called directly (standard settings, the given stages), passes counted."""
    counter = PassCounter()
    adversary = load_pyautoattack().AutoAttack(CountingModel(model, counter), norm=norm, eps=eps,
                                                version="standard", seed=seed, device=x.device)
    adversary.attacks_to_run = list(stages)
    adversary.logger.setLevel("WARNING")
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    with isolated_global_rng(x.device):
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        pred = torch.cat([model(x_adv[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    delta = (x_adv - x).flatten(1)
    return {"seconds": seconds, "forward": counter.forward, "backward": counter.backward,
            "success": pred != y, "pred": pred, "l2": delta.norm(dim=1), "linf": delta.abs().amax(1)}


def _stats(outcome: dict[str, Any], y: torch.Tensor, clean_correct: torch.Tensor) -> dict[str, Any]:
    success = outcome["success"].cpu() & clean_correct
    l2 = outcome["l2"].cpu()[success]
    return {"robust_acc": 100 * float((outcome["pred"].cpu() == y).float().mean()),
            "success_rate_on_correct": 100 * float(success.float().sum() / clean_correct.float().sum()),
            "median_l2": float(l2.median()) if l2.numel() else None,
            "mean_l2": float(l2.mean()) if l2.numel() else None,
            "n_success": int(success.sum()), "n_correct": int(clean_correct.sum())}


def measure(run: Callable[[], dict[str, Any]], repeats: int, floor: Floor, model: nn.Module,
            probe: tuple[torch.Tensor, torch.Tensor, int], warmup: Callable[[], Any] | None) -> dict[str, Any]:
    """Median wall of ``repeats`` runs. The floor is probed right before each run and each run's
    efficiency is taken against that probe (so slow drifts of the machine's speed cancel); the
    reported efficiency is the median of the per-run ratios."""
    if warmup is not None:
        warmup()
    walls, ratios, outcome = [], [], None
    for _ in range(repeats):
        adjacent = Floor()
        adjacent.probe(model, *probe, repeats=2)
        floor.fwd.extend(adjacent.fwd)
        floor.fb.extend(adjacent.fb)
        outcome = run()
        walls.append(outcome["seconds"])
        ratios.append(outcome["seconds"] / adjacent.cost(outcome["forward"], outcome["backward"]))
    assert outcome is not None
    return {"outcome": outcome, "wall_s": statistics.median(walls), "all_wall_s": walls,
            "forward_passes": outcome["forward"], "backward_passes": outcome["backward"],
            "efficiency": statistics.median(ratios), "all_efficiency": ratios}


def run_case(case: PerfCase, model: nn.Module, x: torch.Tensor, y: torch.Tensor, probe_x: torch.Tensor,
             batch_size: int, slow_n: int, floor: Floor, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Rows for our attack and each library's, with ratios against ours."""
    with torch.no_grad():
        clean_correct = torch.cat([model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]
                                   for i in range(0, len(x), batch_size)]).cpu()
    probe = (probe_x, y, batch_size)
    rows = []
    name, params = case.ours
    ours_attack: Attack = ATTACKS.create(name, **params)
    ours = measure(lambda: run_attack(ours_attack, model, x, y, batch_size), case.repeats, floor, model,
                   probe, lambda: run_attack(ours_attack, model, x[:batch_size], y[:batch_size], batch_size))
    rows.append(_row(case, "advarena", name, ours_attack.config(), len(x), ours, y, clean_correct))
    log(_line(rows[-1]))
    for library, registry_name, their_params in case.theirs:
        n = min(slow_n, len(x)) if case.slow_theirs else len(x)
        repeats = 1 if case.slow_theirs else case.repeats
        if registry_name == "direct":
            def go() -> dict[str, Any]:
                return _direct_autoattack(model, x[:n], y[:n], batch_size, 0, **their_params)
            warm = None
            config = {"library": library, **their_params, "seed": 0, "batch_size": batch_size}
        else:
            theirs_attack = ATTACKS.create(registry_name, **their_params)
            config = theirs_attack.config()

            def go() -> dict[str, Any]:
                return run_attack(theirs_attack, model, x[:n], y[:n], batch_size)
            warm = None if case.slow_theirs else (
                lambda: run_attack(theirs_attack, model, x[:batch_size], y[:batch_size], batch_size))
        theirs = measure(go, repeats, floor, model, probe, warm)
        row = _row(case, library, registry_name, config, n, theirs, y[:n], clean_correct[:n])
        row["ours_over_theirs_img_per_s"] = rows[0]["images_per_s"] / row["images_per_s"]
        if n < len(x):  # our statistics on the same images, for a like-for-like comparison
            row["ours_on_same_images"] = _stats({k: v[:n] if torch.is_tensor(v) else v
                                                 for k, v in ours["outcome"].items()}, y[:n], clean_correct[:n])
        rows.append(row)
        log(_line(row))
    return rows


def _row(case: PerfCase, library: str, name: str, config: dict[str, Any], n: int, measured: dict[str, Any],
         y: torch.Tensor, clean_correct: torch.Tensor) -> dict[str, Any]:
    return {"case": case.name, "library": library, "attack": name, "params": config, "n_images": n,
            "wall_s": measured["wall_s"], "all_wall_s": measured["all_wall_s"],
            "images_per_s": n / measured["wall_s"], "forward_passes": measured["forward_passes"],
            "backward_passes": measured["backward_passes"], "efficiency": measured["efficiency"],
            "all_efficiency": measured["all_efficiency"],
            **_stats(measured["outcome"], y.cpu(), clean_correct)}


def _line(row: dict[str, Any]) -> str:
    l2 = f" median L2 {row['median_l2']:.3f}" if row["median_l2"] is not None else ""
    return (f"{row['case']:<11} {row['library']:<13} {row['images_per_s']:9.1f} img/s  eff "
            f"{row['efficiency']:5.2f}  robust {row['robust_acc']:5.1f}%  success "
            f"{row['success_rate_on_correct']:5.1f}%{l2}")


def checks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The attack-suite issue's acceptance checks, evaluated on this run's rows."""
    by = {(r["case"], r["library"]): r for r in rows}
    out = []

    def check(label: str, ok: bool, detail: str) -> None:
        out.append({"check": label, "pass": bool(ok), "detail": detail})

    for case in ("PGD-40", "MIM-10", "FGSM"):
        ours, theirs = by.get((case, "advarena")), by.get((case, "torchattacks"))
        if ours and theirs:
            check(f"{case}: efficiency <= 1.05 and img/s >= torchattacks'",
                  ours["efficiency"] <= 1.05 and ours["images_per_s"] >= theirs["images_per_s"],
                  f"eff {ours['efficiency']:.3f}; {ours['images_per_s']:.0f} vs {theirs['images_per_s']:.0f} img/s")
    ours, theirs = by.get(("DeepFool", "advarena")), by.get(("DeepFool", "torchattacks"))
    if ours and theirs:
        check("DeepFool: >= 100x torchattacks' img/s", ours["images_per_s"] >= 100 * theirs["images_per_s"],
              f"{ours['images_per_s'] / theirs['images_per_s']:.0f}x")
        check("DeepFool: success >= 99% of correctly classified", ours["success_rate_on_correct"] >= 99,
              f"{ours['success_rate_on_correct']:.1f}%")
        check("DeepFool: median L2 <= torchattacks'",
              theirs["median_l2"] is not None and ours["median_l2"] <= theirs["median_l2"],
              f"{ours['median_l2']:.3f} vs {theirs['median_l2']}")
    cw, deepfool = by.get(("CW-L2", "advarena")), by.get(("DeepFool", "advarena"))
    if cw and deepfool:
        check("C&W: success >= 99% and median L2 < our DeepFool's",
              cw["success_rate_on_correct"] >= 99 and cw["median_l2"] < deepfool["median_l2"],
              f"{cw['success_rate_on_correct']:.1f}%, {cw['median_l2']:.3f} vs {deepfool['median_l2']:.3f}")
    for case in ("APGD-CE", "AutoAttack"):
        ours, direct = by.get((case, "advarena")), by.get((case, "pyautoattack"))
        if ours and direct:
            overhead = ours["wall_s"] / direct["wall_s"] - 1
            check(f"{case}: adapter within 3% of pyautoattack called directly", overhead <= 0.03,
                  f"{100 * overhead:+.1f}% wall; robust {ours['robust_acc']:.1f} vs {direct['robust_acc']:.1f}")
    return out


def environment(threads: int) -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for package in ("torch", "torchattacks", "pyautoattack", "numpy"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    return {"python": platform.python_version(), **versions, "threads": threads,
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "malloc_env": {k: os.environ.get(k) for k in MALLOC_ENV}}
