"""Mechanics of the defenses that train an attacker network (seeds 000 and 003) and of the attacks
that replay those networks, on the real 8x8 digits."""

import pytest
import torch
from torch.nn import functional as F

from attacks import ATTACKS
from bench.models import build_model
from bench.models.learned_attackers import (class_probability_gradient, l2l_adversarial, normalized_loss_gradient,
                                            pgn_adversarial)
from defenses import build_trainer

VARIANTS = ("naive", "grad", "2step")


def network(digits, arch, seed=0, **params):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(arch, digits.input_shape, 10, digits.channel_mean, digits.channel_std, **params)


def test_generator_keeps_adversarial_images_in_the_box_even_for_huge_offsets(digits, trained_mlp):
    generator = network(digits, "pgn-generator", width=8, hidden=32, grad_batch=64)
    x, y = digits.x_test[:64], digits.y_test[:64]
    assert x.min() == 0 and x.max() == 1  # saturated pixels are where atanh would overflow
    grad = class_probability_gradient(trained_mlp, x, y, 64, create_graph=False)
    with torch.no_grad():
        for layer in (generator.out,):
            layer.weight.mul_(1e4)
        x_adv = pgn_adversarial(generator, x, y, grad)
    assert torch.isfinite(x_adv).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > 0.5  # the offsets really were huge


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", ["slim", "wide"])
def test_l2l_attacker_output_stays_in_the_eps_ball(digits, trained_mlp, variant, size):
    attacker = network(digits, "l2l-attacker", eps=0.1, variant=variant, size=size, width=0.25)
    x, y = digits.x_test[:64], digits.y_test[:64]
    with torch.no_grad():
        attacker.head.weight.mul_(1e3)  # saturate the tanh
    x_adv = l2l_adversarial(attacker.eval(), trained_mlp, x, y)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > 0.09


def test_gradient_input_is_normalized_by_the_batch_maximum(digits, trained_mlp):
    grad = normalized_loss_gradient(trained_mlp, digits.x_test[:32], digits.y_test[:32])
    assert grad.abs().max() == pytest.approx(1.0) and not grad.requires_grad


@pytest.mark.parametrize("defense", ["l2l-naive", "l2l-grad", "l2l-2step"])
def test_attacker_update_increases_the_loss_of_a_frozen_classifier(digits, trained_mlp, defense):
    trainer = build_trainer(defense, {"eps": 0.2, "attacker_width": 0.25, "attacker_lr": 1e-2, "lr": 1e-3})
    trainer.setup(trained_mlp, digits, torch.device("cpu"), torch.Generator().manual_seed(0))
    attacker = trainer.aux["attacker"]
    optimizer = torch.optim.Adam(attacker.parameters(), lr=1e-2)
    x, y = digits.x_train[:256], digits.y_train[:256]
    frozen = {k: v.clone() for k, v in trained_mlp.state_dict().items()}

    def loss() -> float:
        attacker.eval()
        with torch.enable_grad():
            return F.cross_entropy(trained_mlp(l2l_adversarial(attacker, trained_mlp, x, y)), y).item()

    before = loss()
    for _ in range(30):  # the attacker phase of the training step, with the classifier fixed
        attacker.train()
        optimizer.zero_grad()
        (-F.cross_entropy(trained_mlp(l2l_adversarial(attacker, trained_mlp, x, y)), y)).backward()
        optimizer.step()
    assert loss() > before + 0.2
    assert all(torch.equal(frozen[k], v) for k, v in trained_mlp.state_dict().items())


def test_l2l_classifier_phase_leaves_the_attacker_unchanged_and_attacker_phase_the_classifier(digits):
    torch.manual_seed(0)
    model = network(digits, "mlp", hidden=(32,))
    trainer = build_trainer("l2l-grad", {"eps": 0.1, "attacker_width": 0.25, "epochs": 1, "batch_size": 64})
    trainer.setup(model, digits, torch.device("cpu"), torch.Generator().manual_seed(0))
    optimizer = trainer.make_optimizer(model)
    assert optimizer.param_groups[1]["lr_scale"] == 1.0 and optimizer.param_groups[1]["weight_decay"] == 2e-4
    from attacks.base import PassCounter
    from defenses.base import BatchContext

    x, y = digits.x_train[:64], digits.y_train[:64]
    attacker_before = [p.clone() for p in trainer.aux["attacker"].parameters()]
    classifier_before = [p.clone() for p in model.parameters()]
    trainer.train_batch(model, x, y, BatchContext(1, torch.Generator(), PassCounter()), optimizer)
    assert any(not torch.equal(a, b) for a, b in zip(attacker_before, trainer.aux["attacker"].parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(classifier_before, model.parameters()))


def test_l2l_classifier_loss_treats_the_attacker_as_a_constant(digits):
    """The classifier phase builds no graph through the attacker's weights, and gives them back their
    requires_grad flags (the attacker phase trains them)."""
    from attacks.base import PassCounter
    from defenses.base import BatchContext

    model = network(digits, "mlp", hidden=(32,))
    trainer = build_trainer("l2l-2step", {"eps": 0.1, "attacker_width": 0.25, "epochs": 1, "batch_size": 64})
    trainer.setup(model, digits, torch.device("cpu"), torch.Generator().manual_seed(0))
    attacker = trainer.aux["attacker"]
    out = trainer.batch_loss(model, digits.x_train[:64], digits.y_train[:64],
                             BatchContext(1, torch.Generator(), PassCounter()))
    out.loss.backward()
    assert all(p.requires_grad and p.grad is None for p in attacker.parameters())
    assert all(p.grad is not None for p in model.parameters())


def test_pgn_checkpoint_holds_the_ema_weights_not_the_raw_ones(digits):
    model = network(digits, "mlp", hidden=(32,))
    trainer = build_trainer("pgn", {"epochs": 1, "batch_size": 64, "c_L": 10.0, "generator_width": 8,
                                    "generator_hidden": 32, "ema_decay": 0.99, "lr": 5e-4})
    raw = {}
    finish = trainer.finish

    def keep_raw(m):
        raw["classifier"] = {k: v.clone() for k, v in m.state_dict().items()}
        raw["generator"] = {k: v.clone() for k, v in trainer.aux["generator"].state_dict().items()}
        finish(m)

    trainer.finish = keep_raw
    result = trainer.fit(model, digits, seed=0, progress=False)
    shadows = trainer.average.shadows
    for name, module in (("classifier", result.model), ("generator", result.aux["generator"])):
        final = module.state_dict()
        assert all(torch.equal(final[k], v) for k, v in shadows[name].state_dict().items())
        assert any(not torch.equal(final[k], v) for k, v in raw[name].items())
    assert result.aux_arch["generator"] == ("pgn-generator", {"width": 8, "hidden": 32, "grad_batch": 64})


def test_pgn_second_order_path_reaches_the_classifier_only_when_not_detached(digits):
    from attacks.base import PassCounter
    from defenses.base import BatchContext

    grads = {}
    for detach in (False, True):
        model = network(digits, "mlp", hidden=(32,))
        trainer = build_trainer("pgn", {"c_L": 1.0, "generator_width": 8, "generator_hidden": 32,
                                        "detach_grad_image": detach})
        trainer.setup(model, digits, torch.device("cpu"), torch.Generator().manual_seed(0))
        out = trainer.batch_loss(model, digits.x_train[:64], digits.y_train[:64],
                                 BatchContext(1, torch.Generator(), PassCounter()))
        grads[detach] = torch.autograd.grad(out.loss, list(model.parameters()))[0]
    assert not torch.allclose(grads[False], grads[True])


def test_a_smaller_c_l_makes_larger_generator_perturbations(digits):
    sizes = {}
    for c_l in (0.1, 100.0):
        model = network(digits, "mlp", hidden=(32,))
        trainer = build_trainer("pgn", {"epochs": 2, "batch_size": 64, "c_L": c_l, "generator_width": 8,
                                        "generator_hidden": 32, "ema_decay": 0.9})
        result = trainer.fit(model, digits, seed=0, progress=False)
        x, y = digits.x_test[:128], digits.y_test[:128]
        grad = class_probability_gradient(result.model, x, y, 64, create_graph=False)
        with torch.no_grad():
            sizes[c_l] = float((pgn_adversarial(result.aux["generator"], x, y, grad) - x).flatten(1).norm(dim=1).mean())
    assert sizes[0.1] > 2 * sizes[100.0]


@pytest.mark.parametrize("attack,arch,params,norm,eps", [
    ("pgn-generator", "pgn-generator", {"width": 8, "hidden": 32, "grad_batch": 64}, "l2", 1.0),
    ("l2l-attacker", "l2l-attacker", {"eps": 0.2, "variant": "2step", "width": 0.25}, "linf", 0.1),
])
def test_learned_attacks_replay_a_network_inside_their_ball(digits, trained_mlp, attack, arch, params, norm, eps):
    source = network(digits, arch, **params)
    with torch.no_grad():
        source.head.weight.mul_(1e3) if arch == "l2l-attacker" else source.out.weight.mul_(1e3)
    made = ATTACKS.create(attack, source_model=source, source_id="abc", norm=norm, eps=eps)
    result = made(trained_mlp, digits.x_test[:100], digits.y_test[:100])
    size = result.linf if norm == "linf" else result.l2
    assert eps * 0.9 < size.max() <= eps * (1 + 1e-5)
    assert made.config()["source"] == "abc" and result.backward_passes >= 100
    wrong = network(digits, "mlp", hidden=(8,))
    with pytest.raises(Exception, match="expected a trained"):
        ATTACKS.create(attack, source_model=wrong, source_id="abc")


SUITE = """
name: learned
protocol: {protocol}
model: {{arch: mlp, params: {{hidden: [32]}}}}
training: {{epochs: 2, batch_size: 64, lr: 0.005}}
defenses:
  - defense: standard
  - {{defense: pgn, hparams: {{c_L: [1.0], generator_width: 8, generator_hidden: 32, ema_decay: 0.9}}}}
  - {{defense: l2l-grad, hparams: {{eps: 0.1, attacker_width: 0.25}}}}
attacks:
  - {{id: gen, attack: pgn-generator, source: pgn@c_L=1, params: {{norm: l2, eps: 1.0}}}}
  - {{id: l2l, attack: l2l-attacker, source: l2l-grad, params: {{eps: 0.1}}}}
"""
PROTOCOL = """
name: tiny-learned
version: 1
dataset: digits
eval_subset: {size: 100, seed: 0}
batch_size: 50
attacks:
  - {id: pgd, attack: pgd, params: {eps: 0.1, steps: 5, step_size: 0.03}}
"""


def test_suite_replays_each_learned_attacker_on_every_defense_and_audits_it(tmp_path, capsys):
    import json

    from bench.cli import main

    (tmp_path / "protocol.yaml").write_text(PROTOCOL)
    (tmp_path / "suite.yaml").write_text(SUITE.format(protocol=tmp_path / "protocol.yaml"))
    work = ["--workdir", str(tmp_path / "work"), "--no-progress"]
    assert main(["run", str(tmp_path / "suite.yaml"), *work]) == 0
    capsys.readouterr()
    assert main(["leaderboard", "--protocol", "tiny-learned", "--format", "json", *work]) == 0
    board = {row["label"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(board) == {"standard", "pgn@c_L=1", "l2l-grad"}
    for row in board.values():
        assert 0 <= row["gen"] <= row["benign"] and 0 <= row["l2l"] <= row["benign"]
    assert (tmp_path / "work" / "checkpoints").glob("pgn*/aux-generator/weights.safetensors")
    assert main(["audit", "standard", "--attacks", "gen,l2l", *work]) == 0
    out = capsys.readouterr().out
    assert "reproduced attack gen" in " ".join(out.split()) and "0 of 100 per-example outcomes differ" in out


@pytest.mark.parametrize("attacks,expected", [
    ("[{id: g, attack: pgn-generator, source: nobody}]", "is not a defense entry"),
    ("[{id: g, attack: pgn-generator, source: standard}]", "which defense 'standard' does not train"),
    ("[{id: g, attack: l2l-attacker, params: {eps: 0.1}}]", "needs 'source'"),
    ("[{id: g, attack: pgd, source: standard}]", "'source' is only for attacks"),
])
def test_suite_attack_sources_are_validated(tmp_path, attacks, expected):
    from bench.errors import ConfigError
    from bench.suite import load_suite

    text = SUITE.format(protocol=tmp_path / "p.yaml").split("attacks:")[0] + f"attacks: {attacks}\n"
    (tmp_path / "suite.yaml").write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_suite(str(tmp_path / "suite.yaml"))
