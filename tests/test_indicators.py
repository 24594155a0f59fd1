"""Indicators of attack failure (Pintor et al. 2022), computed by the evaluator from each attack's
trace: they fire on models built to make attacks fail, and stay quiet on a plain trained model."""

import pytest
import torch
from torch import nn

from attacks.base import Attack
from bench.evaluate import SourceModel, evaluate_model
from bench.suite import Protocol

PGD = {"id": "pgd", "attack": "pgd", "params": {"norm": "linf", "eps": 0.3, "steps": 20, "step_size": 0.05}}
FMN = {"id": "fmn", "attack": "fmn", "params": {"norm": "l2", "steps": 20}}


def protocol(*attacks):
    return Protocol.model_validate({"name": "ind", "version": 1, "dataset": "digits",
                                    "eval_subset": {"size": 100, "seed": 0}, "batch_size": 50,
                                    "attacks": list(attacks)})


def indicators(model, digits, *attacks, sources=None):
    _, rows = evaluate_model(model, digits, protocol(*attacks), sources or {}, torch.device("cpu"), progress=False)
    return {row["attack_id"]: row.get("indicators") for row in rows}


def fired(readings):
    return sorted(name for name, reading in readings.items() if reading["fired"])


class Quantized(nn.Module):
    """Inputs rounded to 8 bits first: the input gradient is exactly zero everywhere."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 255) / 255)


class Scaled(nn.Module):
    """Logits times 1e3: the softmax saturates, so the cross-entropy's gradient underflows to 0."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return 1e3 * self.model(x)


class Noisy(nn.Module):
    """A randomized model: Gaussian noise on the input at every call, even in eval mode."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x + 0.5 * torch.randn_like(x))


def test_a_plain_model_fires_none_but_the_honest_ones(trained_mlp, digits):
    readings = indicators(trained_mlp, digits, PGD, FMN)
    assert readings["pgd"]["unavailable-gradients"]["value"] == 0.0
    assert readings["pgd"]["silent-success"]["value"] == 0.0
    assert readings["pgd"]["unstable-predictions"]["value"] == 0.0
    assert readings["fmn"]["unconstrained-attack-failure"]["fired"] is False
    assert "transfer-failure" not in readings["pgd"]
    assert readings["worst-case-linf-0.3"] is None


@pytest.mark.parametrize("wrapper", [Quantized, Scaled], ids=["quantized-input", "logits-x1000"])
def test_masked_gradients_fire_unavailable_gradients(trained_mlp, digits, wrapper):
    readings = indicators(wrapper(trained_mlp).eval(), digits, PGD, FMN)
    assert "unavailable-gradients" in fired(readings["pgd"])
    assert readings["pgd"]["unavailable-gradients"]["value"] > 0.5


def test_a_randomized_model_fires_unstable_predictions(trained_mlp, digits):
    torch.manual_seed(0)
    readings = indicators(Noisy(trained_mlp).eval(), digits, PGD)
    assert "unstable-predictions" in fired(readings["pgd"])


def test_too_few_tiny_steps_fire_incomplete_optimization(trained_mlp, digits):
    crawling = {"id": "crawl", "attack": "pgd",
                "params": {"norm": "linf", "eps": 0.3, "steps": 10, "step_size": 0.002, "random_start": False}}
    converging = {"id": "pgd-small", "attack": "pgd",
                  "params": {"norm": "linf", "eps": 0.05, "steps": 40, "step_size": 0.01, "random_start": False}}
    readings = indicators(trained_mlp, digits, crawling, converging)
    assert "incomplete-optimization" in fired(readings["crawl"])
    assert "incomplete-optimization" not in fired(readings["pgd-small"])
    assert readings["pgd-small"]["incomplete-optimization"]["points"] > 0


def test_a_transfer_from_a_different_model_fires_transfer_failure(trained_mlp, digits):
    from bench.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        other = build_model("mlp", digits.input_shape, 10, digits.channel_mean, digits.channel_std, hidden=(64,)).eval()
    transfer = {"id": "transfer", "attack": "transfer", "source": "surrogate",
                "params": {"base": "pgd", "base_params": PGD["params"]}}
    readings = indicators(trained_mlp, digits, transfer, sources={"surrogate": SourceModel(other, "s")})
    assert "transfer-failure" in fired(readings["transfer"])


def test_silent_success_fires_when_a_seen_adversarial_point_is_not_returned(trained_mlp, digits):
    """An attack that finds adversarial points (here: PGD's) but returns the clean input."""
    from attacks import ATTACKS, register_attack

    if "forgetful" not in ATTACKS:
        @register_attack("forgetful", kind="bounded", gradients=True)
        class Forgetful(Attack):
            name = "forgetful"

            def __init__(self, seed: int = 0):
                super().__init__(seed)
                from bench.enums import Norm
                self.norm, self.eps = Norm.LINF, 0.3

            def perturb(self, model, x, y, generator, counter, target=None):
                pgd = ATTACKS.create("pgd", eps=0.3, steps=20, step_size=0.05)
                result = pgd(model, x, y, generator)
                counter.trace.ever_fooled = result.trace.ever_fooled | result.success
                counter.trace.first_gradient_norm = result.trace.first_gradient_norm
                return x.clone()

    readings = indicators(trained_mlp, digits, {"id": "forgetful", "attack": "forgetful", "params": {}})
    assert "silent-success" in fired(readings["forgetful"])
