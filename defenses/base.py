"""The defense contract (docs/design.md): ``fit(model, data, seed, callbacks) -> TrainResult``.

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
from bench.core.params import (PARAMS_CONFIG, Flag, NonNegativeInt, NonNegativeReal, PositiveInt, PositiveReal,
                               number, one_line)
from bench.datasets import Dataset
from bench.datasets.loader import Augment, TrainStream, eval_batches
from bench.errors import ConfigError, TrainingDivergedError, did_you_mean
from defenses.resume import _UNKNOWN, EpochStates
from defenses.resume import capture as _capture
from defenses.resume import restore as _restore_value

LR_SCHEDULES = ("constant", "cyclic", "multistep", "cosine", "onecycle")
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
class AugmentParams:
    """Train-time augmentation (``bench.datasets.loader.Augment``): ``pad_crop`` pixels of padding
    then a random crop back to size, ``pad_mode`` zero (He et al. 2016's CIFAR recipe) or reflect
    (PGN's 4-pixel reflect-pad shift, docs/defense-specs.md sec. 5.4), and a random horizontal flip."""

    pad_crop: NonNegativeInt = 0
    hflip: Flag = False
    pad_mode: Literal["zero", "reflect"] = "zero"

    def spec(self) -> Augment:
        return Augment(self.pad_crop, self.hflip, self.pad_mode)


#: Settings added after content keys were fixed: left out of ``as_dict`` (so out of every training
#: job's key) while they hold these defaults, so runs that do not use them keep their keys.
_OMITTED_AT_DEFAULT: dict[str, Any] = {"nesterov": False, "augment": None}


@params_dataclass(config=PARAMS_CONFIG)
class CommonHParams:
    """Optimization settings every trainer shares.

    ``lr_schedule`` (a ``torch.optim.lr_scheduler`` stepped after every minibatch): ``constant``;
    ``cyclic`` (Wong et al. 2020: linear 0 -> lr over the first 2/5 of training, then linear to
    0); ``multistep`` (multiply by ``lr_gamma`` at each of ``lr_milestones``, given as fractions of
    the epochs, e.g. [0.8] halves the rate for the last fifth with ``lr_gamma`` 0.5, as Deep Defense
    fine-tunes; Madry's CIFAR decays at 40k and 60k of 80k iterations are [0.5, 0.75]); ``cosine``
    (``CosineAnnealingLR`` from lr to 0); ``onecycle`` (``OneCycleLR``, linear, peak lr at 2/5).
    ``nesterov``: SGD with Nesterov momentum (the WRN plain nets of L2L, docs/defense-specs.md sec. 4.5).
    ``augment``: train-time augmentation (``AugmentParams``); none by default and for MNIST."""

    epochs: PositiveInt = 20
    batch_size: PositiveInt = 50
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: PositiveReal = 1e-3
    momentum: NonNegativeReal = 0.9
    weight_decay: NonNegativeReal = 0.0
    lr_schedule: Literal["constant", "cyclic", "multistep", "cosine", "onecycle"] = "constant"
    lr_milestones: list[Milestone] = field(default_factory=lambda: [0.5, 0.75])
    lr_gamma: Annotated[float, PlainValidator(number(gt=0, le=1))] = 0.1
    nesterov: Flag = False
    augment: AugmentParams | None = None

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        for name, default in _OMITTED_AT_DEFAULT.items():
            if values[name] == default:
                del values[name]
        return values

    def lr_factor(self, progress: float) -> float:
        """The learning rate's multiple of ``lr`` after ``progress`` epochs (fractional: 2.5 is
        half-way through the third) for the schedules given as a function of training progress."""
        if self.lr_schedule == "cyclic":
            peak = 0.4 * self.epochs
            rise = progress / peak if progress < peak else (self.epochs - progress) / (self.epochs - peak)
            return max(rise, 0.0)
        if self.lr_schedule == "multistep":
            passed = sum(progress >= m * self.epochs - 1e-9 for m in self.lr_milestones)
            return self.lr_gamma ** passed
        return 1.0

    def lr_at(self, progress: float) -> float:
        """The learning rate after ``progress`` epochs (``constant``, ``cyclic``, ``multistep``)."""
        return self.lr * self.lr_factor(progress)

    def make_scheduler(self, optimizer: torch.optim.Optimizer,
                       steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
        """The schedule as a ``torch.optim.lr_scheduler`` stepped once per minibatch. A parameter
        group's ``lr_scale`` (L2L's attacker) multiplies its base rate."""
        for group in optimizer.param_groups:
            group["lr"] = self.lr * group.get("lr_scale", 1.0)
        sched = torch.optim.lr_scheduler
        total = self.epochs * steps_per_epoch
        if self.lr_schedule == "cosine":
            return sched.CosineAnnealingLR(optimizer, T_max=total, eta_min=0.0)
        if self.lr_schedule == "onecycle":
            return sched.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total + 1,
                                    pct_start=0.4, anneal_strategy="linear", cycle_momentum=False)

        def factor(step: int) -> float:
            return self.lr_factor(step // steps_per_epoch + (step % steps_per_epoch) / steps_per_epoch)

        return sched.LambdaLR(optimizer, factor)


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
    """What ``end_epoch`` may look at: the training split (in host memory; copy what you use to
    the device) and the run's generator."""

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
    """Top-1 accuracy in eval mode (the model's mode is restored); ``x`` may stay in host memory:
    batches are copied to the model's device one at a time."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    with torch.no_grad():
        for xb, yb in eval_batches(x, y, batch_size, device):
            correct += int((model(xb).argmax(1) == yb).sum())
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
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
                                   nesterov=c.nesterov)
        return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)

    def fit(self, model: nn.Module, data: Dataset, seed: int,
            callbacks: list[EpochCallback] | tuple = (), progress: bool = True, workers: int = 0,
            states: EpochStates | None = None) -> TrainResult:
        """Train ``model`` (on its own device) and return it with per-epoch records.

        The split stays in host memory; minibatches stream to the device (``workers`` loader
        processes; 0 gathers them in this process). With ``states``, every finished epoch's full
        training state is written there and a run that finds one resumes after its epoch."""
        device = next(model.parameters()).device
        shuffle = torch.Generator().manual_seed(seed)
        generator = torch.Generator(device=device).manual_seed(seed + 1)
        self.setup(model, data, device, generator)
        optimizer = self.make_optimizer(model)
        augment = self.common.augment.spec() if self.common.augment is not None else None
        stream = TrainStream(data.x_train, data.y_train, self.common.batch_size, shuffle, device, workers, augment, seed)
        scheduler = self.common.make_scheduler(optimizer, len(stream))
        records: list[EpochRecord] = []
        snapshot: list[dict[str, torch.Tensor]] | None = None
        snapshot_epoch = kept_epoch = None
        first = 1
        saved = states.latest() if states is not None else None
        if saved is not None:
            self._load_state(saved, model, optimizer, scheduler, shuffle, generator, device)
            records = [EpochRecord(**r) for r in saved["records"]]
            snapshot, snapshot_epoch = saved["snapshot"], saved["snapshot_epoch"]
            first = int(saved["epoch"]) + 1
        epochs = tqdm(range(first, self.common.epochs + 1), desc=f"{self.name}", unit="epoch", leave=False,
                      initial=first - 1, total=self.common.epochs, disable=None if progress else True)
        for epoch in epochs:
            ctx = BatchContext(epoch, generator, PassCounter())
            start = time.perf_counter()
            tally = self._run_epoch(model, stream, ctx, optimizer, scheduler, progress)
            extra = self.end_epoch(model, EpochContext(epoch, data.x_train, data.y_train, generator, ctx.counter))
            seconds = time.perf_counter() - start
            record = EpochRecord(
                epoch, tally.loss / tally.seen,
                tally.clean_hits / tally.clean_seen if tally.clean_seen else accuracy(model, data.x_train, data.y_train),
                tally.adv_hits / tally.adv_seen if tally.adv_seen else None,
                accuracy(self.evaluation_model(model), data.x_test, data.y_test), seconds, ctx.counter.forward,
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
            if states is not None:
                states.save(epoch, self._state(epoch, model, optimizer, scheduler, shuffle, generator, records,
                                               snapshot, snapshot_epoch))
        optimizer.zero_grad(set_to_none=True)
        self.finish(model)
        model.eval()
        for module in self.aux.values():
            module.eval()
        return TrainResult(model, records, dict(self.aux), kept_epoch, dict(self.aux_arch))

    def _run_epoch(self, model: nn.Module, stream: TrainStream, ctx: BatchContext,
                   optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                   progress: bool) -> _Tally:
        for module in self.trained_modules(model):
            module.train()
        tally = _Tally()
        batches = tqdm(stream.epoch(ctx.epoch), desc=f"{self.name} epoch {ctx.epoch}/{self.common.epochs}",
                       total=len(stream), leave=False, disable=None if progress else True, unit="batch")
        for number, (x, y, index) in enumerate(batches):
            ctx.index = index
            ctx.progress = ctx.epoch - 1 + number / len(stream)
            tally.add(self.train_batch(model, x, y, ctx, optimizer), y)
            scheduler.step()
        return tally

    # -- resume -----------------------------------------------------------------------------------

    def _state(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, shuffle: torch.Generator,
               generator: torch.Generator, records: list[EpochRecord],
               snapshot: list[dict[str, torch.Tensor]] | None, snapshot_epoch: int | None) -> dict[str, Any]:
        """Everything the next epoch depends on, as tensors and plain values (``weights_only`` loads)."""
        rng = {"cpu": torch.get_rng_state(), "shuffle": shuffle.get_state(), "generator": generator.get_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"epoch": epoch, "model": _capture(model), "trainer": self._trainer_state(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng,
                "records": [asdict(r) for r in records], "snapshot": snapshot, "snapshot_epoch": snapshot_epoch}

    def _trainer_state(self) -> dict[str, Any]:
        """This defense's per-run state (auxiliary networks, EMA shadows, per-sample memories,
        counters): every attribute of a type ``_capture`` knows; the rest is configuration that
        ``__init__`` and ``setup`` rebuild the same way."""
        out = {}
        for name, value in vars(self).items():
            if name in ("common", "params", "aux_arch"):
                continue
            captured = _capture(value)
            if captured is not _UNKNOWN:
                out[name] = captured
        return out

    def _load_state(self, state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, shuffle: torch.Generator,
                    generator: torch.Generator, device: torch.device) -> None:
        _restore_value(model, state["model"], device)
        for name, saved in state["trainer"].items():
            setattr(self, name, _restore_value(getattr(self, name, None), saved, device))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["cpu"])
        shuffle.set_state(state["rng"]["shuffle"])
        generator.set_state(state["rng"]["generator"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

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
