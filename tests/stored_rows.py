"""What a run stored, for tests that compare two runs of the same suite (Ray against local,
interrupted and resumed against uninterrupted, SQLite against PostgreSQL): every row that
identifies or measures a run, without ids, paths or timings; and a check that a store holds no
partial result."""

from pathlib import Path

from sqlalchemy import create_engine, text

QUERIES = {
    "runs": "select key, label, status from training_runs",
    "epochs": "select r.key, e.epoch, e.test_accuracy from epochs e join training_runs r on r.id = e.run_id",
    "checkpoints": "select sha256, epoch, final from checkpoints",
    "evaluations": "select e.key, c.sha256, e.benign_accuracy from evaluations e join checkpoints c "
                   "on c.id = e.checkpoint_id",
    "attacks": "select e.key, a.attack_id, a.attack_key, a.robust_accuracy, a.success_rate, a.mean_l2 "
               "from attack_results a join evaluations e on e.id = a.evaluation_id",
    "examples": "select e.key, a.attack_id, x.example_index, x.success, x.pred, round(cast(x.l2 as numeric), 5) "
                "from example_results x join attack_results a on a.id = x.attack_result_id "
                "join evaluations e on e.id = a.evaluation_id",
    "claims": "select key from job_claims",
}


def _url(db) -> str:
    return f"sqlite:///{db}" if isinstance(db, Path) or "://" not in str(db) else str(db)


def stored_results(db) -> dict:
    """``db``: an SQLite file path or any SQLAlchemy URL (``postgresql://`` means psycopg 3)."""
    url = _url(db).replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {name: sorted(tuple(_plain(v) for v in row) for row in conn.execute(text(query)))
                    for name, query in QUERIES.items()}
    finally:
        engine.dispose()


def _plain(value):
    """Booleans and numerics as SQLite returns them, so the two backends compare equal."""
    if isinstance(value, bool):
        return int(value)
    if type(value).__name__ == "Decimal":
        return float(value)
    return value


def partial_results(db) -> list[str]:
    """What a store holds that only a half-finished job could have left: an evaluation without its
    attack rows, an attack row without all its examples, a finished run without a final checkpoint."""
    url = _url(db).replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(url)
    problems = []
    try:
        with engine.connect() as conn:
            for key, attacks in conn.execute(text(
                    "select e.key, count(a.id) from evaluations e left join attack_results a "
                    "on a.evaluation_id = e.id group by e.key")):
                if attacks == 0:
                    problems.append(f"evaluation {key[:12]} has no attack rows")
            for attack_id, n, stored in conn.execute(text(
                    "select a.attack_id, a.n_examples, count(x.id) from attack_results a left join "
                    "example_results x on x.attack_result_id = a.id group by a.id, a.attack_id, a.n_examples")):
                if stored != n:
                    problems.append(f"attack row {attack_id} holds {stored} of its {n} examples")
            for key, finals in conn.execute(text(
                    "select r.key, count(c.id) from training_runs r left join checkpoints c on c.run_id = r.id "
                    "and c.final = :yes where r.status = 'finished' group by r.key"), {"yes": True}):
                if finals != 1:
                    problems.append(f"finished run {key[:12]} has {finals} final checkpoints")
    finally:
        engine.dispose()
    return problems
