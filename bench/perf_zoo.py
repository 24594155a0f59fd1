"""``advarena perf --model ARCH --shape CxHxW``: throughput of our attacks, torchattacks' and
pyautoattack's, and one training step of each trainer, on any zoo architecture and input shape,
for each requested precision, with the forward+backward floor measured in the same run.

Weights and inputs are random (throughput does not depend on them) unless ``--checkpoint`` is
given; the labels are the model's own predictions on the inputs, so every image starts correctly
classified and every attack does its full work. The attack cases follow the paper protocols'
Linf eps 8/255 (PGD-20 at step 2/255, as Madry et al. and RobustBench evaluate CIFAR models)."""

from __future__ import annotations

import argparse
import copy
import fnmatch
import re
import time
from typing import Any, Callable

import torch
from torch import nn

from bench import perf
from bench.datasets import Dataset
from bench.errors import AdvarenaError, ConfigError
from bench.models import build_model
from bench.precision import Precision, prepare, unwrap

EPS = 8 / 255
ZOO_CASES: list[perf.PerfCase] = [
    perf.PerfCase("FGSM", ("fgsm", {"norm": "linf", "eps": EPS}), [("torchattacks", "ta-fgsm", {"eps": EPS})],
                  repeats=3),
    perf.PerfCase("PGD-20", ("pgd", {"norm": "linf", "eps": EPS, "steps": 20, "step_size": 2 / 255}),
                  [("torchattacks", "ta-pgd", {"eps": EPS, "alpha": 2 / 255, "steps": 20})], repeats=1),
    perf.PerfCase("APGD-CE", ("apgd-ce", {"norm": "linf", "eps": EPS}),
                  [("pyautoattack", "direct", {"stages": ["apgd-ce"], "norm": "Linf", "eps": EPS})], repeats=1),
    perf.PerfCase("AutoAttack", ("autoattack", {"norm": "linf", "eps": EPS}),
                  [("pyautoattack", "direct", {"stages": ["apgd-ce", "apgd-t", "fab-t", "square"],
                                               "norm": "Linf", "eps": EPS})], repeats=1),
]
#: Cases of 100+ gradient steps per image, run on ``--slow-n`` images.
SLOW_CASES = ("APGD-CE", "AutoAttack")
#: Trainers timed for one step: those that train any classifier on its own (the others need a
#: suite's parent run or architecture-specific auxiliary networks).
TRAINERS = ("standard", "fgsm-at", "pgd-at", "trades", "free-at", "fast-at")


def parse_shape(text: str) -> tuple[int, ...]:
    """``3x32x32`` -> (3, 32, 32)."""
    if re.fullmatch(r"\d+x\d+x\d+", text) is None:
        raise argparse.ArgumentTypeError(f"expected CxHxW (e.g. 3x32x32), got {text!r}")
    return tuple(int(part) for part in text.split("x"))


def parse_precisions(text: str) -> list[Precision]:
    try:
        return [Precision(part.strip()) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of fp32, bf16, fp16, got {text!r}") from None


def random_model(arch: str, shape: tuple[int, ...], classes: int, seed: int = 0) -> nn.Module:
    """Zoo ``arch`` with its own random initialization, drawn from a private generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(arch, shape, classes, [0.5] * shape[0], [0.25] * shape[0]).eval()


def inputs(model: nn.Module, shape: tuple[int, ...], n: int, device: torch.device,
           batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform random images and the model's own labels for them."""
    x = torch.rand((n, *shape), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        y = torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, n, batch_size)])
    return x, y


def training_step(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: int,
                  precision: Precision) -> dict[str, Any]:
    """Seconds of one epoch over exactly one batch (one optimizer step, plus the trainer's
    per-epoch test pass over one batch) of trainer ``name``, on a copy of ``model``."""
    from defenses import build_trainer

    trainee = _trainable_copy(model)
    data = Dataset("perf-random", x.cpu(), y.cpu(), x[:1].cpu(), y[:1].cpu(), classes, {"source": "random"})
    trainer = build_trainer(name, {"epochs": 1, "batch_size": x.shape[0]})
    timings = []
    for _ in range(2):   # the first call also warms the allocator and kernels; the best of two is kept
        start = time.perf_counter()
        result = trainer.fit(prepare(trainee, precision), data, seed=0, progress=False)
        timings.append(time.perf_counter() - start)
    seconds = min(timings)
    record = result.epochs[-1]
    return {"trainer": name, "precision": precision.value, "batch": int(x.shape[0]), "seconds": seconds,
            "images_per_s": x.shape[0] / seconds, "forward_passes": record.forward_passes,
            "backward_passes": record.backward_passes}


def _trainable_copy(model: nn.Module) -> nn.Module:
    """A copy of the (unwrapped) model in train mode, so timing a trainer leaves ``model`` as it was."""
    return copy.deepcopy(unwrap(model)).train()


def run_zoo_perf(args: argparse.Namespace, device: torch.device, log: Callable[[str], None]) -> dict[str, Any]:
    shape, classes = args.shape, args.classes
    if args.checkpoint is not None:
        from bench.checkpoints import load_checkpoint

        base, checkpoint = load_checkpoint(args.checkpoint, device)
        if tuple(checkpoint.meta["input_shape"]) != shape:
            raise ConfigError(f"--shape {'x'.join(map(str, shape))} but the checkpoint takes "
                              f"{'x'.join(map(str, checkpoint.meta['input_shape']))}")
        classes = checkpoint.meta["num_classes"]
    else:
        base = random_model(args.model, shape, classes).to(device)
    x, y = inputs(base, shape, args.n, device, args.batch_size)
    results: list[dict[str, Any]] = []
    floors: dict[str, Any] = {}
    training: list[dict[str, Any]] = []
    for precision in args.precision:
        model = prepare(base, precision)
        floor = perf.Floor()
        floor.probe(model, x, y, args.batch_size, repeats=2)
        floors[precision.value] = floor.summary()
        log(f"[{precision.value}] floor: forward+backward {floors[precision.value]['fb_img_per_s']:.1f} img/s")
        for case in [case for case in ZOO_CASES if fnmatch.fnmatchcase(case.name, args.only)]:
            n = args.slow_n if case.name in SLOW_CASES else args.n
            for row in perf.run_case(case, model, x[:n], y[:n], x[:n], args.batch_size, n, floor,
                                     lambda line, p=precision.value: log(f"[{p}] {line}")):
                results.append({**row, "precision": precision.value})
        for name in TRAINERS:
            try:
                step = training_step(name, model, x[:args.slow_n], y[:args.slow_n], classes, precision)
            except AdvarenaError as err:
                raise ConfigError(f"training step of {name} on {args.model}: {err}") from None
            training.append(step)
            log(f"[{precision.value}] train {name:<8} {step['images_per_s']:8.1f} img/s (one step of "
                f"{step['batch']} images)")
    return {"model": args.model if args.checkpoint is None else str(args.checkpoint), "shape": list(shape),
            "classes": classes, "weights": "random" if args.checkpoint is None else "checkpoint",
            "n": args.n, "slow_n": args.slow_n, "batch_size": args.batch_size, "floor": floors, "results": results, "training": training}
