"""Each trainer trains a tiny model for a few steps; its defining mechanics are asserted."""

import pytest
import torch

from bench.errors import ConfigError, TrainingDivergedError
from bench.models import build_model
from defenses import DEFENSES, build_trainer
from defenses.base import BatchContext
from attacks.base import PassCounter

FAST = {"epochs": 2, "batch_size": 128}
PARAMS = {"standard": {}, "fgsm-at": {"eps": 0.1}, "pgd-at": {"eps": 0.1, "steps": 3, "step_size": 0.04},
          "ro": {"norm": "linf", "radius": 0.05}, "trades": {"eps": 0.1, "steps": 3, "step_size": 0.04},
          "free-at": {"eps": 0.1, "replays": 2}, "fast-at": {"eps": 0.1}, "parseval": {"beta": 1e-3},
          "deep-defense": {"max_iter": 2}, "efgsm-rec": {"eps": 0.1, "candidates": "top"},
          "pgn": {"c_L": 10.0, "generator_width": 16, "generator_hidden": 64, "ema_decay": 0.9},
          **{name: {"eps": 0.1, "attacker_width": 0.25} for name in ("l2l-naive", "l2l-grad", "l2l-2step")}}


def tiny(digits, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model("mlp", digits.input_shape, 10, digits.channel_mean, digits.channel_std, hidden=(32,))


def test_registry_is_covered():
    # built-ins only (plugin tests register more in the same process)
    assert set(PARAMS) == {n for n in DEFENSES if DEFENSES.get(n).factory.__module__.startswith("defenses.")}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_trainer_learns_and_records(digits, name):
    trainer = build_trainer(name, {**FAST, **PARAMS[name]})
    result = trainer.fit(tiny(digits), digits, seed=0, progress=False)
    assert [r.epoch for r in result.epochs] == [1, 2]
    last = result.epochs[-1]
    # chance is 0.1; the trainers that see adversarial points only learn slower in two epochs
    assert last.test_accuracy > (0.3 if name in ("efgsm-rec", "fast-at", "pgn") else 0.5) and last.seconds > 0
    assert last.forward_passes >= digits.x_train.shape[0]
    again = build_trainer(name, {**FAST, **PARAMS[name]}).fit(tiny(digits), digits, seed=0, progress=False)
    assert again.epochs[-1].loss == last.loss  # seeded, deterministic on CPU


def test_pass_counts_per_epoch(digits):
    n = digits.x_train.shape[0]
    standard = build_trainer("standard", FAST).fit(tiny(digits), digits, 0, progress=False).epochs[0]
    pgd = build_trainer("pgd-at", {**FAST, **PARAMS["pgd-at"]}).fit(tiny(digits), digits, 0, progress=False).epochs[0]
    assert (standard.forward_passes, standard.backward_passes) == (n, n)
    assert (pgd.forward_passes, pgd.backward_passes) == (4 * n, 4 * n)


def test_fgsm_at_mixes_clean_and_adversarial_loss(digits):
    model = tiny(digits)
    x, y = digits.x_train[:32], digits.y_train[:32]
    ctx = BatchContext(1, torch.Generator().manual_seed(0), PassCounter())
    clean_only = build_trainer("fgsm-at", {"eps": 0.1, "alpha": 1.0}).batch_loss(model, x, y, ctx).loss
    assert torch.isclose(clean_only, torch.nn.functional.cross_entropy(model(x), y))
    mixed = build_trainer("fgsm-at", {"eps": 0.1, "alpha": 0.0}).batch_loss(model, x, y, ctx).loss
    assert mixed > clean_only  # the FGSM point has a higher loss


def test_pgd_at_trains_on_points_inside_the_ball(digits, monkeypatch):
    import defenses.adversarial as adversarial

    seen = []
    original = adversarial.gradient_ascent

    def spy(model, x, y, **kw):
        x_adv = original(model, x, y, **kw)
        seen.append(float((x_adv - x).abs().max()))
        return x_adv

    monkeypatch.setattr(adversarial, "gradient_ascent", spy)
    trainer = build_trainer("pgd-at", {"epochs": 2, "batch_size": 512, "eps": 0.1, "steps": 3,
                                       "step_size": 0.05, "eps_warmup_epochs": 2})
    trainer.fit(tiny(digits), digits, 0, progress=False)
    assert max(seen) <= 0.1 + 1e-6 and min(seen) <= 0.05 + 1e-6  # warm-up: eps/2 in epoch 1


def test_divergence_stops_with_a_clear_error(digits):
    with pytest.raises(TrainingDivergedError, match="lower the learning rate"):
        build_trainer("standard", {"epochs": 1, "lr": 1e30, "optimizer": "sgd"}).fit(
            tiny(digits), digits, 0, progress=False)


@pytest.mark.parametrize("name,params,message", [("pgd-at", {"epz": 1}, "unknown hyper-parameter"),
                                                 ("fgsm-at", {"alpha": 2}, "alpha"),
                                                 ("standard", {"optimizer": "lbfgs"}, "optimizer")])
def test_bad_hyper_parameters(name, params, message):
    with pytest.raises(ConfigError, match=message):
        build_trainer(name, params)
