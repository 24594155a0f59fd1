"""Every shipped protocol and suite validates and builds every attack, trainer and network it names;
the paper protocols cite the seed tables they follow; ``--subset N`` marks and separates results."""

import numpy as np
import pytest
import torch
from torch import nn

from attacks import ATTACKS
from bench.datasets import DATASETS
from bench.evaluate import SourceModel, build_attack, eval_subset
from bench.jobs import plan_training
from bench.models import build_model
from bench.suite import load_protocol, load_suite, shipped_names
from defenses import build_trainer

PAPER_PROTOCOLS = ["cifar10-linf", "cifar10-linf-full", "cifar10-l2", "cifar100-linf", "svhn-linf", "mnist-linf"]
PAPER_SUITES = ["seeds-cifar10", "seeds-mnist"]


def test_the_paper_protocols_and_suites_ship():
    assert set(PAPER_PROTOCOLS) <= set(shipped_names("protocol"))
    assert set(PAPER_SUITES) <= set(shipped_names("suite"))


@pytest.mark.parametrize("name", shipped_names("protocol"))
def test_a_shipped_protocol_builds_every_attack(name):
    protocol = load_protocol(name)
    sources = {str(spec.source): SourceModel(nn.Identity(), "0" * 64)
               for spec, _ in protocol.expanded_attacks() if spec.source}
    for spec, _ in protocol.expanded_attacks():
        attack = build_attack(spec, sources)
        assert attack.key()
    if name in PAPER_PROTOCOLS:
        from importlib import resources

        header = (resources.files("bench.configs") / "protocols" / f"{name}.yaml").read_text().split("\nname:")[0]
        assert "Follows:" in header or "seed 0" in header
        ids = {spec.attack for spec in protocol.attacks}
        assert {"fgsm", "pgd", "autoattack", "transfer", "noise", "cw", "deepfool"} <= ids


@pytest.mark.parametrize("name", shipped_names("suite"))
def test_a_shipped_suite_builds_every_trainer_and_network(name):
    suite = load_suite(name)
    protocol = load_protocol(suite.protocol)
    meta = DATASETS.get(protocol.dataset).metadata
    shape, classes = meta.get("shape") or (1, 28, 28), meta.get("classes")
    defenses, surrogates = plan_training(suite)
    for job in [*defenses, *surrogates.values()]:
        trainer = build_trainer(job.defense, job.hparams)
        assert trainer.hparams() == job.hparams
        with torch.random.fork_rng(devices=[]):
            model = build_model(job.arch, shape, classes or 10, (0.5,) * shape[0], (0.25,) * shape[0],
                                **job.arch_params)
        assert model(torch.rand(2, *shape)).shape == (2, classes or 10)
    roles = {str(spec.source) for spec, _ in protocol.expanded_attacks() if spec.source_kind == "surrogate"}
    assert roles <= set(suite.surrogates)
    if name in PAPER_SUITES:
        from importlib import resources

        text = (resources.files("bench.configs") / "suites" / f"{name}.yaml").read_text()
        assert text.count("[DS ") >= len(suite.defenses)


def test_the_cifar_suite_augments_except_where_the_paper_says_not():
    defenses, _ = plan_training(load_suite("seeds-cifar10"))
    augment = {job.label: job.hparams.get("augment") for job in defenses}
    assert augment["pgd-at"] == {"pad_crop": 4, "hflip": True, "pad_mode": "zero"}
    assert augment["pgn@c_L=50"]["pad_mode"] == "reflect"
    assert augment["efgsm-rec"] is None and augment["ro-l2"] is None
    mnist, _ = plan_training(load_suite("seeds-mnist"))
    assert all("augment" not in job.hparams for job in mnist)


def test_a_subset_is_a_marked_prefix_of_the_protocol_s_subset():
    full = load_protocol("cifar10-linf")
    small = full.on_subset(64)
    assert small.name == "cifar10-linf@subset64" and small.subset == 64 and small.eval_subset.size == 64
    assert small.content_hash() != full.content_hash() and "subset" not in full.spec()
    assert small.spec()["subset"] == 64
    big, few = eval_subset(10000, 1000, 0), eval_subset(10000, 64, 0)
    assert set(few) <= set(big)
    assert np.array_equal(eval_subset(100, 64, 0), np.sort(np.random.RandomState(0).choice(100, 64, replace=False)))
    with pytest.raises(Exception, match="already restricted"):
        small.on_subset(8)


@pytest.mark.parametrize("argv,message", [
    (["run", "--workers", "-1"], "--workers: expected an integer >= 0, got -1"),
    (["run", "--subset", "0"], "--subset: expected an integer >= 1, got 0"),
    (["train", "--keep-states", "0"], "--keep-states: expected an integer >= 1, got 0"),
])
def test_bad_scale_options_are_one_line_errors(capsys, argv, message):
    from bench.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("advarena: error:") and message in err and err.count("\n") == 1
