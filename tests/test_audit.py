"""``advarena audit``: stored results re-derived from checkpoints, tampering caught, and the
gradient-masking checks on a deliberately masked model against honest ones."""

import sqlite3
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.audit import CHECKS, Reattack, masking_flags
from bench.cli import main
from bench.evaluate import SourceModel, evaluate_model
from bench.models import build_model
from bench.suite import Protocol
from defenses import build_trainer

PROTOCOL = """
name: tiny-audit
version: 1
dataset: digits
eval_subset: {size: 150, seed: 0}
batch_size: 75
attacks:
  - {id: fgsm-linf-0.1, attack: fgsm, params: {eps: 0.1}}
  - {id: pgd40-linf-0.1, attack: pgd, params: {eps: 0.1, steps: 10, step_size: 0.02}, eps_grid: [0.05]}
  - {id: noise-linf-0.1, attack: noise, params: {eps: 0.1, draws: 5}}
  - id: transfer
    attack: transfer
    source: surrogate
    params: {base: pgd, base_params: {eps: 0.1, steps: 10, step_size: 0.02}}
"""
SUITE = """
name: tiny-audit
protocol: {protocol}
model: {{arch: mlp, params: {{hidden: [32]}}}}
training: {{epochs: 2, batch_size: 64, lr: 0.005}}
defenses:
  - defense: standard
  - defense: fgsm-at
    hparams: {{eps: 0.1}}
surrogates:
  surrogate: {{defense: standard, seed: 1}}
"""


@pytest.fixture()
def stored_run(tmp_path):
    (tmp_path / "protocol.yaml").write_text(PROTOCOL)
    (tmp_path / "suite.yaml").write_text(SUITE.format(protocol=tmp_path / "protocol.yaml"))
    work = tmp_path / "work"
    assert main(["run", str(tmp_path / "suite.yaml"), "--workdir", str(work), "--no-progress", "--quiet"]) == 0
    return work


def test_every_checkpoint_reproduces_and_the_audit_is_stored(stored_run, capsys):
    capsys.readouterr()
    assert main(["audit", "--all", "--workdir", str(stored_run), "--attacks", "*"]) == 0
    out = capsys.readouterr().out
    assert out.count("reproduce reproduced") == 2 and "differs" not in out
    # per checkpoint: fgsm, pgd, its grid point at 0.05, noise and transfer, all re-run
    assert out.count("reproduced    attack ") == 2 * 5
    db = sqlite3.connect(stored_run / "advarena.db")
    assert db.execute("select count(*), min(verdict), max(verdict) from audits").fetchone() == (2, "reproduced",
                                                                                              "reproduced")


def test_flipped_weight_bytes_are_caught_before_loading(stored_run, capsys):
    db = sqlite3.connect(stored_run / "advarena.db")
    (path,) = db.execute("select c.path from checkpoints c join training_runs r on r.id = c.run_id "
                         "where r.label = 'standard'").fetchone()
    weights = Path(path) / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["audit", "standard", "--workdir", str(stored_run)]) == 3
    out = capsys.readouterr().out
    assert "standard: reproduce differs" in out and "not loaded" in out
    assert "benign accuracy" not in out  # nothing was loaded or re-run


def test_an_edited_stored_accuracy_is_reported(stored_run, capsys):
    db = sqlite3.connect(stored_run / "advarena.db")
    db.execute("update evaluations set benign_accuracy = benign_accuracy - 0.02")
    db.execute("update attack_results set robust_accuracy = robust_accuracy + 0.05 where attack_id = 'pgd40-linf-0.1'")
    db.commit()
    capsys.readouterr()
    assert main(["audit", "fgsm-at", "--workdir", str(stored_run)]) == 3
    out = capsys.readouterr().out
    assert "differs       benign accuracy" in out and "differs       attack pgd40-linf-0.1" in out


# -- gradient masking ------------------------------------------------------------------------------

class SaturatedSoftmax(nn.Module):
    """A standard model with logits scaled by 1e4: softmax saturates, CE gradients vanish."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * 1e4


def _protocol() -> Protocol:
    import yaml

    text = PROTOCOL.replace("steps: 10, step_size: 0.02", "steps: 40, step_size: 0.01").replace(
        "- {id: noise", "- {id: deepfool-l2, attack: deepfool, params: {norm: l2}}\n  - {id: noise")
    return Protocol.model_validate(yaml.safe_load(text))


def _flags(model, digits, surrogate):
    protocol = _protocol()
    evaluation, rows = evaluate_model(model, digits, protocol, {"surrogate": SourceModel(surrogate, "s")},
                                      torch.device("cpu"), progress=False)
    x, y = digits.x_test[:150], digits.y_test[:150]
    flags = masking_flags(rows, evaluation["benign_accuracy"], tolerance=3.0,
                          reattack=Reattack(model, x, y, batch_size=75))
    assert {f.check for f in flags} == set(CHECKS)  # every check had the data it needs
    return {f.check: f.evidence for f in flags if f.flagged}


def _train(defense, hparams, digits, seed):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model("mlp", digits.input_shape, 10, digits.channel_mean, digits.channel_std, hidden=(64,))
    build_trainer(defense, {"epochs": 15, "batch_size": 64, **hparams}).fit(model, digits, seed=seed, progress=False)
    return model.eval()


def test_masked_model_raises_flags_and_honest_models_none(digits, trained_mlp):
    surrogate = _train("standard", {}, digits, seed=1)
    pgd_at = _train("pgd-at", {"eps": 0.1, "steps": 5, "step_size": 0.03}, digits, seed=0)
    assert _flags(trained_mlp, digits, surrogate) == {}
    assert _flags(pgd_at, digits, surrogate) == {}
    masked = _flags(SaturatedSoftmax(trained_mlp).eval(), digits, surrogate)
    assert {"ce-cw-disagree", "black-box-beats-white-box"} <= set(masked), masked


def test_retrain_reproduces_a_cpu_run(stored_run, capsys):
    capsys.readouterr()
    assert main(["audit", "fgsm-at", "--retrain", "--workdir", str(stored_run)]) == 0
    out = capsys.readouterr().out
    assert "fgsm-at: retrain reproduced" in out
    assert "reproduced    retrained benign accuracy" in out and "reproduced    retrained pgd40-linf-0.1" in out
    db = sqlite3.connect(stored_run / "advarena.db")
    assert db.execute("select kind, verdict from audits order by id").fetchall() == [
        ("reproduce", "reproduced"), ("retrain", "reproduced")]


def test_the_environment_diff_names_machine_changes_not_the_evaluation_s_execution_record():
    from bench.audit.reproduce import environment_diff

    stored = {"torch": "2.13.0", "packages": {"numpy": "2.0"}, "execution": {"precision": "fp32", "compile": False}}
    assert environment_diff(stored, {"torch": "2.13.0", "packages": {"numpy": "2.0"}}) == {}
    assert environment_diff(stored, {"torch": "2.14.0", "packages": {"numpy": "2.1"}}) == {
        "torch": ["2.13.0", "2.14.0"], "packages.numpy": ["2.0", "2.1"]}


def test_a_plugin_gradient_attack_joins_the_noise_check_by_its_registry_metadata(monkeypatch):
    from attacks import ATTACKS, register_attack
    from attacks.base import Attack
    from bench.audit.masking import noise_beats_gradient

    monkeypatch.setattr(ATTACKS, "_entries", dict(ATTACKS._entries))   # the plugins leave with the test
    for name, follows in (("plugin-grad", True), ("plugin-query", False)):
        register_attack(name, kind="bounded", gradients=follows)(type(name, (Attack,), {"name": name, "perturb": None}))

    def row(attack_id, attack, fooled):
        return {"attack_id": attack_id, "attack": attack, "norm": "linf", "eps": 0.3, "grid_of": None,
                "threat": "white-box", "config": {},
                "examples": [{"clean_correct": True, "success": bool(f)} for f in fooled]}

    noise = row("noise", "noise", [1, 1, 0, 0])
    for attack, flagged in (("plugin-grad", False), ("plugin-query", None)):
        flags = noise_beats_gradient([noise, row("plugin", attack, [1, 1, 1, 0])], tolerance=2.0)
        assert [f.flagged for f in flags] == ([] if flagged is None else [flagged])
