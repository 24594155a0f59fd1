"""Mid-run resume: a training interrupted after an epoch continues from its saved state to the
weights an uninterrupted run reaches, bit for bit on CPU; schedules are torch.optim.lr_scheduler."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.datasets import Dataset
from defenses import build_trainer
from defenses.resume import EpochStates

FAST = {"epochs": 4, "batch_size": 64}
CASES = {
    "standard": {"optimizer": "sgd", "lr": 0.05, "lr_schedule": "cosine", "nesterov": True,
                 "augment": {"pad_crop": 1, "hflip": True}},
    "pgn": {"lr_schedule": "onecycle"},
    "efgsm-rec": {"lr_schedule": "multistep", "lr_milestones": [0.5]},
    "free-at": {"replays": 2},
    "fast-at": {"eps": 0.1, "alpha": 0.125, "lr_schedule": "cyclic"},
    "l2l-grad": {},
}


class Interrupt(Exception):
    pass


def _model():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))


def _weights(result):
    modules = {"classifier": result.model, **result.aux}
    return {f"{name}.{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}


def _fit(defense, hparams, digits, **kwargs):
    """A fit on 256 digits from the same global RNG state (dropout draws from it; a resumed run
    restores it)."""
    digits = Dataset("digits-256", digits.x_train[:256], digits.y_train[:256], digits.x_test[:100],
                     digits.y_test[:100], 10)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        return build_trainer(defense, hparams).fit(_model(), digits, seed=3, progress=False, **kwargs)


@pytest.mark.parametrize("defense", sorted(CASES))
def test_an_interrupted_training_resumes_to_the_uninterrupted_weights(digits, tmp_path, defense):
    hparams = {**FAST, **CASES[defense]}
    reference = _fit(defense, hparams, digits)

    def stop_after_two(epoch, model, record):
        if epoch == 2:
            raise Interrupt

    states = EpochStates(tmp_path / "states")
    with pytest.raises(Interrupt):
        _fit(defense, hparams, digits, callbacks=[stop_after_two], states=states)
    assert states.epochs() == [1]  # epoch 2's state is written after its callbacks
    seen = []
    resumed = _fit(defense, hparams, digits, states=states, callbacks=[lambda e, m, r: seen.append(e)])
    assert seen == [2, 3, 4] and states.epochs() == [4]
    assert [r.epoch for r in resumed.epochs] == [r.epoch for r in reference.epochs]
    expected, got = _weights(reference), _weights(resumed)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected), defense
    assert [r.loss for r in resumed.epochs] == [r.loss for r in reference.epochs]


def test_keep_last_k_states(tmp_path):
    states = EpochStates(tmp_path, keep=2)
    for epoch in range(1, 5):
        states.save(epoch, {"epoch": epoch, "x": torch.zeros(3)})
    assert states.epochs() == [3, 4] and states.latest()["epoch"] == 4
    (tmp_path / "epoch-0004.pt").write_bytes(b"torn")
    assert states.latest()["epoch"] == 3
    states.clear()
    assert not tmp_path.exists()


@pytest.mark.parametrize("schedule,expected", [
    ("constant", [0.1] * 8),
    ("multistep", [0.1] * 4 + [0.01] * 2 + [0.001] * 2),
    ("cyclic", [0.0, 0.0312, 0.0625, 0.0938, 0.0833, 0.0625, 0.0417, 0.0208]),  # peak 0.1 at 1.6 epochs
    ("cosine", [0.1, 0.0962, 0.0854, 0.0691, 0.05, 0.0309, 0.0146, 0.0038]),
])
def test_schedules_step_per_minibatch(schedule, expected):
    trainer = build_trainer("standard", {"epochs": 4, "lr": 0.1, "optimizer": "sgd", "lr_schedule": schedule})
    optimizer = trainer.make_optimizer(nn.Linear(2, 2))
    scheduler = trainer.common.make_scheduler(optimizer, steps_per_epoch=2)
    rates = []
    for _ in range(8):
        rates.append(round(optimizer.param_groups[0]["lr"], 4))
        optimizer.step()
        scheduler.step()
    assert rates == expected
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)


def test_onecycle_rises_to_lr_then_falls():
    trainer = build_trainer("standard", {"epochs": 5, "lr": 0.2, "optimizer": "sgd", "lr_schedule": "onecycle"})
    optimizer = trainer.make_optimizer(nn.Linear(2, 2))
    scheduler = trainer.common.make_scheduler(optimizer, steps_per_epoch=10)
    rates = []
    for _ in range(50):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    peak = rates.index(max(rates))
    assert 0.19 < max(rates) <= 0.2 and 18 <= peak <= 21 and rates[-1] < 0.01 and rates[0] < 0.01


ROOT = Path(__file__).resolve().parents[1]
SUITE = """
name: resume-kill
protocol: quick
model: {arch: mlp, params: {hidden: [256, 256]}}
training: {epochs: 4, batch_size: 32, optimizer: sgd, lr: 0.05, lr_schedule: cosine}
defenses:
  - defense: standard
"""


def _train(suite, workdir):
    return subprocess.Popen([sys.executable, "-m", "bench.cli", "train", str(suite), "--workdir", str(workdir),
                             "--no-progress", "-q", "--threads", "1"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _final(workdir):
    from safetensors.torch import load_file

    (final,) = workdir.glob("checkpoints/*/final/weights.safetensors")
    return load_file(final)


@pytest.mark.slow
def test_a_sigkilled_training_resumes_to_bit_identical_weights_with_one_run_row(tmp_path):
    from results.store import Store, default_url
    from results.schema import TrainingRun
    from sqlalchemy import select

    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    assert _train(suite, tmp_path / "whole").wait(timeout=600) == 0
    killed = _train(suite, tmp_path / "killed")
    deadline = time.monotonic() + 600
    while not list((tmp_path / "killed").glob("checkpoints/*/states/epoch-0002.pt")):
        assert killed.poll() is None and time.monotonic() < deadline, killed.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not list((tmp_path / "killed").glob("checkpoints/*/final"))
    rerun = _train(suite, tmp_path / "killed")
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read().decode()[-2000:]
    whole, resumed = _final(tmp_path / "whole"), _final(tmp_path / "killed")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    store = Store(default_url(tmp_path / "killed"))
    with store.session() as session:
        runs = session.scalars(select(TrainingRun)).all()
        assert len(runs) == 1 and runs[0].status == "finished"
        assert [e.epoch for e in runs[0].epochs] == [1, 2, 3, 4]
    assert not list((tmp_path / "killed").glob("checkpoints/*/states/*.pt"))  # removed once finished
