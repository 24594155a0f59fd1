"""Readers for the standard distributed file formats: IDX (MNIST, Fashion-MNIST), CIFAR's python
pickle batches (through a restricted unpickler that executes no code), and SVHN's MATLAB files."""

from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import DataError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_maybe_gzip(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzip-compressed): magic 0x0000 | dtype | ndim, big-endian dims."""
    data = _read_maybe_gzip(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(f"{path}: IDX header says {dims} ({expected} bytes) but the file holds "
                        f"{len(data) - header} bytes of data")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and builtin containers, and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("builtins", "bytes"), ("builtins", "list"),
        ("builtins", "dict"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name}: CIFAR batches hold only numpy "
                        "arrays and lists")


def read_cifar_batch(path: Path) -> dict[str, Any]:
    """One CIFAR python batch as a dict with str keys (the files use bytes keys, latin1 text)."""
    with path.open("rb") as handle:
        raw = _NumpyOnlyUnpickler(io.BytesIO(handle.read()), encoding="latin1").load()
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(raw).__name__}")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """SVHN cropped digits: X (32, 32, 3, N) uint8 -> NHWC, y (N, 1) with label 10 meaning 0."""
    from scipy.io import loadmat

    content = loadmat(str(path))
    if "X" not in content or "y" not in content:
        raise DataError(f"{path}: expected MATLAB variables 'X' and 'y', found {sorted(content)}")
    images = np.transpose(content["X"], (3, 0, 1, 2))
    labels = content["y"].reshape(-1).astype(np.int64) % 10
    return images, labels
