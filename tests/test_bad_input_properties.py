"""Property-based bad input (hypothesis): suites, protocols and command lines with wrong types,
unknown keys, missing fields, extreme and non-finite values. Whatever is generated, ``advarena``
either exits 0 with a result, or exits 2 with exactly one ``advarena: error:`` line and no
traceback, and then the store and the work directory are exactly as they were.

The cases are derandomized (the same ones on every run) and sized to run in well under two
minutes in CI: a valid generated suite is only validated (``advarena validate``), never trained."""

from __future__ import annotations

import copy
import hashlib
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.cli import main

#: Cases per test (3 tests: 540 in CI). ADVARENA_PROPERTY_EXAMPLES=N runs N random (not
#: derandomized) cases per test, to search further.
EXAMPLES = os.environ.get("ADVARENA_PROPERTY_EXAMPLES")
SETTINGS = settings(max_examples=int(EXAMPLES or 180), deadline=None, derandomize=EXAMPLES is None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])

PROTOCOL = {"name": "props", "version": 1, "dataset": "digits", "eval_subset": {"size": 40, "seed": 0},
            "batch_size": 40,
            "attacks": [{"id": "fgsm", "attack": "fgsm", "params": {"eps": 0.1}},
                        {"id": "pgd", "attack": "pgd", "params": {"eps": 0.1, "steps": 3, "step_size": 0.05},
                         "eps_grid": [0.05]}]}
SUITE = {"name": "props", "model": {"arch": "mlp", "params": {"hidden": [16]}},
         "training": {"epochs": 1, "batch_size": 64, "lr": 0.001},
         "defenses": [{"defense": "standard"},
                      {"defense": "pgd-at", "hparams": {"eps": 0.1, "steps": 2, "step_size": 0.05}}],
         "surrogates": {"surrogate": {"defense": "standard", "seed": 1}}}

SUITE_PATHS = [("name",), ("protocol",), ("model",), ("model", "arch"), ("model", "params"),
               ("model", "params", "hidden"), ("training",), ("training", "epochs"), ("training", "lr"),
               ("training", "batch_size"), ("training", "optimizer"), ("training", "lr_schedule"),
               ("training", "lr_milestones"), ("training", "momentum"), ("seeds",), ("defenses",),
               ("defenses", 0), ("defenses", 0, "defense"), ("defenses", 1, "hparams"),
               ("defenses", 1, "hparams", "eps"), ("defenses", 1, "hparams", "steps"),
               ("defenses", 1, "hparams", "random_start"), ("defenses", 1, "label"), ("defenses", 1, "seeds"),
               ("defenses", 1, "init_from"), ("defenses", 1, "model"), ("surrogates",),
               ("surrogates", "surrogate", "seed"), ("save_every_epoch",), ("evaluate_every_epoch",),
               ("plugins",), ("attacks",)]
PROTOCOL_PATHS = [("name",), ("version",), ("dataset",), ("eval_subset",), ("eval_subset", "size"),
                  ("eval_subset", "seed"), ("batch_size",), ("attacks",), ("attacks", 0), ("attacks", 0, "id"),
                  ("attacks", 0, "attack"), ("attacks", 0, "params"), ("attacks", 0, "params", "eps"),
                  ("attacks", 1, "params", "steps"), ("attacks", 1, "params", "step_size"),
                  ("attacks", 1, "params", "norm"), ("attacks", 1, "params", "restarts"),
                  ("attacks", 1, "params", "loss"), ("attacks", 1, "eps_grid"), ("attacks", 1, "source"),
                  ("description",)]

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-3, max_value=3), st.sampled_from([0, -1, 10 ** 30, 2 ** 63, -(10 ** 12)]),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from(["", "two", "1e-3", "nan", "-inf", "linf", "l2", "standard", "pgd", "digits", "x" * 200,
                     "ünïcødé", "../../etc", "0.1", "  ", "null"]),
    st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)


def _mutate(document: dict[str, Any], paths: list[tuple], draw) -> dict[str, Any]:
    """One to three edits of ``document``: set a known field to an arbitrary value, delete it, or
    add an unknown key beside it."""
    doc = copy.deepcopy(document)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(paths))
        parent = doc
        for part in path[:-1]:
            try:
                parent = parent[part]
            except (KeyError, IndexError, TypeError):
                parent = None
                break
        if not isinstance(parent, (dict, list)):
            continue
        action = draw(st.sampled_from(["set", "set", "delete", "unknown"]))
        last = path[-1]
        if isinstance(parent, list) and not (isinstance(last, int) and last < len(parent)):
            continue
        if action == "set":
            parent[last] = draw(values)
        elif action == "delete":
            if isinstance(parent, list) or last in parent:
                del parent[last]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(values)
    return doc


@st.composite
def documents(draw, base: dict[str, Any], paths: list[tuple]) -> str:
    """YAML text: a mutated valid document, or now and then raw text."""
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        return draw(st.one_of(st.text(max_size=60), st.sampled_from(["[1, 2", "- a\n- b", "null", "{a: [}"])))
    return yaml.safe_dump(_mutate(base, paths, draw), allow_unicode=True)


def snapshot(work: Path) -> dict[str, Any]:
    """Every file of the work directory (sha256; SQLite's WAL and lock side files excepted) and
    the store's rows as a logical dump."""
    if not work.exists():
        return {"exists": False}
    files = {}
    for path in sorted(work.rglob("*")):
        if path.is_file() and not path.name.endswith(("-wal", "-shm", ".lock")):
            files[str(path.relative_to(work))] = (hashlib.sha256(path.read_bytes()).hexdigest()
                                                  if path.suffix != ".db" else "database")
    rows = []
    if (work / "advarena.db").is_file():
        with sqlite3.connect(work / "advarena.db") as conn:
            rows = list(conn.iterdump())
    return {"exists": True, "files": files, "rows": rows}


def check_outcome(argv: list[str], capsys, work: Path) -> int:
    """Run ``advarena argv`` in-process and check the property; returns the exit status."""
    before = snapshot(work)
    status = main(argv)
    out, err = capsys.readouterr()
    assert status in (0, 2), (argv, status, err[-2000:])
    assert "Traceback" not in err, (argv, err[-2000:])
    if status == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("advarena: error:")]
        assert len(errors) == 1 and errors[0] == lines[-1], (argv, err)
        assert snapshot(work) == before, argv
    return status


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A work directory holding one finished run and evaluation (digits, a 16-unit MLP)."""
    root = tmp_path_factory.mktemp("props")
    (root / "protocol.yaml").write_text(yaml.safe_dump(PROTOCOL))
    suite = {**SUITE, "protocol": str(root / "protocol.yaml"), "surrogates": {}}
    (root / "suite.yaml").write_text(yaml.safe_dump(suite))
    assert main(["run", str(root / "suite.yaml"), "--workdir", str(root / "work"), "--no-progress", "-q"]) == 0
    return root


@SETTINGS
@given(text=documents(SUITE, SUITE_PATHS), fresh=st.booleans())
def test_generated_suites(workspace, tmp_path_factory, capsys, text, fresh):
    folder = tmp_path_factory.mktemp("suite")
    suite = folder / "suite.yaml"
    suite.write_text(text.replace("PROTOCOL_PATH", str(workspace / "protocol.yaml")))
    work = folder / "work" if fresh else workspace / "work"
    if check_outcome(["validate", str(suite)], capsys, work) == 2:
        # what does not validate does not run either, and writes nothing
        assert check_outcome(["train", str(suite), "--workdir", str(work), "--no-progress"], capsys, work) == 2


@SETTINGS
@given(text=documents(PROTOCOL, PROTOCOL_PATHS))
def test_generated_protocols(workspace, tmp_path_factory, capsys, text):
    folder = tmp_path_factory.mktemp("protocol")
    protocol = folder / "protocol.yaml"
    protocol.write_text(text)
    work = workspace / "work"
    if check_outcome(["validate", str(protocol)], capsys, work) == 2:
        checkpoint = next((work / "checkpoints").glob("standard-*/final"))
        assert check_outcome(["eval", str(checkpoint), "--protocol", str(protocol), "--workdir", str(work),
                              "--no-progress"], capsys, work) == 2


ARGUMENTS = st.one_of(st.text(max_size=10), st.sampled_from(
    ["nan", "inf", "-1", "0", "1e309", "101", "50", "0.5", "props", "quick", "fgsm", "pgd", "*", "csv", "json",
     "table", "standard", "surrogate=nowhere", "A=B", "=", "{}", "[]", '{"depth": 3}', "not json", "cuda", "cpu",
     "sqlite:///", "postgresql://nobody@127.0.0.1:1/x", "mnist-cnn=standard", "../x"]))


@st.composite
def command_lines(draw) -> list[str]:
    """A command with options drawn from its own vocabulary and arbitrary values."""
    command = draw(st.sampled_from(["leaderboard", "report", "export", "audit", "list", "eval", "import-reference",
                                    "validate", "run", "train", "perf", "compare", "nonsense"]))
    options = {"leaderboard": ["--protocol", "--format", "--wide"],
               "compare": ["--protocol", "--attack"],
               "report": ["--protocol", "--target-accuracy", "--match-attack", "--tolerance", "--eps-ref", "--out"],
               "export": ["--protocol", "--attack", "--out"],
               "audit": ["--attacks", "--masking-tolerance", "--protocol"],
               "list": [], "eval": ["--protocol", "--source", "--factory-kwargs", "--model-factory", "--weights",
                                    "--label"],
               "import-reference": [], "validate": [], "run": ["--protocol", "--executor", "--ray-cpus"],
               "train": ["--executor", "--cpus-per-task"], "perf": ["--n", "--batch-size", "--only", "--model"],
               "nonsense": []}[command]
    argv = [command]
    positional = {"list": st.sampled_from(["attacks", "defenses", "models", "datasets", "protocols", "suites",
                                           "things"]),
                  "audit": st.sampled_from(["standard", "nobody", "--all"]),
                  "import-reference": ARGUMENTS, "validate": ARGUMENTS, "run": ARGUMENTS, "train": ARGUMENTS,
                  "eval": ARGUMENTS}.get(command)
    if positional is not None:
        argv.append(draw(positional))
    if command == "compare":
        argv += [draw(st.sampled_from(["standard", "pgd-at", "nobody"])), draw(ARGUMENTS)]
    for option in draw(st.lists(st.sampled_from(options + ["--threads", "--device", "--db", "--bogus"]),
                                max_size=3, unique=True)):
        argv += [option, draw(ARGUMENTS)]
    if command in ("run", "train", "perf", "eval"):
        # keep generated commands that would start real work from doing so: they must fail early
        argv += ["--threads", "0"] if draw(st.booleans()) else ["--device", "tpu"]
    return argv


@SETTINGS
@given(argv=command_lines(), fresh=st.booleans())
def test_generated_command_lines(workspace, tmp_path_factory, capsys, argv, fresh):
    work = tmp_path_factory.mktemp("cli") / "work" if fresh else workspace / "work"
    if "--out" in argv:  # outputs go inside the work directory (they are the result of a success)
        argv[argv.index("--out") + 1] = str(work / "out")
    check_outcome([*argv, "--workdir", str(work), "--no-progress"], capsys, work)
