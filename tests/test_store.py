"""The store on both backends (SQLite, PostgreSQL): migrations, transactions, concurrent writers
and job claims."""

import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select

from bench.claims import Heartbeat, claim_job, is_stale, owner_id
from results.schema import AttackRow, Base, DatasetRow, Evaluation, ExampleRow, JobClaim
from results.store import Store, StoreError, utcnow


def test_migration_matches_the_orm_schema(store_url):
    store = Store(store_url)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def checkpoint_row(store):
    """A dataset, a finished run and its checkpoint (idempotent: concurrent writers share them)."""
    existing = store.checkpoint_by_sha("c" * 64)
    if existing is not None:
        return existing.id
    dataset = store.dataset_id("f" * 64, {"name": "digits", "n_train": 1, "n_test": 2})
    run = store.start_run("k" * 64, label="standard", role="defense", defense="standard", hparams={},
                          arch="mlp", arch_params={}, dataset_id=dataset, seed=0, environment={})
    meta = {"epoch": 1, "arch": "mlp", "defense": "standard"}
    return store.add_checkpoint(run, "c" * 64, "/nowhere", meta, final=True)


def attack_row(n, examples):
    return {"attack_id": "pgd", "attack": "pgd", "attack_key": "a" * 64, "config": {}, "threat": "white-box",
            "norm": "linf", "eps": 0.3, "source_checkpoint_id": None, "n_examples": n,
            "robust_accuracy": 0.5, "success_rate": 0.5, "mean_l2": None, "median_l2": None,
            "forward_passes": n, "backward_passes": n, "seconds": 0.1, "examples": examples}


EXAMPLE = {"label": 1, "clean_correct": True, "adv_correct": False, "success": True, "l2": 1.0,
           "linf": 0.3, "pred": 2}
EVAL = {"protocol": "quick", "protocol_version": 1, "protocol_hash": "p", "subset_hash": "s",
        "n_examples": 2, "benign_accuracy": 1.0, "seconds": 1.0, "environment": {}}


def count(store, table) -> int:
    with store.session() as session:
        return session.scalar(select(func.count()).select_from(table))


def test_evaluation_is_one_transaction(store_url):
    store = Store(store_url)
    checkpoint = checkpoint_row(store)
    broken = [{**EXAMPLE, "example_index": 0}, {**EXAMPLE, "example_index": 0}]  # violates uniqueness
    with pytest.raises(Exception):
        store.save_evaluation({**EVAL, "key": "e1", "checkpoint_id": checkpoint}, [attack_row(2, broken)])
    assert count(store, Evaluation) == 0 and count(store, AttackRow) == 0
    good = [{**EXAMPLE, "example_index": i} for i in range(2)]
    store.save_evaluation({**EVAL, "key": "e1", "checkpoint_id": checkpoint}, [attack_row(2, good)])
    assert store.has_evaluation("e1")
    assert count(store, ExampleRow) == 2
    with pytest.raises(Exception):  # the key is unique: a second evaluation of it cannot be stored
        store.save_evaluation({**EVAL, "key": "e1", "checkpoint_id": checkpoint}, [attack_row(2, good)])
    assert count(store, Evaluation) == 1 and count(store, ExampleRow) == 2


def test_reopening_keeps_data(store_url):
    checkpoint_row(Store(store_url))
    assert Store(store_url).checkpoint_by_sha("c" * 64) is not None


def test_two_concurrent_writer_processes(store_url):
    """Two processes claim the same 12 jobs and write 8 of their own each, at the same time: every
    job is run by exactly one of them and every row is stored once."""
    checkpoint_row(Store(store_url))  # the driver migrates and stores the checkpoint before its workers start
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    writers = [subprocess.Popen([sys.executable, str(Path(__file__).parent / "store_writer.py"), store_url, name,
                                 "12", "8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for name in ("a", "b")]
    outputs = [w.communicate(timeout=300) for w in writers]
    for writer, (_, err) in zip(writers, outputs):
        assert writer.returncode == 0, err
    ran = [out.split() for out, _ in outputs]
    assert sorted(ran[0] + ran[1]) == sorted([f"shared-{i}" for i in range(12)] + [f"{n}-{i}" for n in "ab"
                                                                                for i in range(8)])
    store = Store(store_url)
    assert count(store, Evaluation) == 28 and count(store, ExampleRow) == 28 * 50
    assert count(store, DatasetRow) == 2
    assert store.claims() == []


def _plant_claim(store, key, owner, age_seconds=0.0):
    with store.session() as session:
        session.add(JobClaim(key=key, kind="train", label=key, owner=owner, claimed_at=utcnow(),
                             heartbeat_at=utcnow() - timedelta(seconds=age_seconds)))


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_claim_whose_process_died_is_taken_over_at_once(store_url):
    store = Store(store_url)
    _plant_claim(store, "job", f"{socket.gethostname()}:{_dead_pid()}:dead")
    with claim_job(store, "job", "train", "job", lambda: False) as mine:
        assert mine
        assert [c.owner for c in store.claims()] == [owner_id()]
    assert store.claims() == []


def test_a_claim_with_an_old_heartbeat_is_taken_over(store_url):
    store = Store(store_url)
    _plant_claim(store, "job", "another-host:123:x", age_seconds=600)
    assert is_stale(store.claims()[0])
    with claim_job(store, "job", "train", "job", lambda: False) as mine:
        assert mine


def test_a_live_claim_is_waited_for_and_its_result_used(store_url):
    """A claim held by a live worker (here: this process under another token) is not taken over;
    once its results are stored and it is released, the waiting worker finds the job done."""
    store = Store(store_url)
    _plant_claim(store, "job", f"{socket.gethostname()}:{os.getpid()}:other")
    assert not is_stale(store.claims()[0])
    polls = []

    def done() -> bool:
        polls.append(1)
        if len(polls) == 3:  # the other worker finishes: results stored, then the claim released
            store.release("job", f"{socket.gethostname()}:{os.getpid()}:other")
            return False
        return len(polls) > 3

    with claim_job(store, "job", "train", "job", done, poll_seconds=0.01) as mine:
        assert not mine
    assert store.claims() == []


def test_the_heartbeat_keeps_a_claim_fresh(store_url):
    store = Store(store_url)
    _plant_claim(store, "job", owner_id(), age_seconds=60)
    with Heartbeat(store, "job", owner_id(), "job", interval=0.05):
        time.sleep(0.5)
        assert utcnow() - store.claims()[0].heartbeat_at < timedelta(seconds=1)
    assert not is_stale(store.claims()[0], lease_seconds=30)


def test_the_claim_is_released_when_the_job_fails(store_url):
    store = Store(store_url)
    with pytest.raises(RuntimeError):
        with claim_job(store, "job", "train", "job", lambda: False):
            raise RuntimeError("the job broke")
    assert store.claims() == []


@pytest.mark.parametrize("url, message", [
    ("sqlite:///{tmp}/missing-dir/db.sqlite", "cannot open database"),
    ("postgresql://nobody:secret@127.0.0.1:1/advarena", "cannot open database 'postgresql://nobody:\\*\\*\\*@"),
    ("mysql://x@localhost/db", "driver is not installed"),
    ("not a url", "cannot use database URL"),
])
def test_unreachable_database_is_one_clear_error(tmp_path, url, message):
    with pytest.raises(StoreError, match=message):
        Store(url.format(tmp=tmp_path))


def test_a_migration_broken_off_midway_leaves_no_half_made_schema(store_url, monkeypatch):
    """All migrations are one transaction: a process killed after the first CREATE TABLE and
    before the version stamp (as SIGKILL may) leaves nothing, and the next open migrates cleanly.
    SQLite's Python driver commits DDL on its own unless told not to."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    class Killed(BaseException):
        pass

    def kill_at_the_stamp(conn, cursor, statement, parameters, context, executemany):
        if "alembic_version" in statement and statement.lstrip().upper().startswith("INSERT"):
            raise Killed()

    event.listen(Engine, "before_cursor_execute", kill_at_the_stamp)
    try:
        with pytest.raises(Killed):
            Store(store_url)
    finally:
        event.remove(Engine, "before_cursor_execute", kill_at_the_stamp)
    store = Store(store_url)
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(DatasetRow)) == 0
