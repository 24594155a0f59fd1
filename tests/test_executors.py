"""The Ray executor against the local one: same suite, same stored keys and numbers (CPU)."""

from bench.cli import main
from stored_rows import stored_results
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
