"""Bad input, table-driven: each case is one clear message and exit code 2, and leaves the store
and the work directory exactly as they were."""

import json
import pickle
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from attacks import ATTACKS
from bench.cli import main
from bench.errors import ConfigError

PROTOCOL = """
name: bad-input
version: 1
dataset: {dataset}
eval_subset: {{size: 60, seed: 0}}
batch_size: 60
attacks:
  - {{id: fgsm, attack: {attack}, params: {{eps: 0.1}}}}
"""
SUITE = """
name: bad-input
protocol: {protocol}
model: {{arch: {arch}, params: {{hidden: [16]}}}}
training: {{epochs: 1, batch_size: 64}}
defenses:
  - defense: {defense}
    hparams: {hparams}
"""
GOOD = {"dataset": "digits", "attack": "fgsm", "arch": "mlp", "defense": "standard", "hparams": "{}"}
FACTORIES = """
from torch import nn

def rgb32() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
"""


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def write_suite(root: Path, name: str, **changes: str) -> Path:
    fields = {**GOOD, **changes}
    protocol = root / f"{name}-protocol.yaml"
    protocol.write_text(PROTOCOL.format(**fields))
    suite = root / f"{name}.yaml"
    suite.write_text(SUITE.format(protocol=protocol, **fields))
    return suite


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A work directory holding one finished run and evaluation, plus the bad files the cases use."""
    root = tmp_path_factory.mktemp("bad-input")
    work = root / "work"
    assert main(["run", str(write_suite(root, "good")), "--workdir", str(work), "--no-progress"]) == 0
    checkpoint = next((work / "checkpoints").glob("standard-*/final"))
    other_arch = root / "other-arch"   # a copy whose meta.json names another architecture
    shutil.copytree(checkpoint, other_arch)
    meta = json.loads((other_arch / "meta.json").read_text())
    (other_arch / "meta.json").write_text(json.dumps({**meta, "arch": "lenet", "arch_params": {}}))
    (root / "mnist-missing").mkdir()
    corrupt = root / "mnist-corrupt"
    corrupt.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (corrupt / name).write_bytes(b"\x00\x00\x08\x03not an idx file")
    (root / "bad_factories.py").write_text(FACTORIES)
    sys.path.insert(0, str(root))
    from bad_factories import rgb32

    save_file({k: v.contiguous() for k, v in rgb32().state_dict().items()}, str(root / "rgb32.safetensors"))
    with open(root / "evil.pt", "wb") as handle:
        pickle.dump({"weight": _Payload(root / "pwned")}, handle)
    (root / "broken.yaml").write_text("name: broken\ndefenses: [standard\n")
    yield root, work
    sys.path.remove(str(root))


def snapshot(work: Path) -> tuple:
    """Every row of every table, and every file of the work directory but SQLite's WAL files."""
    with sqlite3.connect(work / "advarena.db") as conn:
        rows = tuple(conn.iterdump())
    files = tuple(sorted((str(p.relative_to(work)), p.stat().st_size) for p in work.rglob("*")
                         if p.is_file() and not p.name.startswith("advarena.db")))
    return rows, files


def _eval_external(root, factory, weights):
    return ["eval", "--model-factory", factory, "--weights", str(root / weights), "--protocol",
            str(root / "good-protocol.yaml")]


CASES = {
    "unknown defense": (lambda root: ["run", str(write_suite(root, "c1", defense="pgd-ta"))],
                        "unknown defense 'pgd-ta'; did you mean 'pgd-at'"),
    "unknown attack": (lambda root: ["run", str(write_suite(root, "c2", attack="fgms"))],
                       "unknown attack 'fgms'; did you mean 'fgsm'"),
    "unknown model": (lambda root: ["run", str(write_suite(root, "c3", arch="mlpp"))],
                      "unknown model 'mlpp'; did you mean 'mlp'"),
    "unknown dataset": (lambda root: ["run", str(write_suite(root, "c4", dataset="digitz"))],
                        "unknown dataset 'digitz'; did you mean 'digits'"),
    "unknown hyper-parameter": (lambda root: ["run", str(write_suite(root, "c5", hparams="{epochz: 2}"))],
                                "unknown hyper-parameter(s) ['epochz']; did you mean 'epochs'?"),
    "unknown suite": (lambda root: ["run", "defualt"], "did you mean 'default'"),
    "malformed YAML": (lambda root: ["run", str(root / "broken.yaml")], "broken.yaml: malformed YAML"),
    "wrong input shape": (lambda root: _eval_external(root, "bad_factories:rgb32", "rgb32.safetensors"),
                          "model from 'bad_factories:rgb32' fails on digits images of shape (2, 1, 8, 8)"),
    "checkpoint for another architecture": (
        lambda root: ["eval", str(root / "other-arch"), "--protocol", str(root / "good-protocol.yaml")],
        "meta.json describes the model {'arch': 'lenet'"),
    "missing dataset files": (
        lambda root: ["run", str(write_suite(root, "c6", dataset="mnist")), "--data-root",
                      str(root / "mnist-missing")], "expected files train-images-idx3-ubyte"),
    "corrupt dataset files": (
        lambda root: ["run", str(write_suite(root, "c7", dataset="mnist")), "--data-root",
                      str(root / "mnist-corrupt")], "mnist-corrupt/train-images-idx3-ubyte: "),
    "unreachable database": (
        lambda root: ["run", str(root / "good.yaml"), "--db", "postgresql://nobody@127.0.0.1:1/advarena"],
        "cannot open database 'postgresql://nobody@127.0.0.1:1/advarena'"),
    "pickled code in a foreign checkpoint": (lambda root: _eval_external(root, "bad_factories:rgb32", "evil.pt"),
                                             "refused to load"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_message_and_writes_nothing(workspace, capsys, case):
    root, work = workspace
    arguments, expected = CASES[case]
    before = snapshot(work)
    capsys.readouterr()
    code = main([*arguments(root), "--workdir", str(work), "--no-progress"])
    err = capsys.readouterr().err
    messages = [line for line in err.splitlines() if line.startswith("advarena: error:")]
    assert code == 2, err
    assert len(messages) == 1 and expected in err[err.index("advarena: error:"):], err
    assert "Traceback" not in err
    assert snapshot(work) == before
    assert not (root / "pwned").exists()


@pytest.mark.parametrize("x, y, expected", [
    (torch.full((4, 1, 8, 8), 2.0), torch.zeros(4, dtype=torch.int64), r"pixels must lie in \[0, 1\], got \[2, 2\]"),
    (torch.full((4, 1, 8, 8), -0.5), torch.zeros(4, dtype=torch.int64), r"pixels must lie in \[0, 1\]"),
    (torch.rand(4, 1, 8, 8), torch.zeros(3, dtype=torch.int64), r"labels must be int64 of shape \(4,\)"),
    (torch.rand(4, 1, 8, 8), torch.zeros(4), r"labels must be int64"),
    (torch.randint(0, 255, (4, 1, 8, 8)), torch.zeros(4, dtype=torch.int64), "images must be a floating tensor"),
])
@pytest.mark.parametrize("attack", ["fgsm", "pgd", "deepfool"])
def test_attacks_refuse_bad_batches(trained_mlp, attack, x, y, expected):
    with pytest.raises(ConfigError, match=expected):
        ATTACKS.create(attack)(trained_mlp, x, y)
