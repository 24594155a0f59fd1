"""``advarena estimate``: passes per job from the configs, seconds from a probe on this device."""

import torch

from bench.cli import main
from bench.estimate import attack_budget, estimate_suite, split_sizes
from bench.suite import AttackSpec, Protocol, Suite, load_protocol


def _quick_on_digits():
    return Protocol.model_validate({**load_protocol("quick").model_dump(), "dataset": "digits"})

SUITE = {"name": "est", "protocol": "quick", "model": {"arch": "mlp", "params": {"hidden": [16]}},
         "training": {"epochs": 3, "batch_size": 100},
         "defenses": [{"defense": "standard"},
                      {"defense": "pgd-at", "hparams": {"eps": 0.3, "steps": 4, "step_size": 0.1}}],
         "surrogates": {"surrogate": {"defense": "standard", "seed": 1}}}


def test_training_passes_come_from_the_trainer_and_evaluation_passes_from_the_attack_configs():
    protocol = _quick_on_digits()
    estimates = estimate_suite(Suite.model_validate(SUITE), protocol, torch.device("cpu"), probe_images=8)
    by = {(e.kind, e.label): e for e in estimates}
    assert sorted(by) == [("evaluate", "pgd-at"), ("evaluate", "standard"), ("train", "pgd-at"),
                          ("train", "standard"), ("train", "surrogate")]
    n_train, n_test, _, _ = split_sizes("digits")
    epochs = 3
    standard, pgd = by[("train", "standard")], by[("train", "pgd-at")]
    assert standard.forward == n_train * epochs + n_test * epochs and standard.backward == n_train * epochs
    # PGD-4 in training: 4 attack steps (forward + backward) and the training step itself.
    assert pgd.backward == 5 * n_train * epochs
    assert pgd.seconds > 0 and standard.seconds > 0  # (timings: measured, not compared, on a shared CPU)
    evaluation = by[("evaluate", "standard")]
    budgets = [attack_budget(spec, 10) for spec, _ in protocol.expanded_attacks()]
    images = min(1000, n_test)
    assert evaluation.forward == images * (1 + sum(f for f, _ in budgets))
    assert evaluation.backward == images * sum(b for _, b in budgets)


def test_attack_budgets():
    pgd = AttackSpec(id="p", attack="pgd", params={"steps": 20, "restarts": 5, "eps": 0.03, "step_size": 0.01})
    assert attack_budget(pgd, 10) == (105, 100)
    transfer = AttackSpec(id="t", attack="transfer", source="s", params={"base": "pgd", "base_params": {"steps": 20}})
    assert attack_budget(transfer, 10) == (22, 20)
    assert attack_budget(AttackSpec(id="d", attack="deepfool", params={"steps": 10, "candidates": 3}), 10) == (11, 30)


def test_estimate_command_prints_per_job_passes_and_times(capsys, tmp_path):
    import yaml

    protocol = tmp_path / "protocol.yaml"
    protocol.write_text(yaml.safe_dump(_quick_on_digits().model_dump(mode="json", exclude={"subset"})))
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({**SUITE, "protocol": str(protocol)}))
    assert main(["estimate", str(path), "--device", "cpu", "--probe-images", "8"]) == 0
    out = capsys.readouterr().out
    assert "train    pgd-at" in out and "evaluate standard" in out and "total on cpu" in out
    assert main(["estimate", "cifar10-linf", "--device", "cpu", "--model", "dd-cifar-convnet",
                 "--probe-images", "4", "--subset", "100"]) == 0
    out = capsys.readouterr().out
    assert "15 attack runs on 100 images" in out
