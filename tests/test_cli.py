"""End to end through the CLI: a tiny suite on the digits, stored, re-run, evaluated by folder."""

import sqlite3

import pytest

from bench.cli import build_parser, main

PROTOCOL = """
name: tiny
version: 1
dataset: digits
eval_subset: {size: 120, seed: 0}
batch_size: 60
attacks:
  - {id: fgsm, attack: fgsm, params: {eps: 0.1}}
  - {id: pgd, attack: pgd, params: {eps: 0.1, steps: 5, step_size: 0.03}}
  - id: transfer
    attack: transfer
    source: surrogate
    params: {base: pgd, base_params: {eps: 0.1, steps: 5, step_size: 0.03}}
"""
SUITE = """
name: tiny
protocol: {protocol}
model: {{arch: mlp, params: {{hidden: [32]}}}}
training: {{epochs: 3, batch_size: 64, lr: 0.005}}
defenses:
  - defense: standard
  - defense: pgd-at
    hparams: {{eps: 0.1, steps: 3, step_size: 0.04}}
surrogates:
  surrogate: {{defense: standard, seed: 1}}
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    (root / "protocol.yaml").write_text(PROTOCOL)
    (root / "suite.yaml").write_text(SUITE.format(protocol=root / "protocol.yaml"))
    args = [str(root / "suite.yaml"), "--workdir", str(root / "work"), "--no-progress"]
    assert main(["run", *args]) == 0
    return root, args


def test_run_stores_one_row_per_checkpoint_attack_image(tiny_run, capsys):
    root, _ = tiny_run
    db = sqlite3.connect(root / "work" / "advarena.db")
    rows = db.execute("select count(*) from example_results").fetchone()[0]
    evaluations = db.execute("select count(*) from evaluations").fetchone()[0]
    distinct = db.execute("select count(distinct attack_result_id || '-' || example_index) "
                          "from example_results").fetchone()[0]
    # three attacks plus the per-example worst case over the Linf-0.1 threat model
    assert evaluations == 2 and rows == distinct == 2 * 4 * 120
    runs = db.execute("select label, status from training_runs order by id").fetchall()
    assert runs == [("surrogate", "finished"), ("standard", "finished"), ("pgd-at", "finished")]
    assert db.execute("select count(*) from epochs").fetchone()[0] == 9


def test_worst_case_is_any_attack_succeeded(tiny_run):
    root, _ = tiny_run
    db = sqlite3.connect(root / "work" / "advarena.db")
    per_point = db.execute(
        "select a.evaluation_id, e.example_index, a.attack_id, e.success from example_results e "
        "join attack_results a on a.id = e.attack_result_id").fetchall()
    any_success, worst = {}, {}
    for evaluation, index, attack, success in per_point:
        key = (evaluation, index)
        if attack == "worst-case-linf-0.1":
            worst[key] = bool(success)
        else:
            any_success[key] = any_success.get(key, False) or bool(success)
    assert worst and worst == any_success


def test_rerun_skips_every_job_and_prints_the_same_table(tiny_run, capsys):
    root, args = tiny_run
    assert main(["leaderboard", "--protocol", "tiny", "--workdir", str(root / "work")]) == 0
    first = capsys.readouterr().out
    assert main(["run", *args]) == 0
    captured = capsys.readouterr()
    assert captured.out == first
    assert "worst linf 0.1" in first and "pgd-at" in first and "transfer" not in first
    assert max(map(len, first.splitlines())) <= 120
    assert main(["leaderboard", "--protocol", "tiny", "--wide", "--workdir", str(root / "work")]) == 0
    assert "transfer (black-box)" in capsys.readouterr().out
    assert main(["leaderboard", "--protocol", "tiny", "--format", "markdown", "--workdir", str(root / "work")]) == 0
    markdown = capsys.readouterr().out.splitlines()
    assert markdown[0].startswith("| label") and set(markdown[1]) <= set("|-: ") and len(markdown) == 4
    db = sqlite3.connect(root / "work" / "advarena.db")
    assert db.execute("select count(*) from training_runs").fetchone()[0] == 3
    assert db.execute("select count(*) from evaluations").fetchone()[0] == 2


def test_eval_of_a_stored_checkpoint_is_skipped(tiny_run, capsys):
    root, _ = tiny_run
    checkpoint = next((root / "work" / "checkpoints").glob("standard-*/final"))
    surrogate = next((root / "work" / "checkpoints").glob("surrogate-*/final"))
    code = main(["eval", str(checkpoint), "--protocol", str(root / "protocol.yaml"),
                 "--source", f"surrogate={surrogate}", "--workdir", str(root / "work"), "--no-progress"])
    assert code == 0 and "already evaluated" in capsys.readouterr().out


def test_json_leaderboard(tiny_run, capsys):
    import json

    root, _ = tiny_run
    main(["leaderboard", "--protocol", "tiny", "--format", "json", "--workdir", str(root / "work")])
    rows = json.loads(capsys.readouterr().out)
    standard = next(r for r in rows if r["label"] == "standard")
    assert standard["benign"] > 80 and standard["pgd"] < standard["benign"]
    for value in (standard["benign"], standard["pgd"], standard["worst-case-linf-0.1"]):
        assert value == round(value * 120 / 100) * 100 / 120  # k * 100 / n from the exact count k
    main(["leaderboard", "--protocol", "tiny", "--format", "csv", "--workdir", str(root / "work")])
    csv = capsys.readouterr().out
    assert csv.startswith("label,defense,arch,seed,benign,") and "9999" not in csv and "0000000" not in csv


def test_the_same_run_on_postgresql_gives_the_same_leaderboard(tiny_run, postgres_database, tmp_path, capsys):
    """``--db postgresql://...`` end to end: run, leaderboard, report and audit on PostgreSQL, with
    the numbers the SQLite run stored."""
    import json

    root, args = tiny_run
    on_postgres = ["--db", postgres_database, "--workdir", str(tmp_path)]
    assert main(["run", args[0], *on_postgres, "--no-progress"]) == 0
    capsys.readouterr()
    boards = []
    for where in (["--workdir", str(root / "work")], on_postgres):
        assert main(["leaderboard", "--protocol", "tiny", "--format", "json", *where]) == 0
        boards.append([{k: v for k, v in row.items() if k != "sec/epoch"}
                       for row in json.loads(capsys.readouterr().out)])
    assert boards[0] == boards[1] and len(boards[0]) == 2
    assert main(["report", "--protocol", "tiny", *on_postgres]) == 0
    assert main(["audit", "standard", "--attacks", "fgsm", *on_postgres]) == 0
    assert "reproduce reproduced" in capsys.readouterr().out


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["run", "no-such-suite", "--workdir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("advarena: error: no shipped suite named")


@pytest.mark.parametrize("command", ["run", "train", "eval", "leaderboard", "list", "perf", "export",
                                     "import-reference", "report", "audit", "compare"])
def test_every_option_has_help(command):
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        assert action.help, f"{command} {action.option_strings or action.dest} lacks help"


def test_every_help_page_renders(capsys):
    """``advarena --help`` and each command's ``--help`` print and exit 0 (a bare '%' in a help
    string once made argparse raise instead of printing the top-level help)."""
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for argv in [[], *([name] for name in commands)]:
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--help"])
        assert exit_info.value.code == 0, argv
        assert capsys.readouterr().out.startswith("usage: advarena")


def test_list(capsys):
    assert main(["list", "attacks", "p*"]) == 0
    assert capsys.readouterr().out.startswith("pgd")


def test_no_attack_row_is_more_accurate_than_the_clean_model(tiny_run):
    """A clean error stays an error: a random start or a transferred point that happens to fix it
    does not make the point robust."""
    root, _ = tiny_run
    db = sqlite3.connect(root / "work" / "advarena.db")
    rows = db.execute("select a.attack_id, a.robust_accuracy, v.benign_accuracy from attack_results a "
                      "join evaluations v on v.id = a.evaluation_id").fetchall()
    assert rows and all(robust <= benign + 1e-9 for _, robust, benign in rows)
    assert db.execute("select count(*) from example_results where adv_correct and not clean_correct").fetchone() == (0,)
