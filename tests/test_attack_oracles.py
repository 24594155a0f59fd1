"""Correctness oracles for the attack suite: closed forms, reference implementations, monotonicity.

- An affine classifier's minimum distance to the decision boundary has a closed form:
  min_k |f_k - f_y| / ||w_k - w_y||_q (q the dual norm), exact when the box [0, 1] is not active.
- PGD must agree with torchattacks' PGD; our APGD-CE adapter must equal pyautoattack called directly.
- Robust accuracy must not increase with eps or with the number of steps (same seed)."""

import pytest
import torch
from torch import nn

from attacks import ATTACKS
from attacks.base import PassCounter
from attacks.counting import CountingModel
from attacks.gradient import gradient_ascent
from attacks.norms import hooks_for
from bench import perf
from bench.evaluate import run_attack

OVERSHOOT = 0.02
MARGIN = 1e-4  # DeepFool's "+ 1e-4" on the linearized distance (reference code)


@pytest.fixture(scope="module")
def affine():
    """A random affine 10-class classifier on 16x16 inputs in the interior of the box, labels = its
    predictions, and the exact minimal L2 / Linf distances to its decision boundary."""
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 10)).eval()
    with torch.no_grad():
        model[1].weight.copy_(0.1 * torch.randn(10, 256, generator=generator))
        model[1].bias.zero_()
    x = 0.3 + 0.4 * torch.rand(200, 1, 16, 16, generator=generator)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    normals = model[1].weight[None] - model[1].weight[y][:, None]          # (N, 10, 256): w_k - w_y
    gaps = (logits - logits.gather(1, y[:, None])).abs()                    # |f_k - f_y|
    exact = {}
    for norm, dual in (("l2", normals.norm(dim=2)), ("linf", normals.abs().sum(dim=2))):
        ratio = (gaps / dual).scatter(1, y[:, None], float("inf"))
        nearest = ratio.argmin(1)
        rows = torch.arange(len(y))
        exact[norm] = (ratio[rows, nearest].detach(), dual[rows, nearest].detach())
    return model, x, y, exact


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_hits_the_affine_closed_form(affine, norm):
    model, x, y, exact = affine
    distance, dual = exact[norm]
    result = ATTACKS.create("deepfool", norm=norm, overshoot=OVERSHOOT)(model, x, y)
    assert bool(result.success.all())
    size = result.l2 if norm == "l2" else result.linf
    expected = (1 + OVERSHOOT) * (distance + MARGIN / dual)
    assert float(((size - expected) / expected).abs().max()) <= 1e-3
    assert 0 < float(result.x_adv.min()) and float(result.x_adv.max()) < 1  # the box stayed inactive


def test_cw_is_within_two_percent_of_the_affine_closed_form(affine):
    model, x, y, exact = affine
    distance, _ = exact["l2"]
    # Adam moves each pixel by about the learning rate per step: points much closer to the
    # boundary than that are resolved only to that absolute precision, not 2% of their distance.
    keep = distance >= 0.05
    x, y, distance = x[keep], y[keep], distance[keep]
    assert len(y) >= 100
    result = ATTACKS.create("cw", steps=300, search_steps=10, learning_rate=0.005,
                            initial_const=1.0)(model, x, y)
    assert bool(result.success.all())
    assert float(((result.l2 - distance) / distance).abs().max()) <= 0.02
    assert bool((result.l2 >= distance * (1 - 1e-4)).all())  # nothing beats the closed form


@pytest.fixture(scope="module")
def random_relu_net(digits):
    """A random (untrained) 2-layer ReLU net on the real 8x8 digits, labels = its predictions,
    so every point is correctly classified; about half the pixels sit exactly at 0."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    with torch.no_grad():
        y = net(digits.x_test).argmax(1)
    return net, digits.x_test, y


def test_deepfool_and_cw_fool_a_random_relu_net_everywhere(random_relu_net):
    net, x, y = random_relu_net
    deepfool = ATTACKS.create("deepfool")(net, x, y)
    cw = ATTACKS.create("cw", steps=300, search_steps=10, learning_rate=0.01, initial_const=0.1)(net, x, y)
    assert bool(deepfool.success.all()) and bool(cw.success.all())
    assert float(cw.l2.median()) <= float(deepfool.l2.median())


@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_pgd40_matches_torchattacks(trained_mlp, digits, eps):
    x, y = digits.x_test, digits.y_test
    ours = run_attack(ATTACKS.create("pgd", eps=eps, steps=40, step_size=eps / 10), trained_mlp, x, y, 300)
    theirs = run_attack(ATTACKS.create("ta-pgd", eps=eps, alpha=eps / 10, steps=40), trained_mlp, x, y, 300)
    ours_acc, theirs_acc = (100 * float((r["pred"] == y).float().mean()) for r in (ours, theirs))
    assert ours_acc < 100 * float((trained_mlp(x).argmax(1) == y).float().mean())
    assert abs(ours_acc - theirs_acc) <= 1.0


def test_apgd_ce_adapter_equals_pyautoattack_called_directly(trained_mlp, digits):
    x, y = digits.x_test[:150], digits.y_test[:150]
    ours = run_attack(ATTACKS.create("apgd-ce", eps=0.1, batch_size=50, seed=3), trained_mlp, x, y, 50)
    direct = perf._direct_autoattack(trained_mlp, x, y, 50, 3, ["apgd-ce"], "Linf", 0.1)
    assert float(ours["success"].float().mean()) > 0.1
    assert torch.equal(ours["pred"], direct["pred"])
    assert torch.equal(ours["l2"], direct["l2"]) and torch.equal(ours["linf"], direct["linf"])


def _robust_accuracy(name, params, model, x, y):
    return float((~ATTACKS.create(name, **params)(model, x, y).success).float().mean())


@pytest.mark.parametrize("name,params", [
    ("fgsm", {}), ("pgd", {"steps": 10, "step_size": 0.02}), ("mim", {"steps": 10}),
    ("pgd", {"norm": "l2", "steps": 10, "step_size": 0.2, "scale": 10}),
    ("apgd-ce", {"batch_size": 150}), ("noise", {"draws": 5, "scale": 3})])
def test_robust_accuracy_does_not_increase_with_eps(trained_mlp, digits, name, params):
    x, y = digits.x_test[:150], digits.y_test[:150]
    params = dict(params)
    scale = params.pop("scale", 1)
    accuracy = [_robust_accuracy(name, {**params, "eps": scale * eps}, trained_mlp, x, y)
                for eps in (0.02, 0.05, 0.1, 0.2)]
    assert accuracy == sorted(accuracy, reverse=True) and accuracy[0] > accuracy[-1]


@pytest.mark.parametrize("name,params", [
    ("pgd", {"eps": 0.1, "step_size": 0.01}), ("pgd", {"eps": 0.1, "step_size": 0.01, "restarts": 2}),
    ("pgd", {"norm": "l2", "eps": 1.0, "step_size": 0.1}), ("mim", {"eps": 0.1, "step_size": 0.01})])
def test_robust_accuracy_does_not_increase_with_steps(trained_mlp, digits, name, params):
    x, y = digits.x_test, digits.y_test
    accuracy = [_robust_accuracy(name, {**params, "steps": steps}, trained_mlp, x, y) for steps in (2, 5, 10, 40)]
    assert accuracy == sorted(accuracy, reverse=True) and accuracy[0] > accuracy[-1]


@pytest.mark.parametrize("norm,eps,step_size", [("linf", 0.1, 0.01), ("l2", 1.0, 0.1)])
def test_compaction_never_changes_the_result(trained_mlp, digits, norm, eps, step_size):
    x, y = digits.x_test, digits.y_test
    runs = [gradient_ascent(trained_mlp, x, y, hooks=hooks_for(norm), eps=eps, steps=30, step_size=step_size,
                            random_start=True, generator=torch.Generator().manual_seed(0),
                            stop_at_success=True, compact=compact) for compact in (True, False)]
    assert torch.equal(runs[0], runs[1])


def test_counting_model_counts_forwards_and_backwards(trained_mlp, digits):
    counter = PassCounter()
    wrapped = CountingModel(trained_mlp, counter)
    x = digits.x_test[:20].clone().requires_grad_(True)
    wrapped(x).sum().backward()
    with torch.no_grad():
        wrapped(digits.x_test[:7])
    assert (counter.forward, counter.backward) == (27, 20)


def test_perf_case_reports_rows_and_checks(trained_mlp, digits):
    x, y = digits.x_test[:100], digits.y_test[:100]
    floor = perf.Floor()
    floor.probe(trained_mlp, x, y, 50)
    case = next(c for c in perf.CASES if c.name == "FGSM")
    rows = perf.run_case(perf.PerfCase(case.name, case.ours, case.theirs, repeats=1), trained_mlp, x, y, x,
                         50, 100, floor, lambda line: None)
    assert [r["library"] for r in rows] == ["advarena", "torchattacks"]
    ours, theirs = rows
    assert ours["forward_passes"] == 200 and ours["backward_passes"] == 100
    assert ours["robust_acc"] == pytest.approx(theirs["robust_acc"])  # FGSM is deterministic
    assert ours["efficiency"] > 0 and theirs["ours_over_theirs_img_per_s"] > 0
    assert [c["check"] for c in perf.checks(rows)] == ["FGSM: efficiency <= 1.05 and img/s >= torchattacks'"]
