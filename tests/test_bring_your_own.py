"""Bring your own defense and model: plugins, external checkpoints, RobustBench model_info."""

import json
import pickle
import shutil
import sqlite3
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bench.cli import main
from bench.errors import PluginError
from bench.plugins import load_plugin
from defenses import DEFENSES

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PROTOCOL = """
name: tiny-byo
version: 1
dataset: digits
eval_subset: {size: 100, seed: 0}
batch_size: 50
attacks:
  - {id: fgsm, attack: fgsm, params: {eps: 0.1}}
  - {id: pgd, attack: pgd, params: {eps: 0.1, steps: 5, step_size: 0.03}}
"""


@pytest.fixture(autouse=True)
def forget_plugins_afterwards():
    """Plugins these tests import live in temporary folders: later tests (and the Ray workers they
    start, which import every loaded plugin) must not see them as loaded."""
    from bench import plugins

    saved = list(plugins.LOADED), list(plugins.SEARCH_PATH)
    yield
    plugins.LOADED[:], plugins.SEARCH_PATH[:] = saved


def _rows(db: Path, query: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(query).fetchall()


def test_suite_plugin_trains_beside_standard_and_both_reach_the_leaderboard(tmp_path, capsys):
    """The README's worked example, end to end: the plugin module is written to a temp folder next to
    the suite that names it."""
    shutil.copy(EXAMPLES / "gaussian_augment.py", tmp_path / "gaussian_augment.py")
    (tmp_path / "protocol.yaml").write_text(PROTOCOL)
    (tmp_path / "suite.yaml").write_text(textwrap.dedent(f"""
        name: byo
        protocol: {tmp_path / 'protocol.yaml'}
        plugins: [gaussian_augment]
        model: {{arch: mlp, params: {{hidden: [32]}}}}
        training: {{epochs: 3, batch_size: 64, lr: 0.005}}
        defenses:
          - defense: standard
          - {{defense: gaussian-augment, hparams: {{sigma: 0.2}}}}
    """))
    assert main(["run", str(tmp_path / "suite.yaml"), "--workdir", str(tmp_path / "work"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["leaderboard", "--protocol", "tiny-byo", "--format", "json", "--workdir", str(tmp_path / "work")]) == 0
    board = {row["label"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(board) == {"standard", "gaussian-augment"}
    assert board["gaussian-augment"]["defense"] == "gaussian-augment" and board["gaussian-augment"]["benign"] > 50
    environment = _rows(tmp_path / "work" / "advarena.db", "select environment from training_runs "
                                                            "where defense = 'gaussian-augment'")
    assert "gaussian_augment" in json.loads(environment[0][0])["plugins"]


def test_plugin_name_clash_with_a_builtin_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "clashing_plugin.py").write_text(textwrap.dedent("""
        from defenses import register_defense
        from defenses.standard import StandardTrainer

        register_defense("pgd-at")(StandardTrainer)
    """))
    before = DEFENSES.get("pgd-at").factory
    with pytest.raises(PluginError, match="'pgd-at' is already registered"):
        load_plugin("clashing_plugin", [tmp_path])
    assert DEFENSES.get("pgd-at").factory is before
    monkeypatch.delitem(sys.modules, "clashing_plugin", raising=False)


def test_unknown_plugin_module_is_one_clear_error(tmp_path, capsys):
    assert main(["list", "defenses", "--plugin", "no_such_plugin_module"]) == 2
    assert "plugin 'no_such_plugin_module' not found" in capsys.readouterr().err


def test_cli_plugin_option_registers_for_listing(tmp_path, capsys, monkeypatch):
    (tmp_path / "listing_plugin.py").write_text(textwrap.dedent("""
        from bench.models import register_model
        from bench.models.small import mlp

        register_model("listing-plugin-mlp")(mlp)
    """))
    monkeypatch.chdir(tmp_path)
    assert main(["list", "models", "listing-*", "--plugin", "listing_plugin"]) == 0
    assert capsys.readouterr().out.startswith("listing-plugin-mlp")


FACTORY = """
import torch
from torch import nn


def build(hidden: int = 16) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
"""


class _Payload:
    """Unpickling this runs ``os.system``: the classic malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.fixture()
def external(tmp_path, monkeypatch, trained_mlp):
    (tmp_path / "external_models.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "external_models", raising=False)
    import external_models

    model = external_models.build(hidden=16)
    torch.manual_seed(0)
    (tmp_path / "protocol.yaml").write_text(PROTOCOL)
    return tmp_path, model


def test_external_checkpoint_is_evaluated_and_stored_as_external(external, capsys):
    root, model = external
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "mine.safetensors"))
    with torch.no_grad():  # other weights in the .pt file, so it is another model
        model[1].weight.mul_(0.5)
    torch.save(model.state_dict(), root / "mine.pt")
    work = ["--workdir", str(root / "work"), "--no-progress"]
    for weights, label in (("mine.safetensors", "ext-st"), ("mine.pt", "ext-pt")):
        assert main(["eval", "--model-factory", "external_models:build", "--weights", str(root / weights),
                     "--factory-kwargs", '{"hidden": 16}', "--label", label,
                     "--protocol", str(root / "protocol.yaml"), *work]) == 0
    capsys.readouterr()
    assert main(["leaderboard", "--protocol", "tiny-byo", "--format", "json", *work]) == 0
    board = {row["label"]: row for row in json.loads(capsys.readouterr().out)}
    assert board["ext-st"]["defense"] == "external" and board["ext-st"]["arch"] == "external"
    assert board["ext-pt"]["defense"] == "external" and board["ext-pt"]["benign"] > 0
    runs = _rows(root / "work" / "advarena.db", "select hparams from training_runs where defense = 'external'")
    assert {json.loads(h)["provenance"] for (h,) in runs} == {"external"}
    # the stored copy reloads through its factory, so audits work on it
    assert main(["audit", "ext-st", "--attacks", "fgsm", *work]) == 0
    assert "reproduce reproduced" in capsys.readouterr().out


def test_malicious_pickle_is_refused_without_running_it(external, capsys):
    root, _ = external
    marker = root / "pwned"
    with open(root / "evil.pt", "wb") as handle:
        pickle.dump({"weight": _Payload(marker)}, handle)
    code = main(["eval", "--model-factory", "external_models:build", "--weights", str(root / "evil.pt"),
                 "--protocol", str(root / "protocol.yaml"), "--workdir", str(root / "work"), "--no-progress"])
    assert code == 2 and not marker.exists()
    assert "refused to load" in capsys.readouterr().err
    assert not (root / "work" / "checkpoints").exists()


@pytest.mark.parametrize("factory,weights,expected", [
    ("external_models", "mine.pt", "expects MODULE:CALLABLE"),
    ("external_models:nope", "mine.pt", "has no attribute 'nope'"),
    ("external_models:build", "missing.pt", "does not exist"),
    ("external_models:build", "wrong.pt", "do not fit the model"),
])
def test_external_bad_inputs_are_one_message(external, capsys, factory, weights, expected):
    root, model = external
    torch.save(model.state_dict(), root / "mine.pt")
    torch.save({"other": torch.zeros(3)}, root / "wrong.pt")
    code = main(["eval", "--model-factory", factory, "--weights", str(root / weights),
                 "--protocol", str(root / "protocol.yaml"), "--workdir", str(root / "work"), "--no-progress"])
    assert code == 2 and expected in capsys.readouterr().err


def test_model_info_round_trips_through_import(tmp_path, capsys):
    (tmp_path / "protocol.yaml").write_text(PROTOCOL + "  - {id: autoattack, attack: apgd-ce, params: {eps: 0.1}}\n")
    (tmp_path / "suite.yaml").write_text(textwrap.dedent(f"""
        name: rt
        protocol: {tmp_path / 'protocol.yaml'}
        model: {{arch: mlp, params: {{hidden: [32]}}}}
        training: {{epochs: 2, batch_size: 64, lr: 0.005}}
        defenses: [{{defense: standard}}]
    """))
    ours = ["--workdir", str(tmp_path / "ours"), "--no-progress"]
    theirs = ["--workdir", str(tmp_path / "theirs"), "--no-progress"]
    assert main(["run", str(tmp_path / "suite.yaml"), *ours]) == 0
    # the protocol has no autoattack row: export says so, and takes another attack when told
    assert main(["export", "--protocol", "tiny-byo", "--out", str(tmp_path / "info"), *ours]) == 2
    assert "pass --attack" in capsys.readouterr().err
    assert main(["export", "--protocol", "tiny-byo", "--attack", "pgd", "--out", str(tmp_path / "info"), *ours]) == 0
    exported = tmp_path / "info" / "digits" / "Linf" / "standard.json"
    info = json.loads(exported.read_text())
    assert info["threat_model"] == "Linf" and info["eps"] == "0.1" and info["architecture"] == "mlp"
    assert "not AutoAttack" in info["footnote"] and info["additional_data"] is False
    capsys.readouterr()
    assert main(["leaderboard", "--protocol", "tiny-byo", "--format", "json", *ours]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert float(info["clean_acc"]) == pytest.approx(row["benign"], abs=0.005)
    assert float(info["autoattack_acc"]) == pytest.approx(row["pgd"], abs=0.005)

    assert main(["import-reference", str(tmp_path / "info"), *theirs]) == 0
    assert "reported, not re-evaluated" in capsys.readouterr().out
    assert main(["export", "--references", "--out", str(tmp_path / "again"), *theirs]) == 0
    again = tmp_path / "again" / "digits" / "Linf" / "standard.json"
    assert again.read_text() == exported.read_text()
    # re-importing replaces, it does not duplicate
    assert main(["import-reference", str(exported), *theirs]) == 0
    assert len(_rows(tmp_path / "theirs" / "advarena.db", "select id from reference_results")) == 1


@pytest.mark.parametrize("content,expected", [
    ("{not json", "not a readable JSON file"),
    ('{"clean_acc": "85"}', "unknown threat model"),
    ('{"threat_model": "Linf", "dataset": "cifar10", "clean_acc": "high"}', "must be a percentage"),
])
def test_bad_model_info_files_are_refused(tmp_path, capsys, content, expected):
    (tmp_path / "bad.json").write_text(content)
    assert main(["import-reference", str(tmp_path / "bad.json"), "--workdir", str(tmp_path / "w")]) == 2
    assert expected in capsys.readouterr().err


def test_installed_entry_points_are_discovered(tmp_path, monkeypatch):
    """A distribution advertising a module under ``advarena.models`` (a dist-info folder on the
    path, as pip installs it) is imported by discovery and its model registered."""
    from bench.models import MODELS
    from bench.plugins import discover_entry_points

    (tmp_path / "entry_point_plugin.py").write_text(textwrap.dedent("""
        from bench.models import register_model
        from bench.models.small import mlp

        register_model("entry-point-mlp")(mlp)
    """))
    info = tmp_path / "entry_point_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: entry-point-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[advarena.models]\nentry-point-mlp = entry_point_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "entry_point_plugin" in discover_entry_points()
    assert "entry-point-mlp" in MODELS
