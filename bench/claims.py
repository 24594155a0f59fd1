"""Job claiming by content key, so that any number of workers (processes, Ray tasks, machines)
sharing one store never run the same training or evaluation job, and a job whose worker died is
run again.

A worker claims a job by inserting its key into ``job_claims`` (the primary key makes the insert
the lock) and refreshes the claim from a heartbeat thread while the job runs. A claim is stale,
and another worker takes it over, when its heartbeat is older than the lease, or at once when its
owner was a process on this host that no longer exists (a SIGKILLed run). The claim is deleted
in the same transaction that commits the job's results (``Store.save_evaluation`` and
``Store.finish_run`` take the ``Claim``), or when the job ends without results; a claim on a job
whose results are stored is void and is deleted by the next worker that meets it. So a killed
worker can never leave a claim behind on a finished job."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator

from results.schema import JobClaim
from results.store import Store, utcnow

log = logging.getLogger("advarena")

#: A claim whose heartbeat is older than this is taken over (a worker on another host died).
LEASE_SECONDS = 120.0
HEARTBEAT_SECONDS = 15.0
#: Waiting for a job another live worker holds: first poll after this, then up to 5x longer.
POLL_SECONDS = 1.0

_TOKEN = uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class Claim:
    """What ``claim_job`` yields: true when this worker holds job ``key`` and must run it. Hand
    it to the store call that commits the job's results, which releases it in that transaction."""

    key: str
    owner: str
    mine: bool

    def __bool__(self) -> bool:
        return self.mine


def owner_id() -> str:
    """This process, as ``host:pid:token`` (the token tells a reused pid apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_TOKEN}"


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def is_stale(claim: JobClaim, lease_seconds: float = LEASE_SECONDS) -> bool:
    """A claim is stale when its heartbeat is older than the lease, or its owner was a process on
    this host that is gone."""
    if utcnow() - claim.heartbeat_at > timedelta(seconds=lease_seconds):
        return True
    host, _, pid = claim.owner.rpartition(":")[0].rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid))


class Heartbeat:
    """Refreshes a claim every ``interval`` seconds from a daemon thread until stopped."""

    def __init__(self, store: Store, key: str, owner: str, label: str, interval: float = HEARTBEAT_SECONDS):
        self.store, self.key, self.owner, self.label, self.interval = store, key, owner, label, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{key[:8]}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.store.heartbeat(self.key, self.owner):
                    log.warning("%s: lost the claim on job %s (another worker took it over)", self.label,
                                self.key[:12])
            except Exception as err:  # a heartbeat must not kill the job: the lease covers a few misses
                log.warning("%s: heartbeat failed (%s)", self.label, err)


@contextmanager
def claim_job(store: Store, key: str, kind: str, label: str, done: Callable[[], bool],
              lease_seconds: float = LEASE_SECONDS, poll_seconds: float = POLL_SECONDS) -> Iterator[Claim]:
    """Hold the claim on job ``key`` for the block. Yields a true ``Claim`` when this worker must
    run the job, a false one when ``done()`` says its results are stored (before or after waiting
    for another worker). The claim is released when the block ends, also on an error or
    interrupt, unless the store call that committed the results released it already."""
    owner = owner_id()
    waited_for: str | None = None
    delay = poll_seconds
    while True:
        if done():
            store.release(key)  # any claim left on a finished job is void
            yield Claim(key, owner, False)
            return
        claimed, other = store.try_claim(key, kind, label, owner, lambda held: is_stale(held, lease_seconds))
        if claimed:
            if other is not None:
                log.warning("%s: taking over the %s job from %s, whose claim went stale", label, kind, other)
            break
        if other is not None:
            if other != waited_for:
                log.info("%s: %s job is being run by %s; waiting for it", label, kind, other)
                waited_for = other
            time.sleep(delay)
            delay = min(delay * 1.5, 5 * poll_seconds)
    try:
        with Heartbeat(store, key, owner, label):
            yield Claim(key, owner, not done())
    finally:
        store.release(key, owner)
