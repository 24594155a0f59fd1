"""The defining mechanics of each trainer, asserted on tiny real models and the 8x8 digits."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attacks.base import PassCounter
from bench.enums import Norm
from bench.models import build_model
from defenses import BatchContext, CommonHParams, build_trainer
from defenses.deep_defense import deep_defense_regularizer, unrolled_deepfool
from defenses.parseval import parseval_retraction
from defenses.robust_optimization import steepest_ascent_step


def tiny(digits, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model("mlp", digits.input_shape, 10, digits.channel_mean, digits.channel_std, hidden=(32,))


def context(epoch=1, index=None):
    return BatchContext(epoch, torch.Generator().manual_seed(0), PassCounter(), index)


# -- robust optimization (seed 004) -----------------------------------------------------------------

@pytest.mark.parametrize("norm", list(Norm))
def test_ro_step_is_the_steepest_ascent_in_its_ball(norm):
    grad = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    step = steepest_ascent_step(grad, norm, 0.5).flatten(1)
    changed = (step != 0).sum(dim=1)
    if norm is Norm.L1:
        assert changed.tolist() == [1] * 16  # exactly one pixel per image
        j = grad.flatten(1).abs().argmax(1)
        assert torch.equal(step.abs().sum(1), torch.full((16,), 0.5))
        assert torch.equal(step.gather(1, j[:, None]).sign(), grad.flatten(1).gather(1, j[:, None]).sign())
    elif norm is Norm.L2:
        assert torch.allclose(step.norm(dim=1), torch.full((16,), 0.5))
    else:
        assert torch.equal(step.abs(), torch.full_like(step, 0.5))
    assert bool(((step * grad.flatten(1)).sum(1) > 0).all())


def test_ro_trains_on_unclipped_perturbed_data_only(digits):
    model = tiny(digits)
    x, y = digits.x_train[:32], digits.y_train[:32]
    trainer = build_trainer("ro", {"norm": "l1", "radius": 2.0})
    out = trainer.batch_loss(model, x, y, context())
    x_in = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_in), y), x_in)
    x_tilde = x + steepest_ascent_step(grad, Norm.L1, 2.0)
    assert float(x_tilde.max()) > 1  # a pixel pushed past the box stays there (no clipping)
    assert torch.isclose(out.loss, F.cross_entropy(model(x_tilde), y))


# -- Deep Defense (seed 002) ------------------------------------------------------------------------

def _linear_model():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(4, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
        model[1].bias.copy_(torch.randn(4, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    return model


def _regularizer(model, x, y):
    return deep_defense_regularizer(unrolled_deepfool(model, x, y, 5, 0.02, 0.0), x, c=3.0, d=1.0)


def test_deep_defense_regularizer_gradient_matches_finite_differences_on_a_linear_model():
    model = _linear_model()
    x = torch.rand(12, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = pred.clone()
    y[:3] = (pred[:3] + 1) % 4  # three misclassified examples (the set F)
    weight = model[1].weight
    (grad,) = torch.autograd.grad(_regularizer(model, x, y), weight)
    assert float(grad.abs().max()) > 1e-3
    numeric = torch.zeros_like(weight)
    h = 1e-6
    for i in range(4):
        for j in range(16):
            weight.data[i, j] += h
            up = float(_regularizer(model, x, y).detach())
            weight.data[i, j] -= 2 * h
            down = float(_regularizer(model, x, y).detach())
            weight.data[i, j] += h
            numeric[i, j] = (up - down) / (2 * h)
    assert torch.allclose(grad, numeric, rtol=1e-4, atol=1e-7)


def test_deep_defense_perturbation_is_the_exact_deepfool_step_on_a_linear_model():
    model = _linear_model()
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    unroll = unrolled_deepfool(model, x, y, 5, 0.02, 0.0)
    w = model[1].weight
    normals = w[None] - w[y][:, None]
    gaps = (logits - logits.gather(1, y[:, None])).abs()
    exact = (gaps / normals.norm(dim=2)).scatter(1, y[:, None], float("inf")).min(1).values
    assert unroll.iterations == 1 and bool(unroll.correct.all())
    assert torch.allclose(unroll.delta.flatten(1).norm(dim=1), 1.02 * exact.detach())


def test_deep_defense_batch_loss_adds_the_weighted_regularizer(digits):
    model = tiny(digits)
    x, y = digits.x_train[:20], digits.y_train[:20]
    plain = build_trainer("deep-defense", {"lam": 0.0}).batch_loss(model, x, y, context()).loss
    assert torch.isclose(plain, F.cross_entropy(model(x), y))
    regularized = build_trainer("deep-defense", {"lam": 15.0}).batch_loss(model, x, y, context()).loss
    assert float(regularized.detach()) > float(plain.detach())
    regularized.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())


def test_deep_defense_must_fine_tune_in_a_suite():
    from bench.errors import ConfigError
    from bench.suite import Suite

    with pytest.raises(Exception, match="init_from"):
        Suite.model_validate({"name": "s", "defenses": [{"defense": "deep-defense"}]})
    suite = Suite.model_validate({"name": "s", "defenses": [{"defense": "standard"},
                                                             {"defense": "deep-defense", "init_from": "standard"}]})
    assert suite.defenses[1].init_from == "standard"
    with pytest.raises((ConfigError, ValueError), match="neither a defense label"):
        Suite.model_validate({"name": "s", "defenses": [{"defense": "deep-defense", "init_from": "nope"}]})


# -- eFGSM + re-constructor (seed 001) ----------------------------------------------------------------

def test_efgsm_memory_accumulates_across_epochs(digits):
    trainer = build_trainer("efgsm-rec", {"epochs": 2, "batch_size": 256, "eps": 0.1, "candidates": "all"})
    result = trainer.fit(tiny(digits), digits, 0, progress=False)
    magnitude = trainer.gamma.abs()
    # after two epochs |Gamma| = |0.95 s1 + s2| with s in {-1, 0, 1}: 1.95 where the signs agreed
    assert bool(torch.isclose(magnitude, torch.tensor(1.95)).any()) and float(magnitude.max()) <= 1.95 + 1e-6
    assert "reconstructor" in result.aux
    assert all("estimated_robust_accuracy" in r.extra for r in result.epochs)


def test_efgsm_examples_stay_in_the_ball_and_the_box(digits):
    model = tiny(digits)
    trainer = build_trainer("efgsm-rec", {"eps": 0.1, "project": True, "candidates": "all"})
    trainer.setup(model, digits, torch.device("cpu"), torch.Generator().manual_seed(0))
    x, y = digits.x_train[:64], digits.y_train[:64]
    ctx = context(index=torch.arange(64))
    x_adv = trainer.efgsm(model, x, y, ctx)
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6 and 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1
    assert torch.equal(trainer.gamma[:64], (x_adv - x).sign())
    assert ctx.counter.backward == 10 * 64  # label + nine other classes' gradients
    assert trainer.seen == 64 and 0 <= trainer.high_risk <= 64


def test_efgsm_reconstruction_loss_reaches_the_reconstructor(digits):
    model = tiny(digits)
    trainer = build_trainer("efgsm-rec", {"eps": 0.1})
    trainer.setup(model, digits, torch.device("cpu"), torch.Generator().manual_seed(0))
    out = trainer.batch_loss(model, digits.x_train[:32], digits.y_train[:32], context(index=torch.arange(32)))
    out.loss.backward()
    assert all(p.grad is not None for p in trainer.aux["reconstructor"].parameters())
    assert all(p.grad is not None for p in model.parameters())


def _efgsm_from_a_gamma_corner(digits, **hparams):
    """eFGSM (sigma eps/2 unless ``hparams`` say otherwise) on 256 grey images (no box clipping at
    eps 0.1) under a random linear classifier,
    with Gamma set to a random sign pattern (a later epoch's start at the corner sign(Gamma) eps):
    (x, x_adv, the labels, Gamma's signs, the classifier)."""
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.copy_(0.1 * torch.randn(10, 64, generator=g))
        model[1].bias.zero_()
    trainer = build_trainer("efgsm-rec", {"eps": 0.1, "sigma": 0.05, "candidates": "all", **hparams})
    trainer.setup(model, digits, torch.device("cpu"), g)
    x = torch.full((256, 1, 8, 8), 0.5)
    y = model(x).argmax(1)
    signs = 2 * torch.randint(0, 2, x.shape, generator=g).float() - 1
    trainer.gamma[:256] = signs
    x_adv = trainer.efgsm(model, x, y, BatchContext(2, torch.Generator().manual_seed(1), PassCounter(), torch.arange(256)))
    return x, x_adv, y, signs, model


def test_efgsm_projection_cuts_the_correction_short_of_the_boundary(digits):
    """Issue 23, cause 1: from the corner start (most pixels already at +-eps), projecting the
    corrected point into the eps-ball removes the correction on every pixel where it points the
    way the start already went. Under a linear classifier, where eq. 12's step lands exactly on the
    boundary, no projected example is misclassified; the paper's box-only clip (project: false)
    reaches the boundary and beyond it on more than a third."""
    x, projected, y, _, model = _efgsm_from_a_gamma_corner(digits, project=True)
    assert float((projected - x).abs().max()) <= 0.1 + 1e-6
    assert float((model(projected).argmax(1) != y).float().mean()) == 0.0
    x, clipped, y, _, model = _efgsm_from_a_gamma_corner(digits, project=False)
    assert float((clipped - x).abs().max()) > 0.1
    assert float((model(clipped).argmax(1) != y).float().mean()) > 1 / 3


@pytest.mark.parametrize("project", [True, False])
@pytest.mark.parametrize("sigma,share", [(0.05, 0.85), (0.1, 0.75)])
def test_efgsm_memory_reproduces_its_own_signs(digits, project, sigma, share):
    """Issue 23, cause 2: eq. 13 stores sign(x_adv - x), and x_adv starts at sign(Gamma) eps with a
    correction smaller than eps, so the stored sign is Gamma's own on about 90% of the pixels at
    sigma eps/2 (about 80% at sigma eps, the default), whatever the classifier: the memory keeps
    the direction it first took (in epoch 1 with gamma_init zero: the sign of the Gaussian noise)
    instead of following the gradient."""
    x, x_adv, _, signs, _ = _efgsm_from_a_gamma_corner(digits, project=project, sigma=sigma)
    assert float(((x_adv - x).sign() == signs).float().mean()) > share


# -- early stop (Fast-AT, eFGSM) ----------------------------------------------------------------------

def test_fast_at_early_stop_restores_the_last_good_epoch(digits, monkeypatch):
    import defenses.fast_at as fast_at

    probes = iter([0.9, 0.85, 0.3, 0.9])
    monkeypatch.setattr(fast_at, "pgd_check", lambda *args, **kwargs: next(probes))
    saved = {}
    trainer = build_trainer("fast-at", {"epochs": 4, "batch_size": 256, "eps": 0.1})

    def remember(epoch, model, record):
        saved[epoch] = {k: v.clone() for k, v in model.state_dict().items()}

    result = trainer.fit(tiny(digits), digits, 0, [remember], progress=False)
    assert [r.epoch for r in result.epochs] == [1, 2, 3] and result.kept_epoch == 2
    assert result.epochs[-1].extra["collapsed"] and result.final_record.epoch == 2
    assert all(torch.equal(v, saved[2][k]) for k, v in result.model.state_dict().items())


def test_fast_at_best_reference_catches_a_gradual_collapse(digits, monkeypatch):
    """Drops of 0.15 per epoch never trip the reference rule; measured from the best probe (epoch
    2) the third drop does, and epoch 2's weights come back."""
    import defenses.fast_at as fast_at

    sequence = [0.6, 0.7, 0.55, 0.4, 0.3]
    for reference, stopped_at, kept in (("previous", 5, None), ("best", 4, 2)):
        probes = iter(sequence)
        monkeypatch.setattr(fast_at, "pgd_check", lambda *args, **kwargs: next(probes))
        saved = {}

        def remember(epoch, model, record):
            saved[epoch] = {k: v.clone() for k, v in model.state_dict().items()}

        trainer = build_trainer("fast-at", {"epochs": 5, "batch_size": 256, "eps": 0.1,
                                            "collapse_reference": reference})
        result = trainer.fit(tiny(digits), digits, 0, [remember], progress=False)
        assert result.epochs[-1].epoch == stopped_at and result.kept_epoch == kept
        if kept is not None:
            assert all(torch.equal(v, saved[kept][k]) for k, v in result.model.state_dict().items())


def test_the_collapse_probe_minibatch_spans_the_classes_of_a_sorted_split():
    """Issue 23, cause 3: mnist5k's training split is sorted by class, so the probe's former
    minibatch, the split's first 50 examples, held zeros only (whose robustness hid Fast-AT's
    collapse: probe 0.68 on them, 0.16-0.18 on the ones at 400-500). The default draws a fixed
    minibatch by a seed-0 permutation (the reference code's shuffled first minibatch)."""
    from defenses.fast_at import probe_indices

    labels = torch.arange(10).repeat_interleave(400)   # class-sorted, as mnist5k's training split
    assert labels[probe_indices(4000, 50, "first")].unique().tolist() == [0]
    chosen = probe_indices(4000, 50, "random")
    assert torch.equal(chosen, probe_indices(4000, 50, "random"))  # the same minibatch every epoch
    assert len(labels[chosen].unique()) >= 8
    assert build_trainer("fast-at", {}).params.probe_sample == "random"
    assert build_trainer("efgsm-rec", {}).params.probe_sample == "random"


def test_fast_at_steps_from_a_random_start_with_alpha(digits):
    trainer = build_trainer("fast-at", {"eps": 0.1})
    assert trainer.alpha == pytest.approx(0.125)
    model = tiny(digits)
    x, y = digits.x_train[:64], digits.y_train[:64]
    out = trainer.batch_loss(model, x, y, context())
    assert out.adv_logits is not None and out.clean_logits is None


# -- Free-AT, TRADES, Parseval --------------------------------------------------------------------

def test_free_at_replays_each_batch_and_warm_starts_delta(digits):
    n = digits.x_train.shape[0]
    trainer = build_trainer("free-at", {"epochs": 1, "batch_size": 128, "eps": 0.1, "replays": 3})
    steps = []
    model = tiny(digits)
    original = trainer.after_step
    trainer.after_step = lambda m, ctx: (steps.append(1), original(m, ctx))
    record = trainer.fit(model, digits, 0, progress=False).epochs[0]
    assert len(steps) == 3 * -(-n // 128)  # m optimizer steps per minibatch
    assert (record.forward_passes, record.backward_passes) == (3 * n, 3 * n)
    assert 0 < float(trainer.delta.abs().max()) <= 0.1 + 1e-6  # persists between minibatches


def test_trades_with_beta_zero_is_clean_training(digits):
    model = tiny(digits).train()
    x, y = digits.x_train[:32], digits.y_train[:32]
    out = build_trainer("trades", {"beta": 0.0, "eps": 0.1, "steps": 2, "step_size": 0.05}).batch_loss(
        model, x, y, context())
    assert model.training
    assert torch.isclose(out.loss, F.cross_entropy(model(x), y))
    robust = build_trainer("trades", {"beta": 6.0, "eps": 0.1, "steps": 2, "step_size": 0.05}).batch_loss(
        model, x, y, context()).loss
    assert float(robust.detach()) > float(out.loss.detach())


def test_parseval_retraction_moves_toward_a_tight_frame():
    weight = torch.randn(20, 30, generator=torch.Generator().manual_seed(0)) * 0.3
    before = float((weight @ weight.T - torch.eye(20)).norm())
    for _ in range(200):
        parseval_retraction(weight, 0.05, torch.arange(20))
    assert float((weight @ weight.T - torch.eye(20)).norm()) < 0.1 * before
    orthonormal = torch.linalg.qr(torch.randn(30, 20, generator=torch.Generator().manual_seed(1)))[0].T
    fixed = orthonormal.clone()
    parseval_retraction(fixed, 0.05, torch.arange(0, 20, 2))
    assert torch.allclose(fixed, orthonormal, atol=1e-5)


def test_parseval_retracts_a_sampled_fraction_of_rows(digits):
    model = tiny(digits)
    trainer = build_trainer("parseval", {"beta": 0.1, "sample_fraction": 0.3})
    before = model[2].weight.detach().clone()
    trainer.after_step(model, context())
    changed = (model[2].weight.detach() != before).any(dim=1)
    assert int(changed.sum()) == round(0.3 * 32)


# -- the shared loop ----------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule,progress,expected", [
    ("constant", 3.0, 0.1), ("cyclic", 0.0, 0.0), ("cyclic", 4.0, 0.1), ("cyclic", 7.0, 0.05),
    ("cyclic", 10.0, 0.0), ("multistep", 7.9, 0.1), ("multistep", 8.0, 0.05)])
def test_learning_rate_schedules(schedule, progress, expected):
    common = CommonHParams(epochs=10, lr=0.1, lr_schedule=schedule, lr_milestones=[0.8], lr_gamma=0.5)
    assert common.lr_at(progress) == pytest.approx(expected)
