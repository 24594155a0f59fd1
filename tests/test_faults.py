"""Faults while a suite runs: a Ray worker node killed mid-job and the PostgreSQL server restarted
mid-evaluation on a simulated 3-node cluster; SIGKILL of ``advarena run`` at 20 seeded moments
on SQLite. After each, the store holds no partial result and the completed run stores exactly the
rows of an uninterrupted one."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

import postgres_server
from stored_rows import partial_results, stored_results

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = """
name: tiny-faults
version: 1
dataset: digits
eval_subset: {size: 300, seed: 0}
batch_size: 100
attacks:
  - {id: fgsm, attack: fgsm, params: {eps: 0.1}}
  - {id: pgd, attack: pgd, params: {eps: 0.1, steps: 20, step_size: 0.01}}
  - {id: deepfool, attack: deepfool, params: {norm: l2, steps: 30, candidates: 4}}
  - id: transfer
    attack: transfer
    source: surrogate
    params: {base: pgd, base_params: {eps: 0.1, steps: 10, step_size: 0.02}}
"""
SUITE = """
name: tiny-faults
protocol: {protocol}
model: {{arch: mlp, params: {{hidden: [64, 64]}}}}
training: {{epochs: {epochs}, batch_size: 32, lr: 0.005}}
defenses:
  - defense: standard
  - defense: pgd-at
    hparams: {{eps: 0.1, steps: 3, step_size: 0.04}}
surrogates:
  surrogate: {{defense: standard, seed: 1}}
"""


def _write_suite(folder: Path, epochs: int) -> Path:
    (folder / "protocol.yaml").write_text(PROTOCOL)
    suite = folder / "suite.yaml"
    suite.write_text(SUITE.format(protocol=folder / "protocol.yaml", epochs=epochs))
    return suite


def _advarena(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.cli", *args, "--no-progress", "--threads", "1"]


def _parents(pid: int) -> list[int]:
    """The process ids above ``pid`` (from /proc)."""
    chain = []
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
        chain.append(pid)
    return chain


def _claims(url: str) -> list[tuple[str, str, str]]:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            return conn.execute("select key, kind, owner from job_claims").fetchall()
    except psycopg.Error:  # before the schema exists, or while the server restarts
        return []


@pytest.mark.slow
def test_a_killed_ray_node_and_a_restarted_database_lose_and_duplicate_nothing(tmp_path):
    from ray.cluster_utils import Cluster

    suite = _write_suite(tmp_path, epochs=40)
    local = tmp_path / "local"
    assert subprocess.run(_advarena("run", str(suite), "--workdir", str(local)), cwd=ROOT,
                          capture_output=True, timeout=900).returncode == 0
    pg = tmp_path / "pg"
    server = postgres_server.start(pg)
    try:
        name = f"faults_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = server.rsplit("/", 1)[0] + "/" + name
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        raylets = {node.all_processes["raylet"][0].process.pid: node for node in nodes}
        events: list[str] = []

        def saboteur() -> None:
            """Kill the node that runs the first training job, mid-job; then restart the database
            while the first evaluation runs."""
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and len(events) < 2:
                for key, kind, owner in _claims(url):
                    pid = int(owner.split(":")[1])
                    if kind == "train" and not events:
                        node = next((raylets[p] for p in _parents(pid) if p in raylets), None)
                        if node is not None:
                            time.sleep(0.5)
                            cluster.remove_node(node, allow_graceful=False)
                            events.append(f"killed the node running training job {key[:12]}")
                    elif kind == "evaluate" and len(events) == 1:
                        time.sleep(0.5)
                        postgres_server.restart(pg)
                        events.append(f"restarted PostgreSQL during evaluation {key[:12]}")
                    break
                time.sleep(0.1)

        thread = threading.Thread(target=saboteur, daemon=True)
        thread.start()
        run = subprocess.run(_advarena("run", str(suite), "--workdir", str(tmp_path / "ray"), "--db", url,
                                       "--executor", "ray", "--address", cluster.address),
                             cwd=ROOT, capture_output=True, text=True, timeout=1500)
        thread.join(timeout=5)
        cluster.shutdown()
        assert run.returncode == 0, run.stderr[-30000:]
        assert len(events) == 2, (events, run.stderr[-3000:])
        assert partial_results(url) == []
        on_ray, uninterrupted = stored_results(url), stored_results(local / "advarena.db")
        assert len(uninterrupted["evaluations"]) == 2 and uninterrupted["claims"] == []
        for table in uninterrupted:
            assert on_ray[table] == uninterrupted[table], table
    finally:
        postgres_server.stop(pg)


#: Seconds into the run at which each of the 20 interrupted runs is killed (seeded, bounded).
KILL_SEED, KILLS = 2026, 20


@pytest.mark.slow
def test_sigkill_at_twenty_seeded_moments_leaves_the_store_consistent(tmp_path):
    from results.store import Store

    suite = _write_suite(tmp_path, epochs=3)
    reference = tmp_path / "reference"
    start = time.monotonic()
    assert subprocess.run(_advarena("run", str(suite), "--workdir", str(reference)), cwd=ROOT,
                          capture_output=True, timeout=900).returncode == 0
    duration = time.monotonic() - start
    expected = stored_results(reference / "advarena.db")
    moments = [random.Random(KILL_SEED + i).uniform(0.1, 1.0) * duration for i in range(KILLS)]
    for i, moment in enumerate(moments):
        work = tmp_path / f"killed-{i}"
        process = subprocess.Popen(_advarena("run", str(suite), "--workdir", str(work)), cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(moment)
        process.send_signal(signal.SIGKILL)
        process.wait()
        db = work / "advarena.db"
        if db.exists():
            Store(f"sqlite:///{db}")            # the store opens
            assert partial_results(db) == [], (i, moment)
        rerun = subprocess.run(_advarena("run", str(suite), "--workdir", str(work)), cwd=ROOT,
                               capture_output=True, text=True, timeout=900)
        assert rerun.returncode == 0, (i, moment, rerun.stderr[-2000:])
        assert stored_results(db) == expected, (i, moment)
        assert not list((work / "partial").glob("*/*")) if (work / "partial").exists() else True
