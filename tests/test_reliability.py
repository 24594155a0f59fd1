"""Regression tests of defects a careful user met (each failed before its fix): another model's
numbers returned silently, a migration race, tracebacks on common input, claims left behind, and a
library printing to the user's terminal."""

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bench.cli import main
from bench.models import build_model

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = """
name: tiny-reliability
version: 1
dataset: digits
eval_subset: {size: 60, seed: 0}
batch_size: 60
attacks:
  - {id: fgsm, attack: fgsm, params: {eps: 0.1}}
"""
FACTORIES = '''
import torch
from torch import nn


class Quantized(nn.Module):
    """The same network behind an input quantization to 4 levels: another model."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 3) / 3)

    def state_dict(self, *args, **kwargs):
        return self.inner.state_dict(*args, **kwargs)

    def load_state_dict(self, state, strict=True, assign=False):
        return self.inner.load_state_dict(state, strict=strict, assign=assign)


def plain(width: int = 16) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))


def quantized(width: int = 16) -> nn.Module:
    return Quantized(plain(width))
'''


def _rows(db: Path, query: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(query).fetchall()


@pytest.fixture()
def factories(tmp_path, monkeypatch):
    """A module with two factories around the same weights, importable as ``reliability_factories``."""
    (tmp_path / "reliability_factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("reliability_factories", None)
    import reliability_factories

    torch.manual_seed(0)
    weights = tmp_path / "mlp.safetensors"
    save_file({k: v.contiguous() for k, v in reliability_factories.plain().state_dict().items()}, str(weights))
    (tmp_path / "protocol.yaml").write_text(PROTOCOL)
    yield weights
    sys.modules.pop("reliability_factories", None)


def test_two_factories_around_one_weights_file_are_two_models(factories, tmp_path, capsys):
    """Defect 1: the second model printed "already evaluated" and the store held only the first's
    numbers. The weights file of a checkpoint records its model, so the two are two checkpoints,
    two evaluations, two leaderboard rows, and the second can be audited by its label."""
    work, protocol = tmp_path / "work", str(tmp_path / "protocol.yaml")
    common = ["--weights", str(factories), "--protocol", protocol, "--workdir", str(work), "--no-progress"]
    assert main(["eval", "--model-factory", "reliability_factories:plain", "--label", "first", *common]) == 0
    assert main(["eval", "--model-factory", "reliability_factories:quantized", "--label", "second", *common]) == 0
    out = capsys.readouterr().out
    assert "first: evaluated" in out and "second: evaluated" in out and "already" not in out
    db = work / "advarena.db"
    assert len(_rows(db, "select id from checkpoints")) == 2
    assert sorted(r[0] for r in _rows(db, "select label from training_runs")) == ["first", "second"]
    accuracies = _rows(db, "select r.label, e.benign_accuracy from evaluations e join checkpoints c on "
                           "c.id = e.checkpoint_id join training_runs r on r.id = c.run_id order by r.label")
    assert [label for label, _ in accuracies] == ["first", "second"]
    assert main(["leaderboard", "--protocol", "tiny-reliability", "--workdir", str(work), "--format", "csv"]) == 0
    board = capsys.readouterr().out
    assert "first" in board and "second" in board
    assert main(["audit", "second", "--attacks", "fgsm", "--workdir", str(work), "--no-progress"]) == 0
    assert "second: reproduce reproduced" in capsys.readouterr().out
    # the same factory and weights again: the same model, nothing new
    assert main(["eval", "--model-factory", "reliability_factories:quantized", "--label", "second", *common]) == 0
    assert "second: already evaluated" in capsys.readouterr().out
    assert len(_rows(db, "select id from evaluations")) == 2


def test_factory_kwargs_are_part_of_the_identity_and_checked(factories, tmp_path, capsys):
    """Defects 1 and 5: other factory arguments are another model; arguments the factory does
    not take are one error line, not a TypeError traceback."""
    work, protocol = tmp_path / "work", str(tmp_path / "protocol.yaml")
    common = ["--weights", str(factories), "--protocol", protocol, "--workdir", str(work), "--no-progress",
              "--model-factory", "reliability_factories:plain"]
    assert main(["eval", *common, "--label", "a"]) == 0
    capsys.readouterr()
    assert main(["eval", *common, "--label", "b", "--factory-kwargs", '{"depth": 3}']) == 2
    err = capsys.readouterr().err
    assert err.count("advarena: error:") == 1 and "Traceback" not in err
    assert "--factory-kwargs" in err and "depth" in err and "width" in err
    assert len(_rows(work / "advarena.db", "select id from checkpoints")) == 1


def test_an_early_stopped_run_with_epoch_checkpoints_is_not_retrained(tmp_path, capsys):
    """A run whose early stop restored epoch k saves final weights identical to epoch k's
    checkpoint; that row (same weights) is the run's final checkpoint, so the next run finds the
    job trained instead of training it again every time."""
    (tmp_path / "collapsing.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        import torch.nn.functional as F
        from defenses import BatchOutput, Trainer, register_defense

        @dataclass
        class NoKnob:
            pass

        @register_defense("collapsing", paper="test")
        class Collapsing(Trainer):
            """Standard training that reports a collapse after its second epoch."""
            name = "collapsing"
            Params = NoKnob
            detects_collapse = True

            def batch_loss(self, model, x, y, ctx):
                logits = model(x)
                ctx.counter.add(len(y), backward=True)
                return BatchOutput(F.cross_entropy(logits, y), logits)

            def end_epoch(self, model, ctx):
                return {"collapsed": ctx.epoch == 3}
    '''))
    (tmp_path / "protocol.yaml").write_text(PROTOCOL)
    (tmp_path / "suite.yaml").write_text(textwrap.dedent(f"""
        name: collapsing
        protocol: {tmp_path / 'protocol.yaml'}
        plugins: [collapsing]
        model: {{arch: mlp, params: {{hidden: [16]}}}}
        training: {{epochs: 4, batch_size: 64}}
        save_every_epoch: true
        defenses:
          - defense: collapsing
    """))
    work = tmp_path / "work"
    from bench import plugins

    saved = list(plugins.LOADED), list(plugins.SEARCH_PATH)
    try:
        assert main(["train", str(tmp_path / "suite.yaml"), "--workdir", str(work), "--no-progress"]) == 0
        assert main(["train", str(tmp_path / "suite.yaml"), "--workdir", str(work), "--no-progress"]) == 0
    finally:
        plugins.LOADED[:], plugins.SEARCH_PATH[:] = saved
        sys.modules.pop("collapsing", None)
    db = work / "advarena.db"
    assert _rows(db, "select status from training_runs") == [("finished",)]
    # epochs 1-3 saved; the collapse at 3 restored epoch 2, whose row is now the final one
    assert sorted(_rows(db, "select epoch, final from checkpoints")) == [(1, 0), (2, 1), (3, 0)]


def _open_store_at(url: str, start: float) -> subprocess.Popen:
    code = ("import sys, time\n"
            "while time.time() < float(sys.argv[2]): time.sleep(0.001)\n"
            "from results.store import Store\nStore(sys.argv[1])\n")
    return subprocess.Popen([sys.executable, "-c", code, url, str(start)], stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_processes_creating_one_store_at_once_take_turns(backend, tmp_path, request):
    """Defect 2: two processes opening a new store at the same moment raced on the schema
    ("table alembic_version already exists"). Four at once, three rounds, every one succeeds."""
    for round_ in range(3):
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / f'race-{round_}.db'}"
        else:
            url = request.getfixturevalue("postgres_database") if round_ == 0 else _new_database(request)
        start = time.time() + 3.0   # all four have imported everything by then
        workers = [_open_store_at(url, start) for _ in range(4)]
        errors = [w.communicate(timeout=120)[1] for w in workers]
        assert [w.returncode for w in workers] == [0] * 4, errors


def _new_database(request) -> str:
    import uuid

    import psycopg

    server = request.getfixturevalue("postgres_server")
    name = f"advarena_race_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.rsplit("/", 1)[0] + "/" + name


def test_two_runs_on_a_new_work_directory_both_complete(tmp_path):
    """Defect 2 end to end: two ``advarena run`` processes started at once on a new work
    directory both exit 0 and the store holds every row once."""
    (tmp_path / "protocol.yaml").write_text(PROTOCOL)
    (tmp_path / "suite.yaml").write_text(textwrap.dedent(f"""
        name: race
        protocol: {tmp_path / 'protocol.yaml'}
        model: {{arch: mlp, params: {{hidden: [16]}}}}
        training: {{epochs: 1, batch_size: 64}}
        defenses:
          - defense: standard
    """))
    work = tmp_path / "work"
    command = [sys.executable, "-m", "bench.cli", "run", str(tmp_path / "suite.yaml"), "--workdir", str(work),
               "--no-progress", "--threads", "1"]
    runs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    db = work / "advarena.db"
    assert len(_rows(db, "select id from training_runs")) == 1
    assert len(_rows(db, "select id from evaluations")) == 1
    assert _rows(db, "select key from job_claims") == []


@pytest.mark.parametrize("training,message", [
    ("{lr: 1e-3, epochs: 1, batch_size: 64}", None),
    ("{lr: two, epochs: 1}", "training: lr: expected a number, got 'two'"),
    ("{epochs: two}", "training: epochs: expected an integer, got 'two'"),
    ("{epochs: 1.5}", "training: epochs: expected an integer, got 1.5"),
    ("{lr: .nan}", "training: lr: expected a finite number, got nan"),
    ("{lr: -1e-3}", "training: lr: expected a number > 0, got -0.001"),
    ("{optimizer: adamw}", "training: optimizer: Input should be 'adam' or 'sgd', got 'adamw'"),
])
def test_suite_numbers_are_read_as_numbers_and_wrong_types_are_one_line(tmp_path, capsys, training, message):
    """Defect 3: ``lr: 1e-3`` was the string "1e-3" (YAML 1.1) and a TypeError traceback;
    ``epochs: two`` likewise. Now 1e-3 is the number and each wrong type is one error line naming
    the field, what was expected and what was given."""
    (tmp_path / "protocol.yaml").write_text(PROTOCOL)
    (tmp_path / "suite.yaml").write_text(textwrap.dedent(f"""
        name: numbers
        protocol: {tmp_path / 'protocol.yaml'}
        model: {{arch: mlp, params: {{hidden: [16]}}}}
        training: {training}
        defenses:
          - defense: standard
          - defense: pgd-at
            hparams: {{eps: 1e-1, steps: 2, step_size: 5e-2}}
    """))
    work = tmp_path / "work"
    status = main(["train", str(tmp_path / "suite.yaml"), "--workdir", str(work), "--no-progress"])
    err = capsys.readouterr().err
    if message is None:
        assert status == 0
        hparams = [json.loads(h) for (h,) in _rows(work / "advarena.db", "select hparams from training_runs")]
        assert all(h["lr"] == 0.001 for h in hparams) and {h.get("eps") for h in hparams} == {None, 0.1}
        return
    assert status == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("advarena: error:") and message in lines[0], err
    assert not work.exists()


@pytest.mark.parametrize("hparams,message", [
    ("{eps: two}", "defense 'pgd-at': eps: expected a number, got 'two'"),
    ("{steps: 2.5}", "defense 'pgd-at': steps: expected an integer, got 2.5"),
    ("{random_start: maybe}", "defense 'pgd-at': random_start: expected true or false, got 'maybe'"),
])
def test_defense_hyper_parameters_of_the_wrong_type_are_one_line(tmp_path, capsys, hparams, message):
    (tmp_path / "suite.yaml").write_text(textwrap.dedent(f"""
        name: hparams
        defenses:
          - defense: pgd-at
            hparams: {hparams}
    """))
    assert main(["train", str(tmp_path / "suite.yaml"), "--workdir", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("advarena: error:") and message in err, err


def _checkpoint(tmp_path: Path, name: str, corrupt: bool) -> Path:
    """A digits MLP checkpoint folder; ``corrupt``: its weights file truncated, with a meta.json
    that records the truncated file's sha256 (as a tool writing such a file would)."""
    from bench.checkpoints import file_sha256, save_checkpoint

    model = build_model("mlp", (1, 8, 8), 10, [0.3], [0.37], hidden=(16,))
    meta = {"arch": "mlp", "arch_params": {"hidden": [16]}, "input_shape": [1, 8, 8], "num_classes": 10,
            "mean": [0.3], "std": [0.37], "dataset": {"name": "digits"}, "defense": "standard", "hparams": {},
            "seed": 0, "epoch": 1}
    saved = save_checkpoint(tmp_path / name, model, meta)
    if corrupt:
        weights = saved.path / "weights.safetensors"
        weights.write_bytes(weights.read_bytes()[:64])
        edited = {**json.loads((saved.path / "meta.json").read_text()), "sha256": file_sha256(weights)}
        (saved.path / "meta.json").write_text(json.dumps(edited))
    return saved.path


@pytest.mark.parametrize("command", ["eval", "eval --source", "perf"])
def test_a_corrupt_weights_file_is_one_checkpoint_error(tmp_path, capsys, command):
    """Defect 4: a truncated weights file whose sha256 matches its meta.json gave a
    SafetensorError traceback from eval, eval --source and perf --checkpoint."""
    corrupt = _checkpoint(tmp_path, "corrupt", corrupt=True)
    (tmp_path / "protocol.yaml").write_text(PROTOCOL)
    work = tmp_path / "work"
    if command == "eval":
        argv = ["eval", str(corrupt), "--protocol", str(tmp_path / "protocol.yaml")]
    elif command == "eval --source":
        argv = ["eval", str(_checkpoint(tmp_path, "good", corrupt=False)), "--protocol",
                str(tmp_path / "protocol.yaml"), "--source", f"surrogate={corrupt}"]
    else:
        argv = ["perf", "--checkpoint", str(corrupt), "--n", "10", "--only", "FGSM"]
    os.environ.update({"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "4294967296"})
    assert main([*argv, "--workdir", str(work), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "advarena: error:" in err and "not a readable safetensors file" in err, err


def test_a_killed_worker_leaves_no_claim_on_a_finished_job(tmp_path):
    """Defect 6: a run killed between committing a job's result and releasing its claim left the
    claim for ever. The claim is now released in the transaction that commits the result: kill
    the process right after the commit, and no claim is left."""
    (tmp_path / "protocol.yaml").write_text(PROTOCOL)
    (tmp_path / "suite.yaml").write_text(textwrap.dedent(f"""
        name: killed
        protocol: {tmp_path / 'protocol.yaml'}
        model: {{arch: mlp, params: {{hidden: [16]}}}}
        training: {{epochs: 1, batch_size: 64}}
        defenses:
          - defense: standard
    """))
    work = tmp_path / "work"
    code = textwrap.dedent(f"""
        import os, sys
        from results.store import Store
        save = Store.save_evaluation
        def save_then_die(self, *args, **kwargs):
            save(self, *args, **kwargs)
            os._exit(9)          # killed after the commit, before the claim's own release
        Store.save_evaluation = save_then_die
        from bench.cli import main
        sys.exit(main(["run", {str(tmp_path / 'suite.yaml')!r}, "--workdir", {str(work)!r}, "--no-progress"]))
    """)
    died = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert died.returncode == 9, died.stderr
    db = work / "advarena.db"
    assert len(_rows(db, "select id from evaluations")) == 1
    assert _rows(db, "select key, kind from job_claims") == []


def test_a_claim_on_a_finished_job_is_void(tmp_path):
    """A claim left by an older version on a job whose results are stored is deleted by the next
    worker that meets it, instead of being kept for ever."""
    from bench.claims import claim_job
    from results.store import Store

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.try_claim("job", "evaluate", "job", "elsewhere:1:dead", lambda held: False)
    with claim_job(store, "job", "evaluate", "job", lambda: True) as claim:
        assert not claim
    assert store.claims() == []


def test_no_library_output_reaches_the_terminal(tmp_path):
    """Defect 8: ``advarena run`` printed pyautoattack's "setting parameters for standard version".
    Every line of a run's output is advarena's own."""
    (tmp_path / "protocol.yaml").write_text(PROTOCOL.replace(
        "  - {id: fgsm, attack: fgsm, params: {eps: 0.1}}",
        "  - {id: apgd, attack: apgd-ce, params: {eps: 0.1, batch_size: 60}}"))
    (tmp_path / "suite.yaml").write_text(textwrap.dedent(f"""
        name: quiet
        protocol: {tmp_path / 'protocol.yaml'}
        model: {{arch: mlp, params: {{hidden: [16]}}}}
        training: {{epochs: 1, batch_size: 64}}
        defenses:
          - defense: standard
    """))
    run = subprocess.run([sys.executable, "-m", "bench.cli", "run", str(tmp_path / "suite.yaml"), "--workdir",
                          str(tmp_path / "work"), "--no-progress", "--threads", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "setting parameters" not in run.stdout + run.stderr
    ours = ("standard:", "Leaderboard", "label", "0 ", "Reported")
    foreign = [line for line in run.stderr.splitlines() if line.strip() and not line.startswith(ours)]
    assert foreign == [], foreign
