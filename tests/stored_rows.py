"""What a run stored, for tests that compare two runs of the same suite (Ray against local,
interrupted and resumed against uninterrupted): every row that identifies or measures a run,
without ids, paths or timings."""

import sqlite3


def stored_results(db) -> dict:
    with sqlite3.connect(db) as conn:
        return {
            "runs": sorted(conn.execute("select key, label, status from training_runs")),
            "epochs": sorted(conn.execute("select r.key, e.epoch, e.test_accuracy from epochs e "
                                          "join training_runs r on r.id = e.run_id")),
            "checkpoints": sorted(conn.execute("select sha256, epoch, final from checkpoints")),
            "evaluations": sorted(conn.execute(
                "select e.key, c.sha256, e.benign_accuracy from evaluations e join checkpoints c "
                "on c.id = e.checkpoint_id")),
            "attacks": sorted(conn.execute(
                "select e.key, a.attack_id, a.attack_key, a.robust_accuracy, a.success_rate, a.mean_l2 "
                "from attack_results a join evaluations e on e.id = a.evaluation_id")),
            "examples": sorted(conn.execute(
                "select e.key, a.attack_id, x.example_index, x.success, x.pred, round(x.l2, 5) "
                "from example_results x join attack_results a on a.id = x.attack_result_id "
                "join evaluations e on e.id = a.evaluation_id")),
            "claims": list(conn.execute("select key from job_claims")),
        }
