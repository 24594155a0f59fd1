from __future__ import annotations

import pytest
import torch

from bench.datasets import Dataset, load_dataset
from bench.models import build_model


@pytest.fixture(scope="session")
def digits() -> Dataset:
    """scikit-learn's real 8x8 digits: the fastest real data we have."""
    return load_dataset("digits")


@pytest.fixture(scope="session")
def trained_mlp(digits: Dataset) -> torch.nn.Module:
    """A small MLP trained on the digits for a few seconds (about 95% test accuracy)."""
    from defenses import build_trainer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("mlp", digits.input_shape, 10, digits.channel_mean, digits.channel_std,
                            hidden=(64,))
    build_trainer("standard", {"epochs": 15, "batch_size": 64}).fit(model, digits, seed=0, progress=False)
    return model.eval()
