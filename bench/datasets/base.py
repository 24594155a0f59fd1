"""The dataset container and its registry."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from bench.errors import ConfigError
from bench.registry import Registry

DatasetLoader = Callable[..., "Dataset"]
DATASETS: Registry[DatasetLoader] = Registry("dataset")
register_dataset = DATASETS.register


@dataclass(frozen=True)
class Dataset:
    """A train/test split: float32 NCHW images in [0, 1] and int64 labels.

    ``mean`` and ``std`` (per channel, from the training split) are handed to the model zoo so
    that normalization lives inside the model and attacks work in pixel space."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.dtype != torch.float32 or x.ndim != 4:
                raise ConfigError(f"dataset {self.name}: {split} images must be float32 NCHW, "
                                  f"got {x.dtype} with shape {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise ConfigError(f"dataset {self.name}: {split} labels must be int64 of shape "
                                  f"({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")
            if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
                raise ConfigError(f"dataset {self.name}: {split} pixels must lie in [0, 1], got "
                                  f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    # Computed once per dataset (the splits are never modified): at CIFAR scale each pass over the
    # 600 MB training split costs a second, and every job key and checkpoint asks for them.
    @functools.cached_property
    def channel_mean(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.x_train.mean(dim=(0, 2, 3)))

    @functools.cached_property
    def channel_std(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.x_train.std(dim=(0, 2, 3)).clamp_min(1e-3))

    def fingerprint(self) -> str:
        """sha256 of the split's bytes: part of every content key that depends on the data."""
        return self._fingerprint

    @functools.cached_property
    def _fingerprint(self) -> str:
        digest = hashlib.sha256()
        for tensor in (self.x_train, self.y_train, self.x_test, self.y_test):
            digest.update(tensor.contiguous().numpy())  # the buffer itself: no copy of the split
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        """Stored description: sizes, shape, classes and where the data came from."""
        return {"name": self.name, "n_train": int(self.x_train.shape[0]),
                "n_test": int(self.x_test.shape[0]), "input_shape": list(self.input_shape),
                "num_classes": self.num_classes, **self.provenance}


def to_tensor_images(images: np.ndarray, layout: str) -> torch.Tensor:
    """uint8 (or 0-255 float) images in ``layout`` ('NHW', 'NHWC' or 'NCHW') -> float32 NCHW in [0,1]."""
    array = np.asarray(images)
    if layout == "NHW":
        array = array[:, None, :, :]
    elif layout == "NHWC":
        array = array.transpose(0, 3, 1, 2)
    elif layout != "NCHW":
        raise ValueError(f"layout must be NHW, NHWC or NCHW, got {layout!r}")
    pixels = np.ascontiguousarray(array, dtype=np.float32)
    if pixels is array or np.shares_memory(pixels, array):
        pixels = pixels.copy()
    pixels /= np.float32(255.0)  # in place: the split is held once, not twice, while loading
    return torch.from_numpy(pixels)


def stratified_split(labels: np.ndarray, test_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) with ``test_per_class`` test points of every class.

    Each class's indices are permuted by ``np.random.RandomState(seed)`` in class order, the
    first ``test_per_class`` go to test; both index lists are returned sorted."""
    rng = np.random.RandomState(seed)
    train, test = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        if len(members) <= test_per_class:
            raise ConfigError(f"class {cls} has {len(members)} examples, need more than "
                              f"{test_per_class} for a stratified split")
        test.append(members[:test_per_class])
        train.append(members[test_per_class:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_dataset(name: str, data_root: str | Path | None = None) -> Dataset:
    """Load a registered dataset; file-based ones read from ``data_root``."""
    entry = DATASETS.get(name)
    if entry.metadata.get("needs_data_root"):
        return entry.factory(data_root=data_root)
    return entry.factory()
