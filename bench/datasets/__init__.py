"""Dataset registry: embedded (``mnist5k``, ``digits``) and file-based (``mnist``, ``fashion-mnist``,
``cifar10``, ``cifar100``, ``svhn``) datasets, all as float32 NCHW images in [0, 1]."""

from bench.datasets.base import DATASETS, Dataset, load_dataset, register_dataset
from bench.datasets import embedded, files  # noqa: F401  (registers the built-ins)

__all__ = ["DATASETS", "Dataset", "load_dataset", "register_dataset"]
