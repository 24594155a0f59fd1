"""The Ray executor against the local one: same suite, same stored keys and numbers (CPU)."""

import sqlite3

from bench.cli import main
from test_cli import PROTOCOL   # the tiny digits protocol: FGSM, PGD and a transfer attack

SUITE = """
name: tiny-ray
protocol: {protocol}
model: {{arch: mlp, params: {{hidden: [32]}}}}
training: {{epochs: 3, batch_size: 64, lr: 0.005}}
defenses:
  - defense: standard
  - defense: pgd-at
    hparams: {{eps: 0.1, steps: 3, step_size: 0.04}}
  - {{defense: standard, label: fine-tuned, init_from: surrogate, hparams: {{epochs: 1}}}}
surrogates:
  surrogate: {{defense: standard, seed: 1}}
"""


def stored_results(db) -> dict:
    """Everything that identifies and measures a run, without ids, paths or timings."""
    with sqlite3.connect(db) as conn:
        return {
            "runs": sorted(conn.execute("select key, label, status from training_runs")),
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


def test_ray_executor_stores_what_the_local_executor_stores(tmp_path):
    (tmp_path / "protocol.yaml").write_text(PROTOCOL)
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE.format(protocol=tmp_path / "protocol.yaml"))
    common = [str(suite), "--no-progress", "--threads", "1"]
    assert main(["run", *common, "--workdir", str(tmp_path / "local")]) == 0
    assert main(["run", *common, "--workdir", str(tmp_path / "ray"), "--executor", "ray", "--ray-cpus", "2"]) == 0
    local = stored_results(tmp_path / "local" / "advarena.db")
    on_ray = stored_results(tmp_path / "ray" / "advarena.db")
    assert len(local["runs"]) == 4 and len(local["evaluations"]) == 3
    assert len(local["examples"]) == 3 * 3 * 120 + 3 * 120   # 3 attacks + 1 worst case per defense
    assert local["claims"] == [] and on_ray["claims"] == []
    for table in local:
        assert on_ray[table] == local[table], table
