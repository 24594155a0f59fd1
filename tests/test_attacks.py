"""Table-driven over the attack registry: the contract of docs/design.md holds for every attack."""

import copy

import pytest
import torch

from attacks import ATTACKS, AttackCheckError
from attacks.base import Attack, PassCounter
from bench.errors import ConfigError

BOUNDED = [("fgsm", {"norm": "linf", "eps": 0.1}), ("fgsm", {"norm": "l2", "eps": 1.0}),
           ("pgd", {"norm": "linf", "eps": 0.1, "steps": 5, "step_size": 0.03}),
           ("pgd", {"norm": "l2", "eps": 1.0, "steps": 5, "step_size": 0.3, "restarts": 2}),
           ("pgd", {"norm": "linf", "eps": 0.1, "steps": 5, "step_size": 0.03, "loss": "cw"}),
           ("mim", {"norm": "linf", "eps": 0.1, "steps": 5}), ("mim", {"norm": "l2", "eps": 1.0, "steps": 5}),
           ("pgd", {"norm": "linf", "eps": 0.1, "steps": 5, "step_size": 0.03, "targeted": "least-likely"}),
           ("noise", {"norm": "linf", "eps": 0.3, "draws": 5}),
           ("apgd-ce", {"eps": 0.1}), ("apgd-t", {"eps": 0.1}), ("fab-t", {"eps": 0.1}),
           ("square", {"eps": 0.3}), ("autoattack", {"norm": "l2", "eps": 1.0}),
           ("ta-fgsm", {"eps": 0.1}), ("ta-pgd", {"eps": 0.1, "alpha": 0.03, "steps": 5}),
           ("ta-pgdl2", {"eps": 1.0, "alpha": 0.3, "steps": 5}), ("ta-mim", {"eps": 0.1, "alpha": 0.02, "steps": 5}),
           ("ta-apgd", {"eps": 0.1, "steps": 10}), ("ta-autoattack", {"eps": 0.1})]
MINIMUM_NORM = [("deepfool", {"norm": "l2"}), ("deepfool", {"norm": "linf", "candidates": 3}),
                ("deepfool", {"box_mask": True, "damping": 0.5, "damped_steps": 2}),
                ("cw", {"steps": 50, "search_steps": 4, "initial_const": 1.0}), ("ta-deepfool", {"steps": 10}),
                ("ta-cw", {"steps": 20, "c": 10.0, "lr": 0.05}),
                ("fgs-line", {"max_eps": 0.5, "grid_step": 0.05, "refine": 3}),
                ("fmn", {"norm": "l2", "steps": 30}), ("fmn", {"norm": "linf", "steps": 30}),
                ("fmn", {"norm": "l1", "steps": 30}), ("ddn", {"steps": 30}), ("alma", {"steps": 30})]


#: Attacks that run their full budget on every point get fewer points (seconds, not minutes).
FEWER_POINTS = {"fab-t": 12, "square": 12, "ta-autoattack": 12, "apgd-t": 24}


def make(name, params, source=None):
    if name == "transfer":
        return ATTACKS.create("transfer", base="pgd", base_params=params, source_model=source, source_id="s")
    return ATTACKS.create(name, **params)


def test_registry_is_covered():
    # attacks that run a trained network of a suite: test_learned_attackers.py and the transfer tests
    assert {name for name, _ in BOUNDED + MINIMUM_NORM} | {"transfer", "pgn-generator", "l2l-attacker"} == set(ATTACKS)


@pytest.fixture()
def batch(digits):
    return digits.x_test[:64], digits.y_test[:64]


@pytest.mark.parametrize("name,params", BOUNDED + [("transfer", BOUNDED[2][1])],
                         ids=lambda v: str(v) if isinstance(v, str) else "-".join(map(str, v.values())))
def test_attack_contract(trained_mlp, batch, name, params):
    x, y = (part[:FEWER_POINTS.get(name, 64)] for part in batch)
    model = trained_mlp.train()  # the attack must evaluate in eval mode and restore train mode
    model.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attack = make(name, params, source=trained_mlp)
    result = attack(model, x, y)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert 0 <= float(result.x_adv.min()) and float(result.x_adv.max()) <= 1
    size = result.linf if attack.norm.value == "linf" else result.l2
    assert float(size.max()) <= attack.eps * (1 + 1e-5)
    with torch.no_grad():
        pred = model.eval()(result.x_adv).argmax(1)
    assert torch.equal(pred, result.pred)
    if attack.targeted is None:
        assert torch.equal(result.success, pred != y)
        baseline = (model(x).argmax(1) != y).float().mean()
        assert result.success.float().mean() > baseline  # the attack does something
    assert result.forward_passes >= len(y)
    if name not in ("noise", "square"):  # score-based: no gradients
        assert result.backward_passes >= len(y)
    state = torch.random.get_rng_state()
    again = make(name, params, source=trained_mlp)(model, x, y)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left alone
    assert torch.equal(again.x_adv, result.x_adv)  # seeded by its own generator


@pytest.mark.parametrize("name,params", MINIMUM_NORM, ids=lambda v: str(v) if isinstance(v, str) else
                         "-".join(map(str, v.values())))
def test_minimum_norm_contract(trained_mlp, batch, name, params):
    x, y = batch
    model = trained_mlp.train()
    attack = make(name, params)
    result = attack(model, x, y)
    assert model.training and attack.eps is None
    assert 0 <= float(result.x_adv.min()) and float(result.x_adv.max()) <= 1
    with torch.no_grad():
        pred = model.eval()(result.x_adv).argmax(1)
    model.train()
    assert torch.equal(pred, result.pred) and torch.equal(result.success, pred != y)
    correct = model.eval()(x).argmax(1) == y
    model.train()
    strong = ("deepfool", "cw", "fmn", "ddn", "alma")
    assert float(result.success[correct].float().mean()) >= (0.99 if name in strong else 0.2)
    assert torch.equal(result.l2, (result.x_adv - x).flatten(1).norm(dim=1))


def test_pass_counts_are_exact(trained_mlp, batch):
    x, y = batch
    result = ATTACKS.create("pgd", eps=0.1, steps=7, step_size=0.02)(trained_mlp, x, y)
    assert (result.forward_passes, result.backward_passes) == (8 * len(y), 7 * len(y))


def test_pgd_is_stronger_than_fgsm_and_monotone_in_eps(trained_mlp, digits):
    x, y = digits.x_test, digits.y_test
    acc = {eps: float((~ATTACKS.create("pgd", eps=eps, steps=10, step_size=eps / 4)(trained_mlp, x, y).success)
                      .float().mean()) for eps in (0.02, 0.05, 0.1, 0.2)}
    assert list(acc.values()) == sorted(acc.values(), reverse=True)
    fgsm = float((~ATTACKS.create("fgsm", eps=0.1)(trained_mlp, x, y).success).float().mean())
    assert acc[0.1] <= fgsm


class Escaping(Attack):
    name = "escaping"

    def __init__(self):
        super().__init__(0)
        from bench.enums import Norm
        self.norm, self.eps = Norm.LINF, 0.1

    def perturb(self, model, x, y, generator, counter: PassCounter, target=None):
        return (x + 0.2).clamp(0, 1)


def test_base_class_catches_an_attack_leaving_the_ball(trained_mlp, batch):
    with pytest.raises(AttackCheckError, match="exceeds eps"):
        Escaping()(trained_mlp, *batch)


@pytest.mark.parametrize("x,y,message", [
    (torch.rand(4, 1, 8, 8) * 2, torch.zeros(4, dtype=torch.int64), "pixels must lie in"),
    (torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.int32), "labels must be int64"),
    (torch.rand(4, 1, 8, 8), torch.zeros(3, dtype=torch.int64), "labels must be int64"),
])
def test_bad_inputs(trained_mlp, x, y, message):
    with pytest.raises(ConfigError, match=message):
        ATTACKS.create("fgsm")(trained_mlp, x, y)


@pytest.mark.parametrize("params,message", [({"eps": -1}, "eps > 0"), ({"norm": "l7"}, "unknown norm"),
                                            ({"loss": "hinge"}, "unknown attack loss"),
                                            ({"restarts": 2, "random_start": False}, "restarts")])
def test_bad_parameters(params, message):
    with pytest.raises(ConfigError, match=message):
        ATTACKS.create("pgd", **params)


@pytest.mark.parametrize("params", [{"norm": "linf", "eps": 0.15, "step_size": 0.02},
                                    {"norm": "l2", "eps": 1.0, "step_size": 0.15}])
def test_success_step_gives_the_accuracy_of_every_shorter_run(trained_mlp, digits, params):
    """One 12-step run's per-example first-fooling iteration equals what 1-, 3- and 6-step runs
    (same seed, same step size) find: accuracy vs iterations needs no re-run."""
    x, y = digits.x_test[:200], digits.y_test[:200]
    long = ATTACKS.create("pgd", steps=12, **params)(trained_mlp, x, y)
    assert long.success_step is not None
    assert torch.equal(long.success_step >= 0, long.success)
    for steps in (1, 3, 6):
        short = ATTACKS.create("pgd", steps=steps, **params)(trained_mlp, x, y)
        assert torch.equal(short.success, long.success & (long.success_step <= steps))
    assert ATTACKS.create("pgd", steps=3, restarts=2, **params)(trained_mlp, x, y).success_step is None


def test_fgs_line_matches_fgsm_at_its_grid_points(trained_mlp, digits):
    """The FGS line's smallest fooling eps: FGSM at a grid eps fools exactly the points whose line
    crossing is at most that eps (where FGSM's outcome is monotone along the line, as here), and
    every reported crossing really fools."""
    x, y = digits.x_test[:200], digits.y_test[:200]
    line = ATTACKS.create("fgs-line", max_eps=0.3, grid_step=0.05, refine=4)(trained_mlp, x, y)
    fooled_by_line = {}
    for eps in (0.05, 0.1, 0.2):
        fgsm = ATTACKS.create("fgsm", eps=eps)(trained_mlp, x, y)
        fooled_by_line[eps] = line.success & (line.linf <= eps + 1e-6)
        assert (fooled_by_line[eps] != fgsm.success).sum() <= 2  # non-monotone points only
    assert fooled_by_line[0.05].sum() < fooled_by_line[0.2].sum()
    refined = line.success & (line.linf > 0)
    assert bool(((line.linf[refined] * 1000) % 50 != 0).any())  # bisection moved off the grid


@pytest.mark.parametrize("restarts", [1, 3])
def test_a_transfer_attack_crafts_to_the_last_step_on_its_source(trained_mlp, batch, restarts):
    """Frozen at its first success on the source, a point barely crosses the source's boundary;
    the transfer attack runs every step instead (the white-box PGD's key is unchanged)."""
    from attacks.gradient import gradient_ascent

    x, y = batch
    params = {"norm": "linf", "eps": 0.2, "steps": 8, "step_size": 0.05, "restarts": restarts}
    transfer = make("transfer", params, source=trained_mlp)
    white = ATTACKS.create("pgd", **params)
    assert transfer.config()["base"] == {**white.config(), "run_all_steps": True}
    result = transfer(trained_mlp, x, y)   # the source as its own target: every crafted point fools it
    frozen = white(trained_mlp, x, y)
    assert result.forward_passes == x.shape[0] * (params["steps"] * restarts + (restarts if restarts > 1 else 0) + 2)
    assert result.backward_passes == x.shape[0] * params["steps"] * restarts
    assert transfer.base.pass_counts() == (params["steps"] * restarts + (restarts if restarts > 1 else 0) + 1,
                                           params["steps"] * restarts)
    # run to the end, the points sit deeper in the wrong class than the first fooling iterates
    with torch.no_grad():
        margin = lambda points: trained_mlp(points).log_softmax(1).gather(1, y[:, None]).squeeze(1)  # noqa: E731
        both = result.success & frozen.success
        assert int(both.sum()) > x.shape[0] // 2
        assert float(margin(result.x_adv)[both].mean()) < float(margin(frozen.x_adv)[both].mean()) - 1.0
    if restarts == 1:   # the last iterate of the plain loop from the same random start
        last = gradient_ascent(trained_mlp.eval(), x, y, hooks=white.hooks, eps=0.2, steps=8, step_size=0.05,
                               random_start=True, generator=white.make_generator(x.device))
        assert torch.equal(result.x_adv, last)


def test_a_transfer_attack_crafts_once_per_source_batch_and_seed_state(trained_mlp, batch):
    """Evaluations of several targets with one surrogate reuse the crafted points: the same
    outcome, pass counts and generator state as crafting again; new weights craft anew."""
    from attacks import transfer as transfer_module

    x, y = batch
    params = {"norm": "linf", "eps": 0.2, "steps": 6, "step_size": 0.05}
    source = copy.deepcopy(trained_mlp)
    first, again = make("transfer", params, source=source), make("transfer", params, source=source)
    runs = []
    for attack in (first, again):
        generator = attack.make_generator(x.device)
        runs.append((attack(trained_mlp, x, y, generator), generator.get_state()))
    assert len(transfer_module._CRAFTED[source]) == 1
    (one, state_one), (two, state_two) = runs
    assert torch.equal(one.x_adv, two.x_adv) and torch.equal(state_one, state_two)
    assert (one.forward_passes, one.backward_passes) == (two.forward_passes, two.backward_passes)
    with torch.no_grad():
        next(source.parameters()).mul_(0.5)   # trained further in place: crafted anew
    third = make("transfer", params, source=source)(trained_mlp, x, y)
    assert len(transfer_module._CRAFTED[source]) == 2 and not torch.equal(third.x_adv, one.x_adv)
