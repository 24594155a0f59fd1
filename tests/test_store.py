import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select

from results.schema import AttackRow, Base, Evaluation, ExampleRow
from results.store import Store, StoreError


def test_migration_matches_the_orm_schema(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def _evaluation(store):
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


def test_evaluation_is_one_transaction(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    checkpoint = _evaluation(store)
    broken = [{**EXAMPLE, "example_index": 0}, {**EXAMPLE, "example_index": 0}]  # violates uniqueness
    with pytest.raises(Exception):
        store.save_evaluation({**EVAL, "key": "e1", "checkpoint_id": checkpoint}, [attack_row(2, broken)])
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(Evaluation)) == 0
        assert session.scalar(select(func.count()).select_from(AttackRow)) == 0
    good = [{**EXAMPLE, "example_index": i} for i in range(2)]
    store.save_evaluation({**EVAL, "key": "e1", "checkpoint_id": checkpoint}, [attack_row(2, good)])
    assert store.has_evaluation("e1")
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(ExampleRow)) == 2


def test_reopening_keeps_data(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    _evaluation(Store(url))
    assert Store(url).checkpoint_by_sha("c" * 64) is not None


def test_unreachable_database_is_one_clear_error(tmp_path):
    with pytest.raises(StoreError, match="cannot open database"):
        Store(f"sqlite:///{tmp_path / 'missing-dir' / 'db.sqlite'}")
