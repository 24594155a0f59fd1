"""File-based datasets read from a user's ``--data-root`` in their standard distributed formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.datasets.base import Dataset, register_dataset, to_tensor_images
from bench.datasets.formats import read_cifar_batch, read_idx, read_svhn_mat
from bench.errors import DataError

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _require_root(name: str, data_root: str | Path | None) -> Path:
    if data_root is None:
        raise DataError(f"dataset {name!r} is read from files: pass --data-root DIR "
                        f"(see README, 'Full datasets')")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset {name!r}: data root {root} is not a directory")
    return root


def _find_dir(name: str, root: Path, subdirs: tuple[str, ...], files: tuple[str, ...],
              suffixes: tuple[str, ...] = ("",)) -> Path:
    """The first of ``root/subdir`` holding every file (with one of ``suffixes``); else one error."""
    candidates = [root / sub if sub else root for sub in subdirs]
    for folder in candidates:
        if all(any((folder / (f + s)).is_file() for s in suffixes) for f in files):
            return folder
    shown = ", ".join(f + ("[.gz]" if ".gz" in suffixes else "") for f in files)
    places = ", ".join(str(c) for c in candidates)
    raise DataError(f"dataset {name!r}: expected files {shown} in one of: {places}")


def _resolve(folder: Path, stem: str) -> Path:
    plain = folder / stem
    return plain if plain.is_file() else folder / (stem + ".gz")


def _load_idx_dataset(name: str, data_root: str | Path | None, subdirs: tuple[str, ...]) -> Dataset:
    root = _require_root(name, data_root)
    folder = _find_dir(name, root, subdirs, IDX_FILES, suffixes=("", ".gz"))
    arrays = [read_idx(_resolve(folder, stem)) for stem in IDX_FILES]
    x_train, y_train, x_test, y_test = arrays
    for images, labels, split in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataError(f"{folder}: {split} images {images.shape} and labels {labels.shape} "
                            "do not match (expected (N, H, W) and (N,))")
    return Dataset(name, to_tensor_images(x_train, "NHW"), torch.from_numpy(y_train.astype(np.int64)),
                   to_tensor_images(x_test, "NHW"), torch.from_numpy(y_test.astype(np.int64)), 10,
                   {"source": str(folder), "format": "idx"})


@register_dataset("mnist", needs_data_root=True, classes=10, shape=(1, 28, 28), n_train=60000, n_test=10000)
def mnist(data_root: str | Path | None = None) -> Dataset:
    """Full MNIST (60k/10k) from IDX files, optionally gzipped."""
    return _load_idx_dataset("mnist", data_root, ("", "mnist", "MNIST/raw"))


@register_dataset("fashion-mnist", needs_data_root=True, classes=10, shape=(1, 28, 28), n_train=60000,
                  n_test=10000)
def fashion_mnist(data_root: str | Path | None = None) -> Dataset:
    """Fashion-MNIST (60k/10k) from IDX files, optionally gzipped."""
    return _load_idx_dataset("fashion-mnist", data_root, ("fashion-mnist", "FashionMNIST/raw", ""))


def _cifar_arrays(batches: list[dict], label_key: str, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        data = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    except KeyError as missing:
        raise DataError(f"{path}: CIFAR batch lacks key {missing}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise DataError(f"{path}: expected data (N, 3072) and N labels, got {data.shape} "
                        f"and {labels.shape}")
    return to_tensor_images(data.reshape(-1, 3, 32, 32), "NCHW"), torch.from_numpy(labels)


@register_dataset("cifar10", needs_data_root=True, classes=10, shape=(3, 32, 32), n_train=50000, n_test=10000)
def cifar10(data_root: str | Path | None = None) -> Dataset:
    """CIFAR-10 (50k/10k) from the python pickle batches (read without executing code)."""
    root = _require_root("cifar10", data_root)
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    folder = _find_dir("cifar10", root, ("cifar-10-batches-py", ""), train_files + ("test_batch",))
    x_train, y_train = _cifar_arrays([read_cifar_batch(folder / f) for f in train_files], "labels", folder)
    x_test, y_test = _cifar_arrays([read_cifar_batch(folder / "test_batch")], "labels", folder)
    return Dataset("cifar10", x_train, y_train, x_test, y_test, 10,
                   {"source": str(folder), "format": "cifar-python"})


@register_dataset("cifar100", needs_data_root=True, classes=100, shape=(3, 32, 32), n_train=50000,
                  n_test=10000)
def cifar100(data_root: str | Path | None = None) -> Dataset:
    """CIFAR-100 (50k/10k, fine labels) from the python pickle files."""
    root = _require_root("cifar100", data_root)
    folder = _find_dir("cifar100", root, ("cifar-100-python", ""), ("train", "test"))
    x_train, y_train = _cifar_arrays([read_cifar_batch(folder / "train")], "fine_labels", folder)
    x_test, y_test = _cifar_arrays([read_cifar_batch(folder / "test")], "fine_labels", folder)
    return Dataset("cifar100", x_train, y_train, x_test, y_test, 100,
                   {"source": str(folder), "format": "cifar-python"})


@register_dataset("svhn", needs_data_root=True, classes=10, shape=(3, 32, 32), n_train=73257, n_test=26032)
def svhn(data_root: str | Path | None = None) -> Dataset:
    """SVHN cropped digits from train_32x32.mat and test_32x32.mat (label 10 is digit 0)."""
    root = _require_root("svhn", data_root)
    folder = _find_dir("svhn", root, ("svhn", "SVHN", ""), ("train_32x32.mat", "test_32x32.mat"))
    x_train, y_train = read_svhn_mat(folder / "train_32x32.mat")
    x_test, y_test = read_svhn_mat(folder / "test_32x32.mat")
    return Dataset("svhn", to_tensor_images(x_train, "NHWC"), torch.from_numpy(y_train),
                   to_tensor_images(x_test, "NHWC"), torch.from_numpy(y_test), 10,
                   {"source": str(folder), "format": "svhn-mat"})
