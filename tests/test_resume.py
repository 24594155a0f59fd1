"""Interrupting ``advarena run`` (SIGKILL or SIGINT, mid-training or mid-evaluation) and running it
again continues the run: every expected row is stored exactly once, with the numbers an
uninterrupted run stores."""

import logging
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from bench.cli import main
from stored_rows import stored_results

PROTOCOL = """
name: resume
version: 1
dataset: digits
eval_subset: {size: 300, seed: 0}
batch_size: 100
attacks:
  - {id: fgsm, attack: fgsm, params: {eps: 0.1}}
  - {id: pgd, attack: pgd, params: {eps: 0.1, steps: 300, step_size: 0.005, random_start: true, seed: 0}}
"""
SUITE = """
name: resume
protocol: {protocol}
model: {{arch: mlp, params: {{hidden: [64]}}}}
training: {{epochs: 4, batch_size: 32, lr: 0.005}}
defenses:
  - defense: standard
  - defense: pgd-at
    hparams: {{eps: 0.1, steps: 20, step_size: 0.01}}
"""
SUBSET, ATTACKS, EPOCHS = 300, 2 + 1, 4   # 2 attacks + the Linf worst case


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    (root / "protocol.yaml").write_text(PROTOCOL)
    (root / "suite.yaml").write_text(SUITE.format(protocol=root / "protocol.yaml"))
    return root / "suite.yaml"


@pytest.fixture(scope="module")
def uninterrupted(suite_file, tmp_path_factory):
    work = tmp_path_factory.mktemp("uninterrupted")
    assert main(["run", str(suite_file), "--workdir", str(work), "--no-progress", "--threads", "1"]) == 0
    return stored_results(work / "advarena.db")


def _first_attack_kept(work) -> bool:
    """The evaluation under way has kept its first attack's row."""
    return bool(list(work.glob("partial/*/*.json")))


def _first_epoch_stored(work) -> bool:
    """pgd-at, the suite's second training job, has stored its first epoch."""
    try:
        with sqlite3.connect(work / "advarena.db", timeout=0.1) as conn:
            return bool(conn.execute("select count(*) from epochs e join training_runs r on r.id = e.run_id "
                                     "where r.label = 'pgd-at'").fetchone()[0])
    except sqlite3.OperationalError:   # not created yet, or locked by the writer: look again
        return False


def _as_in_a_terminal() -> None:
    """SIGINT as a terminal's foreground job gets it. A shell starts background jobs (a CI script's
    ``pytest &``) with SIGINT ignored, their children inherit that, and Python then installs no
    KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(suite_file, work, marker: str, sig: int, ready) -> tuple[int, str]:
    """Start ``advarena run``; once ``marker`` is in its log and ``ready(work)`` holds, freeze it with
    SIGSTOP (so it cannot run on past that point while the signal is on its way), send ``sig`` and
    let it go on. No sleeps: the point of interruption does not depend on the machine's speed."""
    process = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", str(suite_file), "--workdir", str(work),
                                "--no-progress", "--threads", "1"], stderr=subprocess.PIPE, text=True,
                               preexec_fn=_as_in_a_terminal)
    log = []
    for line in process.stderr:
        log.append(line)
        if marker in line:
            deadline = time.monotonic() + 60
            while not ready(work) and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            process.send_signal(signal.SIGSTOP)
            process.send_signal(sig)
            process.send_signal(signal.SIGCONT)
            break
    log.extend(process.stderr)
    return process.wait(timeout=120), "".join(log)


@pytest.mark.parametrize("marker, sig, ready", [
    ("pgd-at: evaluating", signal.SIGKILL, _first_attack_kept),
    ("pgd-at: training", signal.SIGKILL, _first_epoch_stored),
    ("pgd-at: evaluating", signal.SIGINT, _first_attack_kept),
], ids=["kill mid-evaluation", "kill mid-training", "ctrl-c mid-evaluation"])
def test_an_interrupted_run_resumes_with_every_row_once(suite_file, uninterrupted, tmp_path, caplog, marker, sig,
                                                        ready):
    code, log = _interrupt(suite_file, tmp_path, marker, sig, ready)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 130), log
    before = stored_results(tmp_path / "advarena.db")
    assert len(before["evaluations"]) < 2, "the signal came after the run had finished"
    if ready is _first_epoch_stored:   # pgd-at was stopped between its epochs 1 and 4
        pgd_at = {key for key, label, _ in before["runs"] if label == "pgd-at"}
        assert 1 <= sum(key in pgd_at for key, *_ in before["epochs"]) < EPOCHS
    else:   # standard's evaluation is stored, pgd-at's is not
        assert len(before["evaluations"]) == 1
    if sig == signal.SIGKILL:   # the dead run's claim is left behind, and taken over below
        assert len(before["claims"]) == 1
    else:
        assert "interrupted; stored jobs are kept" in log and before["claims"] == []
    with caplog.at_level(logging.INFO, logger="advarena"):
        assert main(["run", str(suite_file), "--workdir", str(tmp_path), "--no-progress", "--threads", "1"]) == 0
    if ready is _first_attack_kept:   # the attack that finished before the interruption is not run again
        assert "pgd-at: fgsm done before the interruption; reusing its kept row" in caplog.text
    if sig == signal.SIGKILL:
        assert "whose claim went stale" in caplog.text
    assert not list(tmp_path.glob("partial/*/*"))
    after = stored_results(tmp_path / "advarena.db")
    assert len(after["runs"]) == 2 and {status for *_, status in after["runs"]} == {"finished"}
    assert len(after["epochs"]) == 2 * EPOCHS and len(after["evaluations"]) == 2
    assert len(after["examples"]) == 2 * ATTACKS * SUBSET
    assert len(set(after["examples"])) == len(after["examples"])
    assert after == uninterrupted
