"""The defense contract (DESIGN.md): ``fit(model, data, seed, callbacks) -> TrainResult``.

``Trainer.fit`` owns the shared loop: seeded shuffling with a ``torch.Generator``, the optimizer,
per-epoch timing, pass counting, test accuracy, NaN/inf detection, callbacks and a progress bar.
Each defense implements only ``batch_loss``."""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from attacks.base import PassCounter
from bench.datasets import Dataset
from bench.errors import ConfigError, TrainingDivergedError


@dataclass
class CommonHParams:
    """Optimization settings every trainer shares."""

    epochs: int = 20
    batch_size: int = 50
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError(f"need epochs >= 1, batch_size >= 1, lr > 0, weight_decay >= 0; got "
                              f"epochs={self.epochs}, batch_size={self.batch_size}, lr={self.lr}, "
                              f"weight_decay={self.weight_decay}")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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


@dataclass
class TrainResult:
    model: nn.Module
    epochs: list[EpochRecord]
    #: Auxiliary networks (generators, attackers, re-constructors) saved beside the classifier.
    aux: dict[str, nn.Module] = field(default_factory=dict)


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


class EpochCallback(Protocol):
    def __call__(self, epoch: int, model: nn.Module, record: EpochRecord) -> None: ...


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


class Trainer(ABC):
    """A defense: hyper-parameters set once, then ``fit`` on data."""

    name = "trainer"
    #: The dataclass of this defense's own hyper-parameters (its strength knob among them).
    Params: type = type("NoParams", (), {"__dataclass_fields__": {}})

    def __init__(self, common: CommonHParams, params: Any) -> None:
        common.validate()
        self.common = common
        self.params = params

    def hparams(self) -> dict[str, Any]:
        """Every hyper-parameter, defaults filled in (hashed into the training job's key)."""
        return {**self.common.as_dict(), **asdict(self.params)}

    @abstractmethod
    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   ctx: BatchContext) -> BatchOutput:
        """The loss of one minibatch; count every pass in ``ctx.counter``."""

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        c = self.common
        if c.optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum,
                                   weight_decay=c.weight_decay)
        return torch.optim.Adam(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)

    def fit(self, model: nn.Module, data: Dataset, seed: int,
            callbacks: list[EpochCallback] | tuple = (), progress: bool = True) -> TrainResult:
        """Train ``model`` (on its own device) and return it with per-epoch records."""
        device = next(model.parameters()).device
        x_train, y_train = data.x_train.to(device), data.y_train.to(device)
        x_test, y_test = data.x_test.to(device), data.y_test.to(device)
        shuffle = torch.Generator().manual_seed(seed)
        ctx = BatchContext(0, torch.Generator(device=device).manual_seed(seed + 1), PassCounter())
        optimizer = self.make_optimizer(model)
        records: list[EpochRecord] = []
        bs = self.common.batch_size
        for epoch in range(1, self.common.epochs + 1):
            ctx.epoch, ctx.counter = epoch, PassCounter()
            model.train()
            start = time.perf_counter()
            order = torch.randperm(x_train.shape[0], generator=shuffle).to(device)
            total_loss, clean_hits, clean_seen, adv_hits, adv_seen, seen = 0.0, 0, 0, 0, 0, 0
            batches = tqdm(range(0, len(order), bs), desc=f"{self.name} epoch {epoch}/{self.common.epochs}",
                           leave=False, disable=None if progress else True, unit="batch")
            for begin in batches:
                index = order[begin:begin + bs]
                x, y = x_train[index], y_train[index]
                out = self.batch_loss(model, x, y, ctx)
                if not torch.isfinite(out.loss):
                    raise TrainingDivergedError(f"{self.name}: loss became {float(out.loss.detach())} at epoch "
                                                f"{epoch}, batch {begin // bs + 1}; lower the learning "
                                                f"rate (lr={self.common.lr}) or the strength knob")
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                optimizer.step()
                total_loss += float(out.loss.detach()) * len(y)
                seen += len(y)
                if out.clean_logits is not None:
                    clean_hits += int((out.clean_logits.argmax(1) == y).sum())
                    clean_seen += len(y)
                if out.adv_logits is not None:
                    adv_hits += int((out.adv_logits.argmax(1) == y).sum())
                    adv_seen += len(y)
            seconds = time.perf_counter() - start
            record = EpochRecord(epoch, total_loss / seen,
                                 clean_hits / clean_seen if clean_seen else accuracy(model, x_train, y_train),
                                 adv_hits / adv_seen if adv_seen else None,
                                 accuracy(model, x_test, y_test), seconds,
                                 ctx.counter.forward, ctx.counter.backward)
            if not math.isfinite(record.loss):
                raise TrainingDivergedError(f"{self.name}: epoch {epoch} mean loss is {record.loss}")
            records.append(record)
            for callback in callbacks:
                callback(epoch, model, record)
        optimizer.zero_grad(set_to_none=True)
        model.eval()
        return TrainResult(model, records)


def build_trainer(name: str, params: dict[str, Any]) -> Trainer:
    """The registered trainer ``name`` with ``params`` split into common and defense-specific
    hyper-parameters; an unknown name is an error listing the accepted ones."""
    from defenses.registry import DEFENSES

    cls = DEFENSES.get(name).factory
    common_names = {f.name for f in fields(CommonHParams)}
    specific_names = {f.name for f in fields(cls.Params)}
    unknown = sorted(set(params) - common_names - specific_names)
    if unknown:
        raise ConfigError(f"defense {cls.name!r} got unknown hyper-parameter(s) {unknown}; accepted: "
                          f"{sorted(common_names | specific_names)}")
    common = CommonHParams(**{k: v for k, v in params.items() if k in common_names})
    specific = cls.Params(**{k: v for k, v in params.items() if k in specific_names})
    return cls(common, specific)
