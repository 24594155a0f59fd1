"""The result store: any SQLAlchemy URL (SQLite file by default), migrated to head on open."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, delete, event, insert, select
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bench.errors import AdvarenaError
from results.schema import (AttackRow, AuditRow, CheckpointRow, DatasetRow, EpochRow, Evaluation, ExampleRow,
                            TrainingRun)

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


class Store:
    """Typed access to the result tables; every write method is one transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine: Engine = create_engine(url)
        except (SQLAlchemyError, ImportError, ValueError) as err:
            raise StoreError(f"cannot use database URL {url!r}: {err}") from None
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
            raise StoreError(f"cannot open database {self.engine.url!r}: {err.orig}") from None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose work is committed at the end of the block, or rolled back on error."""
        with self._sessions.begin() as session:
            yield session

    # -- datasets -----------------------------------------------------------------------------
    def dataset_id(self, fingerprint: str, description: dict[str, Any]) -> int:
        with self.session() as session:
            row = session.scalar(select(DatasetRow).where(DatasetRow.fingerprint == fingerprint))
            if row is None:
                row = DatasetRow(name=description["name"], fingerprint=fingerprint,
                                 n_train=description["n_train"], n_test=description["n_test"],
                                 description=description)
                session.add(row)
                session.flush()
            return row.id

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
        with self.session() as session:
            row = session.scalar(select(CheckpointRow).where(CheckpointRow.sha256 == sha256))
            if row is None:
                row = CheckpointRow(sha256=sha256, run_id=run_id, epoch=int(meta["epoch"]), final=final,
                                    path=path, arch=meta["arch"], defense=meta["defense"], meta=meta)
                session.add(row)
                session.flush()
            return row.id

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
