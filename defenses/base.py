"""The defense contract (DESIGN.md): ``fit(model, data, seed, callbacks) -> TrainResult``.

``Trainer.fit`` owns the shared loop: seeded shuffling with a ``torch.Generator``, the optimizer
and its learning-rate schedule, per-epoch timing, pass counting, test accuracy, NaN/inf detection,
callbacks, a progress bar, and the early stop that restores the last good epoch. A defense
implements ``batch_loss`` and, where its method needs them, the hooks ``setup`` (per-run state and
auxiliary networks), ``train_batch`` (several optimizer steps per minibatch), ``after_step``
(a projection of the weights) and ``end_epoch`` (per-epoch statistics and collapse detection)."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Annotated, Any, Literal, Protocol

import torch
from pydantic import PlainValidator, ValidationError
from pydantic.dataclasses import dataclass as params_dataclass
from torch import nn
from tqdm.auto import tqdm

from attacks.base import PassCounter
from bench.core.params import (PARAMS_CONFIG, NonNegativeReal, PositiveInt, PositiveReal, number,
                               one_line)
from bench.datasets import Dataset
from bench.errors import ConfigError, TrainingDivergedError, did_you_mean

LR_SCHEDULES = ("constant", "cyclic", "multistep")
#: A fraction of the training, strictly between 0 and 1 (a multistep milestone).
Milestone = Annotated[float, PlainValidator(number(gt=0, lt=1))]


@contextlib.contextmanager
def frozen_parameters(module: nn.Module) -> Iterator[None]:
    """Run ``module`` as a constant: its parameters stop requiring gradients (so no graph is built
    through them; gradients w.r.t. inputs still work) and get their own flags back afterwards."""
    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


@params_dataclass(config=PARAMS_CONFIG)
class CommonHParams:
    """Optimization settings every trainer shares.

    ``lr_schedule``: ``constant``; ``cyclic`` (Wong et al. 2020: linear 0 -> lr over the first 2/5
    of training, then linear to 0, updated every step); ``multistep`` (multiply by ``lr_gamma`` at
    each of ``lr_milestones``, given as fractions of the epochs, e.g. [0.8] halves the rate for
    the last fifth with ``lr_gamma`` 0.5, as Deep Defense fine-tunes)."""

    epochs: PositiveInt = 20
    batch_size: PositiveInt = 50
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: PositiveReal = 1e-3
    momentum: NonNegativeReal = 0.9
    weight_decay: NonNegativeReal = 0.0
    lr_schedule: Literal["constant", "cyclic", "multistep"] = "constant"
    lr_milestones: list[Milestone] = field(default_factory=lambda: [0.5, 0.75])
    lr_gamma: Annotated[float, PlainValidator(number(gt=0, le=1))] = 0.1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lr_at(self, progress: float) -> float:
        """The learning rate after ``progress`` epochs (fractional: 2.5 is half-way through the third)."""
        if self.lr_schedule == "cyclic":
            peak = 0.4 * self.epochs
            rise = progress / peak if progress < peak else (self.epochs - progress) / (self.epochs - peak)
            return self.lr * max(rise, 0.0)
        if self.lr_schedule == "multistep":
            passed = sum(progress >= m * self.epochs - 1e-9 for m in self.lr_milestones)
            return self.lr * self.lr_gamma ** passed
        return self.lr


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    train_accuracy: float
    train_adv_accuracy: float | None
    test_accuracy: float | None
    seconds: float
    forward_passes: int
    backward_passes: int
    #: Defense-specific statistics of the epoch (robust estimates, early-stop decisions ...).
    extra: dict[str, Any] | None = None


@dataclass
class TrainResult:
    model: nn.Module
    epochs: list[EpochRecord]
    #: Auxiliary networks (generators, attackers, re-constructors) saved beside the classifier.
    aux: dict[str, nn.Module] = field(default_factory=dict)
    #: Set when the early stop fired: the epoch whose weights were restored and returned.
    kept_epoch: int | None = None
    #: Per auxiliary network, its registered architecture and parameters (``bench.models``), so
    #: its checkpoint rebuilds it; networks without one are saved as ``aux:NAME``.
    aux_arch: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)

    @property
    def final_record(self) -> EpochRecord:
        """The record of the epoch whose weights ``model`` holds."""
        if self.kept_epoch is None:
            return self.epochs[-1]
        return next(r for r in self.epochs if r.epoch == self.kept_epoch)


@dataclass
class BatchOutput:
    """What one training step produced: the loss to minimize and logits for accuracy records."""

    loss: torch.Tensor
    clean_logits: torch.Tensor | None
    adv_logits: torch.Tensor | None = None


@dataclass
class BatchContext:
    epoch: int
    generator: torch.Generator
    counter: PassCounter
    #: Indices of the minibatch's examples in the training split (per-sample state is keyed by them).
    index: torch.Tensor | None = None
    #: Epochs completed so far, fractional (drives the learning-rate schedule).
    progress: float = 0.0


@dataclass
class EpochContext:
    """What ``end_epoch`` may look at: the training split and the run's generator."""

    epoch: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    generator: torch.Generator
    counter: PassCounter


@params_dataclass(config=PARAMS_CONFIG)
class NoParams:
    """The hyper-parameters of a defense that has none of its own."""


class EpochCallback(Protocol):
    def __call__(self, epoch: int, model: nn.Module, record: EpochRecord) -> None: ...


def seed_from(generator: torch.Generator) -> int:
    """A seed drawn from the run's generator (for initializing auxiliary networks reproducibly)."""
    return int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator, device=generator.device))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            logits = model(x[start:start + batch_size])
            correct += int((logits.argmax(1) == y[start:start + batch_size]).sum())
    model.train(was_training)
    return correct / max(1, x.shape[0])


@dataclass
class _Tally:
    """Running sums of one epoch."""

    loss: float = 0.0
    seen: int = 0
    clean_hits: int = 0
    clean_seen: int = 0
    adv_hits: int = 0
    adv_seen: int = 0

    def add(self, out: BatchOutput, y: torch.Tensor) -> None:
        self.loss += float(out.loss.detach()) * len(y)
        self.seen += len(y)
        if out.clean_logits is not None:
            self.clean_hits += int((out.clean_logits.argmax(1) == y).sum())
            self.clean_seen += len(y)
        if out.adv_logits is not None:
            self.adv_hits += int((out.adv_logits.argmax(1) == y).sum())
            self.adv_seen += len(y)


class Trainer(ABC):
    """A defense: hyper-parameters set once, then ``fit`` on data."""

    name = "trainer"
    #: The dataclass of this defense's own hyper-parameters (its strength knob among them).
    Params: type = NoParams
    #: True for defenses that fine-tune a trained model (the suite must give ``init_from``).
    fine_tunes = False
    #: True for defenses whose ``end_epoch`` may report a collapse (the loop then keeps a copy
    #: of the last good epoch's weights to restore).
    detects_collapse = False

    def __init__(self, common: CommonHParams, params: Any) -> None:
        self.common = common
        self.params = params
        #: Auxiliary networks trained with the classifier (created by ``setup``), and the registered
        #: architecture of each that has one.
        self.aux: dict[str, nn.Module] = {}
        self.aux_arch: dict[str, tuple[str, dict[str, Any]]] = {}

    def hparams(self) -> dict[str, Any]:
        """Every hyper-parameter, defaults filled in (hashed into the training job's key)."""
        return {**self.common.as_dict(), **asdict(self.params)}

    # -- hooks ------------------------------------------------------------------------------------

    def setup(self, model: nn.Module, data: Dataset, device: torch.device,
              generator: torch.Generator) -> None:
        """Create per-run state (auxiliary networks in ``self.aux``, per-sample memories)."""

    @abstractmethod
    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   ctx: BatchContext) -> BatchOutput:
        """The loss of one minibatch; count every pass in ``ctx.counter``."""

    def train_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: BatchContext,
                    optimizer: torch.optim.Optimizer) -> BatchOutput:
        """One minibatch: loss, backward, optimizer step, ``after_step``."""
        out = self.batch_loss(model, x, y, ctx)
        self.check_finite(out.loss, ctx)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        self.after_step(model, ctx)
        return out

    def after_step(self, model: nn.Module, ctx: BatchContext) -> None:
        """Called after every optimizer step (e.g. a retraction of the weights)."""

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        """The network whose test accuracy each epoch records and that epoch checkpoints hold
        (an exponential moving average of ``model`` for defenses that evaluate one)."""
        return model

    def finish(self, model: nn.Module) -> None:
        """Called once after the last epoch, before ``fit`` returns ``model`` and ``self.aux``
        (e.g. to load averaged weights into them)."""

    def end_epoch(self, model: nn.Module, ctx: EpochContext) -> dict[str, Any]:
        """Per-epoch statistics stored with the epoch; ``{"collapsed": True}`` stops training and
        restores the last kept weights (the catastrophic-overfitting early stop): those of the
        previous epoch, or of the last epoch that did not return ``{"keep_weights": False}``."""
        return {}

    # -- the loop ---------------------------------------------------------------------------------

    def check_finite(self, loss: torch.Tensor, ctx: BatchContext) -> None:
        if not torch.isfinite(loss):
            raise TrainingDivergedError(f"{self.name}: loss became {float(loss.detach())} at epoch "
                                        f"{ctx.epoch}; lower the learning rate (lr={self.common.lr}) "
                                        f"or the strength knob")

    def trained_modules(self, model: nn.Module) -> list[nn.Module]:
        return [model, *self.aux.values()]

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        c = self.common
        params = [p for module in self.trained_modules(model) for p in module.parameters() if p.requires_grad]
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)

    def fit(self, model: nn.Module, data: Dataset, seed: int,
            callbacks: list[EpochCallback] | tuple = (), progress: bool = True) -> TrainResult:
        """Train ``model`` (on its own device) and return it with per-epoch records."""
        device = next(model.parameters()).device
        x_train, y_train = data.x_train.to(device), data.y_train.to(device)
        x_test, y_test = data.x_test.to(device), data.y_test.to(device)
        shuffle = torch.Generator().manual_seed(seed)
        generator = torch.Generator(device=device).manual_seed(seed + 1)
        self.setup(model, data, device, generator)
        optimizer = self.make_optimizer(model)
        records: list[EpochRecord] = []
        snapshot: list[dict[str, torch.Tensor]] | None = None
        snapshot_epoch = kept_epoch = None
        batches_per_epoch = math.ceil(x_train.shape[0] / self.common.batch_size)
        for epoch in range(1, self.common.epochs + 1):
            ctx = BatchContext(epoch, generator, PassCounter())
            start = time.perf_counter()
            tally = self._run_epoch(model, x_train, y_train, shuffle, ctx, optimizer, batches_per_epoch, progress)
            extra = self.end_epoch(model, EpochContext(epoch, x_train, y_train, generator, ctx.counter))
            seconds = time.perf_counter() - start
            record = EpochRecord(
                epoch, tally.loss / tally.seen,
                tally.clean_hits / tally.clean_seen if tally.clean_seen else accuracy(model, x_train, y_train),
                tally.adv_hits / tally.adv_seen if tally.adv_seen else None,
                accuracy(self.evaluation_model(model), x_test, y_test), seconds, ctx.counter.forward,
                ctx.counter.backward,
                extra or None)
            if not math.isfinite(record.loss):
                raise TrainingDivergedError(f"{self.name}: epoch {epoch} mean loss is {record.loss}")
            collapsed = bool(extra.get("collapsed")) and snapshot is not None
            if collapsed:
                kept_epoch = snapshot_epoch
                record.extra = {**extra, "restored_epoch": kept_epoch}
            records.append(record)
            for callback in callbacks:
                callback(epoch, self.evaluation_model(model), record)
            if collapsed:
                self._restore(model, snapshot)
                break
            if self.detects_collapse and extra.get("keep_weights", True):
                snapshot, snapshot_epoch = self._snapshot(model), epoch
        optimizer.zero_grad(set_to_none=True)
        self.finish(model)
        model.eval()
        for module in self.aux.values():
            module.eval()
        return TrainResult(model, records, dict(self.aux), kept_epoch, dict(self.aux_arch))

    def _run_epoch(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                   shuffle: torch.Generator, ctx: BatchContext, optimizer: torch.optim.Optimizer,
                   batches_per_epoch: int, progress: bool) -> _Tally:
        for module in self.trained_modules(model):
            module.train()
        bs = self.common.batch_size
        order = torch.randperm(x_train.shape[0], generator=shuffle).to(x_train.device)
        tally = _Tally()
        batches = tqdm(range(0, len(order), bs), desc=f"{self.name} epoch {ctx.epoch}/{self.common.epochs}",
                       leave=False, disable=None if progress else True, unit="batch")
        for number, begin in enumerate(batches):
            ctx.index = order[begin:begin + bs]
            ctx.progress = ctx.epoch - 1 + number / batches_per_epoch
            for group in optimizer.param_groups:  # a group may run at a multiple of the rate
                group["lr"] = self.common.lr_at(ctx.progress) * group.get("lr_scale", 1.0)
            x, y = x_train[ctx.index], y_train[ctx.index]
            tally.add(self.train_batch(model, x, y, ctx, optimizer), y)
        return tally

    def _snapshot(self, model: nn.Module) -> list[dict[str, torch.Tensor]]:
        return [copy.deepcopy(module.state_dict()) for module in self.trained_modules(model)]

    def _restore(self, model: nn.Module, snapshot: list[dict[str, torch.Tensor]]) -> None:
        for module, state in zip(self.trained_modules(model), snapshot):
            module.load_state_dict(state)


def build_trainer(name: str, params: dict[str, Any]) -> Trainer:
    """The registered trainer ``name`` with ``params`` split into common and defense-specific
    hyper-parameters; an unknown name is an error listing the accepted ones."""
    from defenses.registry import DEFENSES

    cls = DEFENSES.get(name).factory
    common_names = {f.name for f in fields(CommonHParams)}
    specific_names = {f.name for f in fields(cls.Params)}
    unknown = sorted(set(params) - common_names - specific_names)
    if unknown:
        raise ConfigError(f"defense {cls.name!r} got unknown hyper-parameter(s) {unknown}"
                          f"{did_you_mean(unknown[0], common_names | specific_names)} (accepted: "
                          f"{sorted(common_names | specific_names)})")
    try:
        common = CommonHParams(**{k: v for k, v in params.items() if k in common_names})
        specific = cls.Params(**{k: v for k, v in params.items() if k in specific_names})
    except ValidationError as err:
        raise ConfigError(f"defense {cls.name!r}: {one_line(err)}") from None
    return cls(common, specific)


def common_hparams(values: dict[str, Any]) -> CommonHParams:
    """The shared optimization settings from a mapping (a suite's ``training``); wrong names or
    types are one ``ConfigError`` naming each field."""
    try:
        return CommonHParams(**values)
    except ValidationError as err:
        raise ConfigError(one_line(err)) from None
