"""Loaders read tiny files the tests write in the standard formats."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from bench.datasets import DATASETS, load_dataset
from bench.errors import DataError

rng = np.random.RandomState(0)


def write_idx(path, array, compress=False):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("name,subdir,compress", [("mnist", "", False), ("mnist", "MNIST/raw", True),
                                                 ("fashion-mnist", "fashion-mnist", False)])
def test_idx_datasets(tmp_path, name, subdir, compress):
    folder = tmp_path / subdir
    folder.mkdir(parents=True, exist_ok=True)
    images = rng.randint(0, 256, size=(6, 28, 28))
    labels = np.array([0, 1, 2, 3, 4, 9])
    suffix = ".gz" if compress else ""
    for prefix in ("train", "t10k"):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    data = load_dataset(name, tmp_path)
    assert data.x_train.shape == (6, 1, 28, 28) and data.x_train.dtype == torch.float32
    assert torch.allclose(data.x_test[2, 0], torch.from_numpy(images[2] / 255.0).float())
    assert data.y_train.tolist() == labels.tolist()


def write_cifar(path, n, label_key, classes):
    batch = {b"data": rng.randint(0, 256, size=(n, 3072)).astype(np.uint8),
             label_key.encode(): list(rng.randint(0, classes, size=n))}
    path.write_bytes(pickle.dumps(batch))
    return batch


def test_cifar10(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        write_cifar(folder / f"data_batch_{i}", 3, "labels", 10)
    test = write_cifar(folder / "test_batch", 4, "labels", 10)
    data = load_dataset("cifar10", tmp_path)
    assert data.x_train.shape == (15, 3, 32, 32) and data.x_test.shape == (4, 3, 32, 32)
    expected = test[b"data"][1].reshape(3, 32, 32) / 255.0
    assert np.allclose(data.x_test[1].numpy(), expected)


def test_cifar100(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    write_cifar(folder / "train", 5, "fine_labels", 100)
    write_cifar(folder / "test", 2, "fine_labels", 100)
    data = load_dataset("cifar100", tmp_path)
    assert data.num_classes == 100 and data.y_train.shape == (5,)


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_cifar_pickle_with_code_is_refused(tmp_path, capsys):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(pickle.dumps({b"data": Payload()}))
    (folder / "test").write_bytes(pickle.dumps({b"data": Payload()}))
    with pytest.raises(DataError, match="refusing to unpickle builtins.print"):
        load_dataset("cifar100", tmp_path)
    assert "code ran" not in capsys.readouterr().out


def test_svhn(tmp_path):
    from scipy.io import savemat

    for split, n in (("train", 5), ("test", 3)):
        x = rng.randint(0, 256, size=(32, 32, 3, n)).astype(np.uint8)
        y = np.array([[10], [1], [2], [3], [4]][:n])
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
    data = load_dataset("svhn", tmp_path)
    assert data.x_train.shape == (5, 3, 32, 32)
    assert data.y_train.tolist() == [0, 1, 2, 3, 4]  # label 10 is digit 0


@pytest.mark.parametrize("name", [n for n in DATASETS if DATASETS.get(n).metadata.get("needs_data_root")])
def test_missing_files_name_the_expected_files(tmp_path, name):
    with pytest.raises(DataError, match="expected files"):
        load_dataset(name, tmp_path)


def test_file_dataset_without_data_root():
    with pytest.raises(DataError, match="--data-root"):
        load_dataset("cifar10")


def test_mnist5k_split_is_stratified_and_fixed():
    data = load_dataset("mnist5k")
    assert data.x_train.shape == (4000, 1, 28, 28) and data.x_test.shape == (1000, 1, 28, 28)
    assert data.y_test.bincount().tolist() == [100] * 10
    assert data.provenance["split_seed"] == 0
    assert data.fingerprint() == load_dataset("mnist5k").fingerprint()


def test_digits(digits):
    assert digits.x_train.shape[1:] == (1, 8, 8)
    assert float(digits.x_train.max()) == 1.0
