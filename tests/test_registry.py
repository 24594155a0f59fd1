import pytest

from attacks import ATTACKS
from bench.datasets import DATASETS
from bench.errors import ConfigError, UnknownNameError
from bench.models import MODELS
from bench.registry import Registry
from defenses import DEFENSES


def test_unknown_name_suggests_close_match():
    with pytest.raises(UnknownNameError, match=r"did you mean 'pgd'"):
        ATTACKS.get("pgdd")


def test_wildcard_listing():
    assert MODELS.list("m*") == ["mlp", "mnist-cnn"]
    assert "pgd-at" in DEFENSES.list("*-at")
    assert set(DATASETS.list("cifar*")) == {"cifar10", "cifar100"}


def test_factory_rejects_unknown_parameter():
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['epz'\]"):
        ATTACKS.create("pgd", epz=0.3)


def test_duplicate_registration_is_an_error():
    registry: Registry = Registry("thing")
    registry.register("a")(lambda: 1)
    with pytest.raises(ConfigError, match="already registered"):
        registry.register("a")(lambda: 2)


@pytest.mark.parametrize("registry", [ATTACKS, DEFENSES, MODELS, DATASETS], ids=lambda r: r.kind)
def test_every_entry_is_documented(registry):
    for name in registry:
        assert registry.get(name).summary, f"{registry.kind} {name} has no docstring"


def test_every_attack_declares_whether_it_follows_gradients():
    """The masking checks ask the registry (``gradients``), never a list of names: a plugin attack
    that declares it joins them."""
    from attacks import ATTACKS

    undeclared = [name for name in ATTACKS if not isinstance(ATTACKS.get(name).metadata.get("gradients"), bool)]
    assert undeclared == []
    assert ATTACKS.get("pgd").metadata["gradients"] and not ATTACKS.get("noise").metadata["gradients"]
