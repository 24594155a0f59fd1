import pytest
import torch

from bench.errors import ConfigError
from bench.models import MODELS, build_model

SHAPES = {"mnist": (1, 28, 28), "cifar": (3, 32, 32)}
TINY = {"wrn-28-10": {"depth": 10, "widen_factor": 1}, "convpool-cnn": {"width": 0.125}}


@pytest.mark.parametrize("arch", [a for a in MODELS if MODELS.get(a).metadata["family"] != "attacker"])
def test_every_model_maps_images_to_logits(arch):
    shape = SHAPES[MODELS.get(arch).metadata["family"]]
    model = build_model(arch, shape, 7, [0.5] * shape[0], [0.25] * shape[0], **TINY.get(arch, {}))
    logits = model.eval()(torch.rand(2, *shape))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


def test_default_wrn_is_28_10():
    model = build_model("wrn-28-10", (3, 32, 32), 10, [0.5] * 3, [0.25] * 3)
    assert 36_000_000 < sum(p.numel() for p in model.parameters()) < 37_000_000


def test_mnist_cnn_matches_seed_004_size():
    model = build_model("mnist-cnn", (1, 28, 28), 10, [0.13], [0.3])
    assert sum(p.numel() for p in model.parameters()) == 105_506
    padded = build_model("mnist-cnn", (1, 28, 28), 10, [0.13], [0.3], pad_to=32)
    assert padded(torch.rand(1, 1, 28, 28)).shape == (1, 10)


def test_normalization_lives_inside_the_model():
    model = build_model("mlp", (1, 8, 8), 10, [0.5], [0.25])
    assert torch.equal(model[0].mean.flatten(), torch.tensor([0.5]))


def test_unknown_architecture_parameter():
    with pytest.raises(ConfigError, match="unknown parameter"):
        build_model("mlp", (1, 8, 8), 10, [0.5], [0.25], depth=3)
