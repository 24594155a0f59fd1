"""Training jobs through the CLI: fine-tuning with init_from, auxiliary networks, per-epoch extras,
and a diverging run marked failed in the store."""

import json
import sqlite3

import pytest

from bench.cli import main
from bench.jobs import plan_training
from bench.suite import load_suite

PROTOCOL = """
name: tiny-train
version: 1
dataset: digits
eval_subset: {{size: 60, seed: 0}}
attacks:
  - {{id: fgsm, attack: fgsm, params: {{eps: 0.1}}}}
"""
SUITE = """
name: tiny-train
protocol: {protocol}
model: {{arch: mlp, params: {{hidden: [32]}}}}
training: {{epochs: 2, batch_size: 128}}
defenses:
  - defense: standard
  - defense: deep-defense
    init_from: standard
    hparams: {{epochs: 1, max_iter: 2, optimizer: sgd, lr: 0.0005}}
  - defense: efgsm-rec
    hparams: {{eps: 0.1, candidates: top}}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    (root / "protocol.yaml").write_text(PROTOCOL.format())
    (root / "suite.yaml").write_text(SUITE.format(protocol=root / "protocol.yaml"))
    assert main(["train", str(root / "suite.yaml"), "--workdir", str(root / "work"), "--no-progress"]) == 0
    return root


def test_fine_tuning_starts_from_the_named_entry(trained):
    jobs, _ = plan_training(load_suite(str(trained / "suite.yaml")))
    standard, deep_defense, _ = jobs
    assert deep_defense.init is not None and deep_defense.init.key("d") == standard.key("d")
    db = sqlite3.connect(trained / "work" / "advarena.db")
    assert db.execute("select count(*) from training_runs where label = 'standard'").fetchone()[0] == 1
    meta = json.loads(next((trained / "work" / "checkpoints").glob("deep-defense-*/final/meta.json")).read_text())
    assert meta["init_from"]["label"] == "standard"
    # the fine-tuned model starts from the standard one, so its first epoch is already accurate
    first = db.execute("select e.test_accuracy from epochs e join training_runs r on r.id = e.run_id "
                       "where r.label = 'deep-defense' and e.epoch = 1").fetchone()[0]
    assert first > 0.7


def test_auxiliary_networks_and_epoch_statistics_are_stored(trained):
    folder = next((trained / "work" / "checkpoints").glob("efgsm-rec-*"))
    meta = json.loads((folder / "final" / "meta.json").read_text())
    aux = meta["aux"]["reconstructor"]
    assert (folder / "aux-reconstructor" / "weights.safetensors").is_file() and len(aux["sha256"]) == 64
    db = sqlite3.connect(trained / "work" / "advarena.db")
    extras = [json.loads(row[0]) for row in db.execute(
        "select e.extra from epochs e join training_runs r on r.id = e.run_id where r.label = 'efgsm-rec'")]
    assert len(extras) == 2 and all(0 <= e["estimated_robust_accuracy"] <= 1 for e in extras)


def test_a_diverging_run_is_marked_failed(tmp_path, capsys):
    (tmp_path / "protocol.yaml").write_text(PROTOCOL.format())
    (tmp_path / "suite.yaml").write_text(
        f"name: bad\nprotocol: {tmp_path / 'protocol.yaml'}\nmodel: {{arch: mlp, params: {{hidden: [8]}}}}\n"
        "defenses:\n  - defense: standard\n    hparams: {epochs: 1, optimizer: sgd, lr: 1.0e+30}\n")
    code = main(["train", str(tmp_path / "suite.yaml"), "--workdir", str(tmp_path / "work"), "--no-progress"])
    assert code == 2 and "loss became" in capsys.readouterr().err
    db = sqlite3.connect(tmp_path / "work" / "advarena.db")
    status, error = db.execute("select status, error from training_runs").fetchone()
    assert status == "failed" and "TrainingDivergedError" in error
