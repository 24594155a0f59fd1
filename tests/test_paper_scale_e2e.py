"""A tiny end-to-end run of seeds-cifar10 entries on CPU: CIFAR-10 files written here in the python
pickle format, width-reduced PreAct-ResNet-18, one epoch with crop+flip augmentation, on --subset 64
of cifar10-linf's attack list with fewer iterations (the shipped list takes minutes per model on 2
shared cores); trains, evaluates (stored apart as NAME@subset64) and reports."""

import copy
import pickle
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = ("standard", "pgd-at", "pgn")
#: cifar10-linf's attacks at a few iterations each (same dataset, eps, losses and transfer roles).
CHEAP = {"pgd": {"steps": 2, "restarts": 1}, "mim": {"steps": 2}, "noise": {"draws": 2},
         "deepfool": {"steps": 3}, "cw": {"steps": 5, "search_steps": 1}}


def write_cifar10(folder: Path, per_batch: int = 20, n_test: int = 80) -> None:
    """data_batch_1..5 and test_batch as CIFAR-10's python pickles: bytes keys, uint8 (N, 3072) rows."""
    rng = np.random.RandomState(0)
    folder.mkdir(parents=True)
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", n_test)]:
        labels = rng.randint(0, 10, size=n)
        # Class-dependent colour so that one epoch learns something.
        base = (labels[:, None] * 25 + rng.randint(0, 30, size=(n, 3072))).clip(0, 255)
        batch = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": base.astype(np.uint8),
                 b"filenames": [f"{i}.png".encode() for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


def tiny_seeds_cifar10(path: Path) -> None:
    """seeds-cifar10's entries ENTRIES and its surrogates, width-reduced and for one epoch."""
    suite = yaml.safe_load((resources.files("bench.configs") / "suites" / "seeds-cifar10.yaml").read_text())
    suite["name"] = "seeds-cifar10-tiny"
    suite["model"] = {"arch": "preact-resnet18", "params": {"width": 4}}
    suite["defenses"] = [copy.deepcopy(d) for d in suite["defenses"] if (d.get("label") or d["defense"]) in ENTRIES]
    for entry in [*suite["defenses"], *suite["surrogates"].values()]:
        entry["hparams"] = {**entry.get("hparams", {}), "epochs": 1, "batch_size": 50}
        if entry["defense"] == "pgn":
            entry["hparams"].update(c_L=50.0, generator_width=8, generator_hidden=32)
        if entry["defense"] == "pgd-at":
            entry["hparams"]["steps"] = 2
    suite["surrogates"]["surrogate-other-arch"]["model"] = {"arch": "convpool-cnn", "params": {"width": 0.125}}
    assert {"augment" in e.get("hparams", {}) or "augment" in suite["training"] for e in suite["defenses"]} == {True}
    path.write_text(yaml.safe_dump(suite))


def tiny_cifar10_linf(path: Path) -> str:
    """cifar10-linf's attack list with CHEAP iterations, without AutoAttack's slow cascade."""
    protocol = yaml.safe_load((resources.files("bench.configs") / "protocols" / "cifar10-linf.yaml").read_text())
    protocol["name"] = "cifar10-linf-tiny"
    attacks = []
    for spec in protocol["attacks"]:
        if spec["attack"] in ("autoattack", "apgd-t"):
            continue
        params = spec["params"].get("base_params", spec["params"])
        params.update(CHEAP.get(spec["params"].get("base", spec["attack"]), {}))
        spec.pop("eps_grid", None)
        attacks.append(spec)
    protocol["attacks"] = attacks
    path.write_text(yaml.safe_dump(protocol))
    return protocol["name"]


def _advarena(*args):
    return subprocess.run([sys.executable, "-m", "bench.cli", *args, "--threads", "2"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.slow
def test_seeds_cifar10_entries_train_evaluate_and_report_on_cifar_files(tmp_path):
    write_cifar10(tmp_path / "data" / "cifar-10-batches-py")
    suite = tmp_path / "suite.yaml"
    tiny_seeds_cifar10(suite)
    name = tiny_cifar10_linf(tmp_path / "protocol.yaml")
    work = tmp_path / "work"
    run = _advarena("run", str(suite), "--protocol", str(tmp_path / "protocol.yaml"), "--data-root",
                    str(tmp_path / "data"), "--subset", "64", "--workdir", str(work), "--no-progress", "--workers", "1")
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"{name}@subset64" in run.stdout + run.stderr

    from sqlalchemy import select

    from results.schema import Evaluation, TrainingRun
    from results.store import Store, default_url

    store = Store(default_url(work))
    with store.session() as session:
        runs = session.scalars(select(TrainingRun)).all()
        evaluations = session.scalars(select(Evaluation)).all()
    assert sorted(r.label for r in runs) == sorted([*ENTRIES, "surrogate", "surrogate-other-arch"])
    assert all(r.status == "finished" for r in runs)
    assert {"pad_crop": 4, "hflip": True, "pad_mode": "reflect"} in [r.hparams.get("augment") for r in runs]
    assert len(evaluations) == 3
    assert {(e.protocol, e.n_examples) for e in evaluations} == {(f"{name}@subset64", 64)}
    report = _advarena("report", "--protocol", f"{name}@subset64", "--workdir", str(work))
    assert report.returncode == 0, report.stderr[-3000:]
    assert Path(report.stdout.strip().splitlines()[-1]).is_file()
    # The full protocol has no results: subset results are never mixed in.
    board = _advarena("leaderboard", "--protocol", name, "--workdir", str(work), "--format", "csv")
    assert "pgd-at" not in board.stdout
