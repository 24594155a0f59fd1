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


@pytest.fixture(scope="session")
def postgres_server():
    """The URL of a PostgreSQL server: ADVARENA_TEST_POSTGRES_URL (.ci/run starts one), else a
    throwaway server started here from Debian's postgresql package."""
    import os
    import tempfile
    from pathlib import Path

    import postgres_server as server

    if os.environ.get(server.ENV_URL):
        yield os.environ[server.ENV_URL]
        return
    folder = Path(tempfile.mkdtemp(prefix="advarena-pg-"))
    url = server.start(folder)
    yield url
    server.stop(folder)


@pytest.fixture()
def postgres_database(postgres_server):
    """The URL of a new, empty PostgreSQL database, dropped afterwards."""
    import uuid

    import psycopg

    name = f"advarena_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_server.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A fresh, empty database on each backend: an SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite'}"
    return request.getfixturevalue("postgres_database")
