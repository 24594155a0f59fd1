"""The result store: any SQLAlchemy URL (SQLite file by default), migrated to head on open."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, delete, event, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bench.errors import AdvarenaError
from results.schema import (AttackRow, AuditRow, CheckpointRow, DatasetRow, EpochRow, Evaluation, ExampleRow,
                            JobClaim, TrainingRun)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class StoreError(AdvarenaError):
    """The database cannot be reached or migrated."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


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

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine: Engine = create_engine(engine_url(url), pool_pre_ping=True)
        except ImportError as err:
            raise StoreError(f"cannot use database URL {redacted(url)!r}: its driver is not installed ({err}); "
                             f"for PostgreSQL: pip install 'advarena[postgres]'") from None
        except (SQLAlchemyError, ValueError) as err:
            raise StoreError(f"cannot use database URL {redacted(url)!r}: {err}") from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._migrate()
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _migrate(self) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except OperationalError as err:
            reason = str(err.orig).strip().splitlines()[0] if err.orig is not None else str(err)
            raise StoreError(f"cannot open database {redacted(self.url)!r}: {reason}") from None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose work is committed at the end of the block, or rolled back on error."""
        with self._sessions.begin() as session:
            yield session

    # -- datasets -----------------------------------------------------------------------------
    def _get_or_add(self, find: Any, make: Callable[[], Any]) -> Any:
        """The row ``find`` selects, else ``make()`` inserted; a concurrent writer that inserts the
        same unique row first makes our insert fail, and then its row is returned."""
        with self.session() as session:
            row = session.scalar(find)
        if row is not None:
            return row
        try:
            with self.session() as session:
                row = make()
                session.add(row)
            return row
        except IntegrityError:
            with self.session() as session:
                row = session.scalar(find)
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
        with self.session() as session:
            return session.scalar(select(TrainingRun).where(TrainingRun.key == key,
                                                            TrainingRun.status == "finished"))

    def start_run(self, key: str, **fields: Any) -> int:
        """Create the run row (status running), replacing an earlier failed or interrupted one."""
        with self.session() as session:
            old = session.scalar(select(TrainingRun).where(TrainingRun.key == key))
            if old is not None:
                session.execute(delete(CheckpointRow).where(CheckpointRow.run_id == old.id))
                session.delete(old)
                session.flush()
            run = TrainingRun(key=key, status="running", started_at=utcnow(), **fields)
            session.add(run)
            session.flush()
            return run.id

    def add_epoch(self, run_id: int, record: dict[str, Any]) -> None:
        with self.session() as session:
            session.add(EpochRow(run_id=run_id, **record))

    def add_checkpoint(self, run_id: int | None, sha256: str, path: str, meta: dict[str, Any],
                       final: bool) -> int:
        return self._get_or_add(
            select(CheckpointRow).where(CheckpointRow.sha256 == sha256),
            lambda: CheckpointRow(sha256=sha256, run_id=run_id, epoch=int(meta["epoch"]), final=final, path=path,
                                  arch=meta["arch"], defense=meta["defense"], meta=meta)).id

    def finish_run(self, run_id: int, total_seconds: float) -> None:
        with self.session() as session:
            run = session.get_one(TrainingRun, run_id)
            run.status, run.finished_at, run.total_seconds = "finished", utcnow(), total_seconds

    def fail_run(self, run_id: int, error: str) -> None:
        with self.session() as session:
            run = session.get_one(TrainingRun, run_id)
            run.status, run.finished_at, run.error = "failed", utcnow(), error

    def final_checkpoint(self, run_id: int) -> CheckpointRow | None:
        with self.session() as session:
            return session.scalar(select(CheckpointRow).where(CheckpointRow.run_id == run_id,
                                                              CheckpointRow.final.is_(True)))

    def epoch_checkpoints(self, checkpoint_id: int) -> list[CheckpointRow]:
        """The non-final (per-epoch) checkpoints of the run that produced ``checkpoint_id``."""
        with self.session() as session:
            run_id = session.get_one(CheckpointRow, checkpoint_id).run_id
            return list(session.scalars(select(CheckpointRow).where(
                CheckpointRow.run_id == run_id, CheckpointRow.final.is_(False)).order_by(CheckpointRow.epoch)))

    def checkpoint_by_sha(self, sha256: str) -> CheckpointRow | None:
        with self.session() as session:
            return session.scalar(select(CheckpointRow).where(CheckpointRow.sha256 == sha256))

    # -- evaluations --------------------------------------------------------------------------
    def has_evaluation(self, key: str) -> bool:
        with self.session() as session:
            return session.scalar(select(Evaluation.id).where(Evaluation.key == key)) is not None

    def save_evaluation(self, evaluation: dict[str, Any], attacks: list[dict[str, Any]]) -> int:
        """Write an evaluation, its attack aggregates and per-example rows in one transaction.

        Each entry of ``attacks`` holds the AttackRow fields plus ``examples``: a list of dicts
        with the ExampleRow fields."""
        with self.session() as session:
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
            return row.id

    def evaluation_rows(self, evaluation_id: int) -> list[dict[str, Any]]:
        """The stored attack rows of an evaluation in the evaluator's own shape (AttackRow fields
        plus ``examples``, ordered by example index)."""
        with self.session() as session:
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

    def latest_evaluation(self, checkpoint_id: int, protocol: str | None = None) -> Evaluation | None:
        with self.session() as session:
            query = select(Evaluation).where(Evaluation.checkpoint_id == checkpoint_id)
            if protocol is not None:
                query = query.where(Evaluation.protocol == protocol)
            return session.scalar(query.order_by(Evaluation.created_at.desc(), Evaluation.id.desc()))

    def add_audit(self, **fields: Any) -> int:
        with self.session() as session:
            row = AuditRow(created_at=utcnow(), **fields)
            session.add(row)
            session.flush()
            return row.id

    # -- job claims (bench.claims) ------------------------------------------------------------
    def try_claim(self, key: str, kind: str, label: str, owner: str,
                  is_stale: Callable[[JobClaim], bool]) -> tuple[bool, str | None]:
        """Claim job ``key`` for ``owner``. Returns (claimed, other owner): (True, None) for a new
        claim; (True, X) when X's claim was stale and is taken over; (False, X) while X holds it;
        (False, None) when X released it meanwhile (try again). The take-over is a compare-and-set
        on (owner, heartbeat), so of two workers taking over the same stale claim one wins."""
        now = utcnow()
        try:
            with self.session() as session:
                session.add(JobClaim(key=key, kind=kind, label=label, owner=owner, claimed_at=now,
                                     heartbeat_at=now))
            return True, None
        except IntegrityError:
            pass
        with self.session() as session:
            held = session.get(JobClaim, key)
        if held is None:
            return False, None
        if not is_stale(held):
            return False, held.owner
        with self.session() as session:
            taken = session.execute(
                update(JobClaim).where(JobClaim.key == key, JobClaim.owner == held.owner,
                                       JobClaim.heartbeat_at == held.heartbeat_at)
                .values(owner=owner, label=label, claimed_at=now, heartbeat_at=now)).rowcount
        return (True, held.owner) if taken == 1 else (False, None)

    def heartbeat(self, key: str, owner: str) -> bool:
        """Refresh ``owner``'s claim on ``key``; False when the claim is no longer its own."""
        with self.session() as session:
            return session.execute(update(JobClaim).where(JobClaim.key == key, JobClaim.owner == owner)
                                   .values(heartbeat_at=utcnow())).rowcount == 1

    def release(self, key: str, owner: str) -> None:
        with self.session() as session:
            session.execute(delete(JobClaim).where(JobClaim.key == key, JobClaim.owner == owner))

    def claims(self) -> list[JobClaim]:
        with self.session() as session:
            return list(session.scalars(select(JobClaim).order_by(JobClaim.claimed_at)))
