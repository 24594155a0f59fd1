"""Fixed query budgets (AttackBench): a protocol attack may cap its forward+backward passes per
image; attacks declare their bound (``Attack.pass_budget``), the protocol refuses a cap below it,
and the evaluator checks the counted passes."""

import pytest
import torch

from attacks import ATTACKS
from pydantic import ValidationError
from bench.evaluate import check_budget, evaluate_model
from bench.suite import Protocol

DECLARED = [("pgd", {"eps": 0.1, "steps": 7, "step_size": 0.03}),
            ("pgd", {"eps": 0.1, "steps": 4, "step_size": 0.03, "restarts": 3}),
            ("mim", {"eps": 0.1, "steps": 5}), ("fgsm", {"eps": 0.1}),
            ("fmn", {"steps": 9}), ("ddn", {"steps": 9}), ("alma", {"steps": 9})]


def _protocol(attack, params, cap):
    return Protocol.model_validate({"name": "budget", "version": 1, "dataset": "digits",
                                    "eval_subset": {"size": 60, "seed": 0}, "batch_size": 60,
                                    "attacks": [{"id": "a", "attack": attack, "params": params,
                                                 "max_passes_per_image": cap}]})


@pytest.mark.parametrize("name,params", DECLARED, ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values())))
def test_declared_bounds_hold(trained_mlp, digits, name, params):
    attack = ATTACKS.create(name, **params)
    x, y = digits.x_test[:60], digits.y_test[:60]
    result = attack(trained_mlp, x, y)
    assert (result.forward_passes + result.backward_passes) / len(y) <= attack.pass_budget()


def test_a_cap_at_the_bound_runs_and_stores_the_count_used(trained_mlp, digits):
    bound = ATTACKS.create("fmn", steps=9).pass_budget()
    _, rows = evaluate_model(trained_mlp, digits, _protocol("fmn", {"steps": 9}, bound), {}, torch.device("cpu"),
                             progress=False)
    row = rows[0]
    assert (row["forward_passes"] + row["backward_passes"]) / row["n_examples"] == bound


@pytest.mark.parametrize("attack,params", [("fmn", {"steps": 50}), ("noise", {"eps": 0.1})])
def test_a_cap_below_the_bound_or_on_an_undeclared_attack_is_refused(attack, params):
    with pytest.raises(ValidationError, match="max_passes_per_image"):
        _protocol(attack, params, 20)


def test_the_evaluator_refuses_counted_passes_above_the_cap():
    from attacks import AttackCheckError

    spec = _protocol("fmn", {"steps": 5}, 12).attacks[0]
    with pytest.raises(AttackCheckError, match="spent 13.0"):
        check_budget(spec, {"forward": 7 * 10, "backward": 6 * 10}, 10)


def test_protocols_without_a_cap_hash_as_before():
    assert "max_passes_per_image" not in _protocol("fmn", {"steps": 5}, None).spec()["attacks"][0]
    assert _protocol("fmn", {"steps": 5}, None).content_hash() != _protocol("fmn", {"steps": 5}, 12).content_hash()
