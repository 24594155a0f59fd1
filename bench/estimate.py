"""``advarena estimate SUITE|PROTOCOL``: forward and backward passes per job from the configs, and
seconds per job from a short probe on this device, before anything is trained.

Training: a few minibatches of each trainer (its real ``train_batch``: attack steps, replays,
auxiliary networks, optimizer step) on random images of the dataset's shape, on the job's
network; passes per batch are counted by the trainer itself (``PassCounter``) and scaled by the
batches of the job (split size / batch size x epochs), plus the per-epoch test-set accuracy.
Evaluation: each attack's pass budget per image from its config (an upper bound: attacks that
stop early on fooled images, and AutoAttack's later stages on the points still robust, spend
less), times the network's measured seconds per image forward and backward. Probes run on an
untrained network; with ``probe_images`` smaller than the batch size (the CPU default) the time
per image is taken as constant."""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attacks import ATTACKS
from attacks.base import PassCounter
from bench.datasets import DATASETS, Dataset, load_dataset
from bench.jobs import TrainJob, plan_training
from bench.models import build_model
from bench.suite import AttackSpec, Protocol, Suite
from defenses import build_trainer
from defenses.base import BatchContext, CommonHParams

#: Hyper-parameters that change what a run learns, not what a minibatch costs (left out of the
#: probe cache, so a sweep's points share one probe).
_COST_FREE = {"epochs", "lr", "lr_schedule", "lr_milestones", "lr_gamma", "momentum", "weight_decay", "nesterov",
              "augment", "c_L", "beta", "lam", "radius", "alpha", "eps"}
_AUTOATTACK_ITERS = 100       # pyautoattack's standard APGD/FAB iterations
_TARGETS = 9                  # APGD-T and FAB-T target classes in the standard version
_SQUARE_QUERIES = 5000


@dataclass
class JobEstimate:
    kind: str            # "train" or "evaluate"
    label: str
    arch: str
    forward: float       # image forward passes
    backward: float      # image backward passes
    seconds: float
    detail: str = ""


@functools.lru_cache(maxsize=None)
def split_sizes(name: str) -> tuple[int, int, tuple[int, int, int], int]:
    """(n_train, n_test, input shape, classes) from the dataset registry (embedded ones are loaded)."""
    meta = DATASETS.get(name).metadata
    if "n_train" in meta:
        return int(meta["n_train"]), int(meta["n_test"]), tuple(meta["shape"]), int(meta["classes"])
    data = load_dataset(name)
    return int(data.x_train.shape[0]), int(data.x_test.shape[0]), data.input_shape, data.num_classes


def _synthetic(shape: tuple[int, ...], classes: int, n: int) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(n, *shape, generator=generator)
    y = torch.randint(0, classes, (n,), generator=generator)
    return Dataset("probe", x, y, x[: max(1, n // 4)], y[: max(1, n // 4)], classes)


def _network(arch: str, params: dict[str, Any], shape: tuple[int, ...], classes: int, device: torch.device) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_model(arch, shape, classes, (0.5,) * shape[0], (0.25,) * shape[0], **params).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe_training(job: TrainJob, shape: tuple[int, ...], classes: int, device: torch.device,
                   probe_images: int | None, batches: int = 3) -> tuple[float, float, float]:
    """(forward, backward, seconds) per training image of ``job``'s trainer: ``batches`` timed
    minibatches after one warm-up minibatch; the fastest one's time (a shared CPU's other load
    only ever slows a batch down)."""
    trainer = build_trainer(job.defense, job.hparams)
    size = min(trainer.common.batch_size, probe_images or trainer.common.batch_size)
    trainer.common = CommonHParams(**{**trainer.common.as_dict(), "batch_size": size})
    data = _synthetic(shape, classes, size * (batches + 1))
    model = _network(job.arch, job.arch_params, shape, classes, device)
    generator = torch.Generator(device=device).manual_seed(0)
    trainer.setup(model, data, device, generator)
    optimizer = trainer.make_optimizer(model)
    for module in trainer.trained_modules(model):
        module.train()
    counter, times = PassCounter(), []
    for number in range(batches + 1):
        index = torch.arange(number * size, (number + 1) * size)
        ctx = BatchContext(1, generator, counter if number else PassCounter(), index.to(device), 0.0)
        x, y = data.x_train[index].to(device), data.y_train[index].to(device)
        _sync(device)
        start = time.perf_counter()
        trainer.train_batch(model, x, y, ctx, optimizer)
        _sync(device)
        if number:
            times.append(time.perf_counter() - start)
    images = size * batches
    return counter.forward / images, counter.backward / images, min(times) / size


def probe_passes(arch: str, params: dict[str, Any], shape: tuple[int, ...], classes: int, device: torch.device,
                 images: int, repeats: int = 3) -> tuple[float, float]:
    """Seconds per image of one forward and of one backward pass to the input (eval mode), the
    fastest of ``repeats`` after a warm-up."""
    model = _network(arch, params, shape, classes, device).eval()
    x = torch.rand(images, *shape, device=device)
    y = torch.zeros(images, dtype=torch.long, device=device)
    forwards, backwards = [], []
    for repeat in range(repeats + 1):
        xg = x.clone().requires_grad_(True)
        _sync(device)
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(xg), y)
        _sync(device)
        middle = time.perf_counter()
        torch.autograd.grad(loss, xg)
        _sync(device)
        if repeat:
            forwards.append(middle - start)
            backwards.append(time.perf_counter() - middle)
    return min(forwards) / images, min(backwards) / images


def attack_budget(spec: AttackSpec, classes: int) -> tuple[float, float]:
    """(forward, backward) passes per image an attack may spend at most, from its parameters."""
    p, name = spec.params, spec.attack
    if name == "transfer":   # crafted on the surrogate as ``for_transfer`` runs it, then a forward on the target
        crafting = ATTACKS.create(p["base"], **p.get("base_params", {})).for_transfer().pass_counts()
        forward, backward = crafting if crafting is not None else attack_budget(
            AttackSpec(id="base", attack=p["base"], params=p.get("base_params", {})), classes)
        return forward + 1, backward
    if spec.source is None:
        declared = ATTACKS.create(name, **p).pass_counts()   # the attack's own bound, where it has one
        if declared is not None:
            return declared
    if name == "apgd-ce":
        return _AUTOATTACK_ITERS + 1, _AUTOATTACK_ITERS
    if name == "apgd-t":
        return _TARGETS * (_AUTOATTACK_ITERS + 1), _TARGETS * _AUTOATTACK_ITERS
    if name == "fab-t":
        return _TARGETS * (_AUTOATTACK_ITERS + 1), _TARGETS * _AUTOATTACK_ITERS * 2
    if name == "square":
        return _SQUARE_QUERIES, 0
    if name == "autoattack":
        stages = [attack_budget(AttackSpec(id=s, attack=s, params={}), classes)
                  for s in ("apgd-ce", "apgd-t", "fab-t", "square")]
        return sum(f for f, _ in stages), sum(b for _, b in stages)
    if name == "noise":
        return p.get("draws", 10), 0
    if name == "deepfool":
        steps, candidates = p.get("steps", 50), p.get("candidates") or classes
        return steps + 1, steps * candidates
    if name == "cw":
        steps, search = p.get("steps", 100), p.get("search_steps", 5)
        return steps * search + 1, steps * search
    if name == "fgs-line":
        grid = round(p.get("max_eps", 0.5) / p.get("grid_step", 0.01))
        return grid + p.get("refine", 6) + 1, 1
    return 3, 2  # learned attackers (PGN generator, L2L attacker): one or two applications


def estimate_suite(suite: Suite, protocol: Protocol, device: torch.device,
                   probe_images: int | None = None) -> list[JobEstimate]:
    """Every training job of ``suite`` and the evaluation of each defense under ``protocol``."""
    n_train, n_test, shape, classes = split_sizes(protocol.dataset)
    defenses, surrogates = plan_training(suite)
    out: list[JobEstimate] = []
    cache: dict[str, tuple[float, float, float]] = {}
    passes: dict[str, tuple[float, float]] = {}
    jobs = [*surrogates.values(), *defenses]
    probe_training(jobs[0], shape, classes, device, probe_images)  # process warm-up (thread pools, kernels), discarded
    for job in jobs:
        key = repr((job.defense, job.arch, sorted(job.arch_params.items()),
                    sorted((k, repr(v)) for k, v in job.hparams.items() if k not in _COST_FREE)))
        if key not in cache:
            cache[key] = probe_training(job, shape, classes, device, probe_images)
        forward, backward, seconds = cache[key]
        common = build_trainer(job.defense, job.hparams).common
        images = n_train * common.epochs
        test_forward, _ = _passes(passes, job.arch, job.arch_params, shape, classes, device, probe_images)
        out.append(JobEstimate("train", job.label, job.arch, forward * images + n_test * common.epochs,
                               backward * images, seconds * images + test_forward * n_test * common.epochs,
                               f"{common.epochs} epochs x {math.ceil(n_train / common.batch_size)} batches of "
                               f"{common.batch_size}"))
    for job in defenses:
        out.append(estimate_evaluation(protocol.with_attacks(suite.attacks), job.label, job.arch, job.arch_params,
                                       device, probe_images, passes))
    return out


def _passes(cache: dict[str, tuple[float, float]], arch: str, params: dict[str, Any], shape: tuple[int, ...],
            classes: int, device: torch.device, probe_images: int | None) -> tuple[float, float]:
    key = repr((arch, sorted(params.items())))
    if key not in cache:
        cache[key] = probe_passes(arch, params, shape, classes, device, probe_images or 250)
    return cache[key]


def estimate_evaluation(protocol: Protocol, label: str, arch: str, arch_params: dict[str, Any], device: torch.device,
                        probe_images: int | None = None,
                        cache: dict[str, tuple[float, float]] | None = None) -> JobEstimate:
    """One checkpoint of ``arch`` attacked with every attack of ``protocol`` on its eval subset."""
    _, n_test, shape, classes = split_sizes(protocol.dataset)
    images = min(protocol.eval_subset.size, n_test)
    t_forward, t_backward = _passes(cache if cache is not None else {}, arch, arch_params, shape, classes, device,
                                    probe_images or protocol.batch_size)
    forward = backward = 0.0
    for spec, _ in protocol.expanded_attacks():
        f, b = attack_budget(spec, classes)
        forward, backward = forward + f * images, backward + b * images
    forward += images  # the clean predictions
    return JobEstimate("evaluate", label, arch, forward, backward, forward * t_forward + backward * t_backward,
                       f"{len(protocol.expanded_attacks())} attack runs on {images} images (budget upper bound)")


def format_estimates(estimates: list[JobEstimate], device: torch.device) -> str:
    """A table of jobs, then the totals and the job that dominates."""
    lines = [f"{'job':8s} {'label':28s} {'network':16s} {'fwd passes':>11s} {'bwd passes':>11s} {'time':>10s}  detail"]
    for e in estimates:
        lines.append(f"{e.kind:8s} {e.label[:28]:28s} {e.arch[:16]:16s} {e.forward:11.3g} {e.backward:11.3g} "
                     f"{_duration(e.seconds):>10s}  {e.detail}")
    total = sum(e.seconds for e in estimates)
    top = max(estimates, key=lambda e: e.seconds)
    train = sum(e.seconds for e in estimates if e.kind == "train")
    lines.append(f"total on {device.type}: {_duration(total)} ({total / 3600:.1f} device-hours; training "
                 f"{_duration(train)}, evaluation {_duration(total - train)}); largest job: {top.kind} {top.label} "
                 f"({100 * top.seconds / max(total, 1e-9):.0f}%)")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
