"""The result store: any SQLAlchemy URL (SQLite file by default), migrated to head on open."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from filelock import FileLock
from sqlalchemy import Connection, Engine, create_engine, delete, event, insert, select, text, update
from sqlalchemy.pool import NullPool
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bench.errors import AdvarenaError, CheckpointError
from results.schema import (AttackRow, AuditRow, CheckpointRow, DatasetRow, EpochRow, Evaluation, ExampleRow,
                            JobClaim, TrainingRun)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: How long a write keeps retrying after the database server went away (a PostgreSQL restart).
RECONNECT_SECONDS = 90.0
#: Session-level lock key serializing migrations on PostgreSQL (any constant; "advarena").
PG_MIGRATION_LOCK = 0x616476617265
#: Seconds a process waits for another one that is creating or migrating the same SQLite file.
MIGRATION_LOCK_SECONDS = 300.0

log = logging.getLogger("advarena")
T = TypeVar("T")


class StoreError(AdvarenaError):
    """The database cannot be reached or migrated."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # The busy timeout first: switching a new file to WAL takes a lock that a second process
    # opening the same file at the same moment must wait for, not fail on.
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def _transient(err: BaseException, dialect: str) -> bool:
    """A failure that a new connection may not meet again: the server closed the connection or
    restarted (PostgreSQL), as opposed to an error in what was asked."""
    if isinstance(err, DBAPIError) and err.connection_invalidated:
        return True
    return dialect == "postgresql" and isinstance(err, OperationalError)


def model_description(meta: dict[str, Any]) -> dict[str, Any]:
    """What, beside the weights, decides what a checkpoint computes: the zoo architecture and the
    data shape it was built for, or an external model's factory, its arguments and its code.
    ``bench.checkpoints`` writes it into the weights file, so the file's sha256 covers it."""
    if meta.get("arch") == "external":
        return {"factory": meta.get("factory"), "factory_kwargs": meta.get("factory_kwargs", {}),
                "factory_code": meta.get("factory_code")}
    return {key: meta.get(key) for key in ("arch", "arch_params", "input_shape", "num_classes", "mean", "std")}


def default_url(workdir: Path) -> str:
    return f"sqlite:///{(workdir / 'advarena.db').resolve()}"


def engine_url(url: str) -> str:
    """``url`` with a driver SQLAlchemy can load: a bare ``postgresql://`` (or ``postgres://``)
    URL means psycopg 3 (``pip install 'advarena[postgres]'``), not SQLAlchemy's default psycopg2."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def redacted(url: str) -> str:
    """``url`` for messages: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        return url


class Store:
    """Typed access to the result tables; every write method is one transaction."""

    def __init__(self, url: str, reconnect: bool = False) -> None:
        """Open (and migrate) the store at ``url``. ``reconnect``: keep trying for up to
        ``RECONNECT_SECONDS`` while the server is unreachable, as a worker of a running suite must
        through a database restart; a user's command fails at once on a wrong URL instead."""
        self.url = url
        try:
            self.engine: Engine = create_engine(engine_url(url), pool_pre_ping=True)
        except ImportError as err:
            raise StoreError(f"cannot use database URL {redacted(url)!r}: its driver is not installed ({err}); "
                             f"for PostgreSQL: pip install 'advarena[postgres]'") from None
        except (SQLAlchemyError, ValueError) as err:
            raise StoreError(f"cannot use database URL {redacted(url)!r}: {err}") from None
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        try:
            if reconnect:
                self._retrying(self._migrate)
            else:
                self._migrate()
        except OperationalError as err:
            reason = str(err.orig).strip().splitlines()[0] if err.orig is not None else str(err)
            raise StoreError(f"cannot open database {redacted(self.url)!r}: {reason}") from None

    def _migrate(self) -> None:
        """Bring the schema to the newest migration. Processes that open a new or old store at the
        same moment take turns (a file lock beside an SQLite file, an advisory lock on PostgreSQL),
        so the second one finds the schema made and changes nothing."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        head = ScriptDirectory.from_config(config).get_current_head()
        if self._revision() == head:
            return
        engine = self._migration_engine()
        try:
            with self._migration_lock(), engine.begin() as connection:
                if self.dialect == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK})
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        finally:
            if engine is not self.engine:
                engine.dispose()

    def _migration_engine(self) -> Engine:
        """The engine migrations run on: one transaction for all of them, so a process killed
        midway leaves the schema as it was. PostgreSQL's DDL is transactional as is; Python's
        sqlite3 commits before each CREATE or ALTER unless it is told to leave transactions to
        SQLite (``isolation_level=None``) and the transaction is begun explicitly."""
        if self.dialect != "sqlite":
            return self.engine
        engine = create_engine(self.engine.url, poolclass=NullPool)

        def connect(dbapi_connection: Any, record: Any) -> None:
            _sqlite_pragmas(dbapi_connection, record)
            dbapi_connection.isolation_level = None

        event.listen(engine, "connect", connect)
        event.listen(engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE"))
        return engine

    def _revision(self) -> str | None:
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def _migration_lock(self) -> ContextManager[Any]:
        database = self.engine.url.database
        if self.dialect != "sqlite" or not database or database == ":memory:":
            return nullcontext()
        return FileLock(f"{database}.lock", timeout=MIGRATION_LOCK_SECONDS)

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for reads (pandas, Core queries), its opening retried like ``transaction``
        while the server is unreachable or still starting after a restart."""
        connection = self._retrying(self.engine.connect)
        try:
            yield connection
        finally:
            connection.close()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose work is committed at the end of the block, or rolled back on error."""
        with self._sessions.begin() as session:
            yield session

    def transaction(self, work: Callable[[Session], T]) -> T:
        """``work(session)`` in one transaction, run again on a new connection when the server
        went away meanwhile (a PostgreSQL restart), for up to ``RECONNECT_SECONDS``. ``work`` must
        be safe to repeat: it sees nothing of a transaction that failed."""
        def attempt() -> T:
            with self.session() as session:
                return work(session)
        return self._retrying(attempt)

    def _retrying(self, attempt: Callable[[], T]) -> T:
        """``attempt()``, repeated with backoff while it fails because the server is unreachable."""
        deadline, delay = time.monotonic() + RECONNECT_SECONDS, 0.5
        while True:
            try:
                return attempt()
            except DBAPIError as err:
                if not _transient(err, self.dialect) or time.monotonic() > deadline:
                    raise
                log.warning("database %s unreachable (%s); retrying", redacted(self.url),
                            str(err.orig or err).strip().splitlines()[0] if str(err.orig or err).strip() else err)
                time.sleep(delay)
                delay = min(2 * delay, 5.0)

    # -- datasets -----------------------------------------------------------------------------
    def _get_or_add(self, find: Any, make: Callable[[], Any]) -> Any:
        """The row ``find`` selects, else ``make()`` inserted; a concurrent writer that inserts the
        same unique row first makes our insert fail, and then its row is returned."""
        row = self.transaction(lambda session: session.scalar(find))
        if row is not None:
            return row

        def add(session: Session) -> Any:
            made = make()
            session.add(made)
            session.flush()
            return made

        try:
            return self.transaction(add)
        except IntegrityError:
            row = self.transaction(lambda session: session.scalar(find))
            if row is None:
                raise
            return row

    def dataset_id(self, fingerprint: str, description: dict[str, Any]) -> int:
        return self._get_or_add(
            select(DatasetRow).where(DatasetRow.fingerprint == fingerprint),
            lambda: DatasetRow(name=description["name"], fingerprint=fingerprint, n_train=description["n_train"],
                               n_test=description["n_test"], description=description)).id

    # -- training runs ------------------------------------------------------------------------
    def finished_run(self, key: str) -> TrainingRun | None:
        return self.transaction(lambda session: session.scalar(
            select(TrainingRun).where(TrainingRun.key == key, TrainingRun.status == "finished")))

    def start_run(self, key: str, **fields: Any) -> int:
        """Create the run row (status running), replacing an earlier failed or interrupted one."""
        def start(session: Session) -> int:
            old = session.scalar(select(TrainingRun).where(TrainingRun.key == key))
            if old is not None:
                session.execute(delete(CheckpointRow).where(CheckpointRow.run_id == old.id))
                session.delete(old)
                session.flush()
            run = TrainingRun(key=key, status="running", started_at=utcnow(), **fields)
            session.add(run)
            session.flush()
            return run.id

        return self.transaction(start)

    def resume_run(self, key: str, after_epoch: int, **fields: Any) -> int:
        """Continue the unfinished run ``key`` from its finished epoch ``after_epoch`` (its saved
        training state): the same row, status running again, its epochs and epoch checkpoints
        after that one dropped (they are trained again). Without such a row, ``start_run``."""
        def resume(session: Session) -> int | None:
            run = session.scalar(select(TrainingRun).where(TrainingRun.key == key))
            if run is None or run.status == "finished":
                return None
            session.execute(delete(EpochRow).where(EpochRow.run_id == run.id, EpochRow.epoch > after_epoch))
            session.execute(delete(CheckpointRow).where(CheckpointRow.run_id == run.id,
                                                        CheckpointRow.epoch > after_epoch))
            run.status, run.error, run.finished_at = "running", None, None
            return run.id

        run_id = self.transaction(resume)
        return run_id if run_id is not None else self.start_run(key, **fields)

    def add_epoch(self, run_id: int, record: dict[str, Any]) -> None:
        def add(session: Session) -> None:
            if session.scalar(select(EpochRow.id).where(EpochRow.run_id == run_id,
                                                        EpochRow.epoch == record["epoch"])) is None:
                session.add(EpochRow(run_id=run_id, **record))

        self.transaction(add)

    def add_checkpoint(self, run_id: int | None, sha256: str, path: str, meta: dict[str, Any],
                       final: bool) -> int:
        """The checkpoint row of these weights (get or add). The same weights again are the same
        checkpoint: an early-stopped run's final weights are those of the epoch it kept, so that
        epoch's row becomes the run's final one. Weights stored under another model description
        (an old checkpoint whose file does not record it) are an error, never a silent reuse."""
        row = self._get_or_add(
            select(CheckpointRow).where(CheckpointRow.sha256 == sha256),
            lambda: CheckpointRow(sha256=sha256, run_id=run_id, epoch=int(meta["epoch"]), final=final, path=path,
                                  arch=meta["arch"], defense=meta["defense"], meta=meta))
        if model_description(row.meta) != model_description(meta):
            raise CheckpointError(f"{path}: these weights (sha256 {sha256[:12]}) are stored as a checkpoint of "
                                  f"{model_description(row.meta)}, not of {model_description(meta)}; save them "
                                  f"again with this advarena version so that the file records its model")
        if final and not row.final and row.run_id == run_id:
            def promote(session: Session) -> None:
                session.execute(update(CheckpointRow).where(CheckpointRow.id == row.id).values(final=True))

            self.transaction(promote)
        return row.id

    def finish_run(self, run_id: int, total_seconds: float, claim: Any = None) -> None:
        """Mark the run finished; ``claim`` (``bench.claims.Claim``) is released in the same
        transaction, so a finished job never leaves a claim behind."""
        def finish(session: Session) -> None:
            session.execute(update(TrainingRun).where(TrainingRun.id == run_id).values(
                status="finished", finished_at=utcnow(), total_seconds=total_seconds))
            self._release_in(session, claim)

        self.transaction(finish)

    def fail_run(self, run_id: int, error: str) -> None:
        self.transaction(lambda session: session.execute(update(TrainingRun).where(TrainingRun.id == run_id).values(
            status="failed", finished_at=utcnow(), error=error)))

    def final_checkpoint(self, run_id: int) -> CheckpointRow | None:
        return self.transaction(lambda session: session.scalar(
            select(CheckpointRow).where(CheckpointRow.run_id == run_id, CheckpointRow.final.is_(True))))

    def epoch_checkpoints(self, checkpoint_id: int) -> list[CheckpointRow]:
        """The non-final (per-epoch) checkpoints of the run that produced ``checkpoint_id``."""
        def find(session: Session) -> list[CheckpointRow]:
            run_id = session.get_one(CheckpointRow, checkpoint_id).run_id
            return list(session.scalars(select(CheckpointRow).where(
                CheckpointRow.run_id == run_id, CheckpointRow.final.is_(False)).order_by(CheckpointRow.epoch)))

        return self.transaction(find)

    def checkpoint_by_sha(self, sha256: str) -> CheckpointRow | None:
        return self.transaction(lambda session: session.scalar(
            select(CheckpointRow).where(CheckpointRow.sha256 == sha256)))

    # -- evaluations --------------------------------------------------------------------------
    def has_evaluation(self, key: str) -> bool:
        return self.transaction(lambda session: session.scalar(
            select(Evaluation.id).where(Evaluation.key == key))) is not None

    def save_evaluation(self, evaluation: dict[str, Any], attacks: list[dict[str, Any]], claim: Any = None) -> int:
        """Write an evaluation, its attack aggregates and per-example rows in one transaction, and
        release ``claim`` (``bench.claims.Claim``) in it.

        Each entry of ``attacks`` holds the AttackRow fields plus ``examples``: a list of dicts
        with the ExampleRow fields. Retried on a lost connection; when the lost answer was to a
        commit that went through, the stored evaluation is the one returned."""
        attempts = 0

        def save(session: Session) -> int:
            nonlocal attempts
            attempts += 1
            row = Evaluation(created_at=utcnow(), **evaluation)
            session.add(row)
            session.flush()
            for attack in attacks:
                fields = {k: v for k, v in attack.items() if k != "examples"}
                attack_row = AttackRow(evaluation_id=row.id, **fields)
                session.add(attack_row)
                session.flush()
                session.execute(insert(ExampleRow),
                                [{"attack_result_id": attack_row.id, **ex} for ex in attack["examples"]])
            self._release_in(session, claim)
            return row.id

        try:
            return self.transaction(save)
        except IntegrityError:
            stored = self._evaluation_id(evaluation["key"]) if attempts > 1 else None
            if stored is None:
                raise
            return stored  # the connection was lost after our commit went through

    def _evaluation_id(self, key: str) -> int | None:
        return self.transaction(lambda session: session.scalar(select(Evaluation.id).where(Evaluation.key == key)))

    def evaluation_rows(self, evaluation_id: int) -> list[dict[str, Any]]:
        """The stored attack rows of an evaluation in the evaluator's own shape (AttackRow fields
        plus ``examples``, ordered by example index)."""
        def read(session: Session) -> list[dict[str, Any]]:
            attacks = list(session.scalars(select(AttackRow).where(AttackRow.evaluation_id == evaluation_id)
                                           .order_by(AttackRow.id)))
            examples = session.execute(
                select(ExampleRow).where(ExampleRow.attack_result_id.in_([a.id for a in attacks]))
                .order_by(ExampleRow.attack_result_id, ExampleRow.example_index)).scalars().all()
            by_attack: dict[int, list[dict[str, Any]]] = {}
            for ex in examples:
                by_attack.setdefault(ex.attack_result_id, []).append(
                    {c: getattr(ex, c) for c in ("example_index", "label", "clean_correct", "adv_correct",
                                                 "success", "l2", "linf", "pred", "success_step", "x_l2")})
            columns = [c.name for c in AttackRow.__table__.columns]
            return [{**{c: getattr(a, c) for c in columns}, "examples": by_attack.get(a.id, [])}
                    for a in attacks]

        return self.transaction(read)

    def latest_evaluation(self, checkpoint_id: int, protocol: str | None = None) -> Evaluation | None:
        query = select(Evaluation).where(Evaluation.checkpoint_id == checkpoint_id)
        if protocol is not None:
            query = query.where(Evaluation.protocol == protocol)
        return self.transaction(lambda session: session.scalar(
            query.order_by(Evaluation.created_at.desc(), Evaluation.id.desc())))

    def add_audit(self, **fields: Any) -> int:
        def add(session: Session) -> int:
            row = AuditRow(created_at=utcnow(), **fields)
            session.add(row)
            session.flush()
            return row.id

        return self.transaction(add)

    # -- job claims (bench.claims) ------------------------------------------------------------
    def try_claim(self, key: str, kind: str, label: str, owner: str,
                  is_stale: Callable[[JobClaim], bool]) -> tuple[bool, str | None]:
        """Claim job ``key`` for ``owner``. Returns (claimed, other owner): (True, None) for a new
        claim; (True, X) when X's claim was stale and is taken over; (False, X) while X holds it;
        (False, None) when X released it meanwhile (try again). The take-over is a compare-and-set
        on (owner, heartbeat), so of two workers taking over the same stale claim one wins."""
        now = utcnow()
        try:
            self.transaction(lambda session: session.add(
                JobClaim(key=key, kind=kind, label=label, owner=owner, claimed_at=now, heartbeat_at=now)))
            return True, None
        except IntegrityError:
            pass
        held = self.transaction(lambda session: session.get(JobClaim, key))
        if held is None:
            return False, None
        if not is_stale(held):
            return False, held.owner
        taken = self.transaction(lambda session: session.execute(
            update(JobClaim).where(JobClaim.key == key, JobClaim.owner == held.owner,
                                   JobClaim.heartbeat_at == held.heartbeat_at)
            .values(owner=owner, label=label, claimed_at=now, heartbeat_at=now)).rowcount)
        return (True, held.owner) if taken == 1 else (False, None)

    def heartbeat(self, key: str, owner: str) -> bool:
        """Refresh ``owner``'s claim on ``key``; False when the claim is no longer its own."""
        with self.session() as session:  # no retry: the heartbeat thread tries again anyway
            return session.execute(update(JobClaim).where(JobClaim.key == key, JobClaim.owner == owner)
                                   .values(heartbeat_at=utcnow())).rowcount == 1

    def release(self, key: str, owner: str | None = None) -> None:
        """Delete ``owner``'s claim on ``key`` (any owner's when None: a claim on a finished job
        is void)."""
        query = delete(JobClaim).where(JobClaim.key == key)
        if owner is not None:
            query = query.where(JobClaim.owner == owner)
        self.transaction(lambda session: session.execute(query))

    @staticmethod
    def _release_in(session: Session, claim: Any) -> None:
        if claim is not None:
            session.execute(delete(JobClaim).where(JobClaim.key == claim.key, JobClaim.owner == claim.owner))

    def claims(self) -> list[JobClaim]:
        return self.transaction(lambda session: list(session.scalars(select(JobClaim).order_by(JobClaim.claimed_at))))
