"""``advarena report`` end to end: a tiny suite with a sweep and per-epoch evaluations, the site it
writes, its determinism, and the page as headless Chromium renders it."""

import json
import re
import subprocess

import pandas as pd
import pytest

from bench.cli import main
from components import chromium
from results.curves import CURVES

PROTOCOL = """
name: tiny-report
version: 1
dataset: digits
eval_subset: {size: 120, seed: 0}
batch_size: 60
attacks:
  - {id: fgsm, attack: fgsm, params: {eps: 0.1}}
  - {id: pgd, attack: pgd, params: {eps: 0.1, steps: 8, step_size: 0.03}, eps_grid: [0.05]}
  - id: transfer
    attack: transfer
    source: surrogate
    params: {base: pgd, base_params: {eps: 0.1, steps: 8, step_size: 0.03}}
  - {id: fgs-line, attack: fgs-line, params: {max_eps: 0.3, grid_step: 0.05, refine: 3}}
  - {id: deepfool-l2, attack: deepfool, params: {norm: l2, steps: 20}}
"""
SUITE = """
name: tiny-report
protocol: {protocol}
model: {{arch: mlp, params: {{hidden: [32]}}}}
training: {{epochs: 2, batch_size: 64, lr: 0.005}}
save_every_epoch: true
evaluate_every_epoch: true
defenses:
  - defense: standard
  - defense: pgd-at
    hparams: {{eps: [0.05, 0.1], steps: 3, step_size: 0.04}}
surrogates:
  surrogate: {{defense: standard, seed: 1}}
"""
TABLES = ("leaderboard", "results", "attacks", "minimum-norm", "fgs", "transfer", "training", "environment")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    (root / "protocol.yaml").write_text(PROTOCOL)
    (root / "suite.yaml").write_text(SUITE.format(protocol=root / "protocol.yaml"))
    work = root / "work"
    assert main(["run", str(root / "suite.yaml"), "--workdir", str(work), "--no-progress"]) == 0
    assert main(["report", "--protocol", "tiny-report", "--workdir", str(work), "--no-progress"]) == 0
    return work


def test_sweep_and_epoch_checkpoints_feed_the_matching(report):
    leaderboard = pd.read_csv(report / "report" / "tables" / "leaderboard.csv")
    pgd_at = leaderboard.set_index("entry").loc["pgd-at"]
    assert pgd_at["points"] == 4  # 2 sweep values x (epoch 1 + final epoch 2)
    assert pgd_at["method"] in ("interpolated", "nearest", "not reachable")
    results = pd.read_csv(report / "report" / "tables" / "results.csv")
    assert set(results.label) == {"standard", "pgd-at@eps=0.05", "pgd-at@eps=0.1"}
    assert "pgd@0.05" not in results.columns and "worst-case-linf-0.1" in results.columns


def test_every_table_and_curve_is_written(report):
    site = report / "report"
    for name in TABLES:
        assert (site / "tables" / f"{name}.csv").stat().st_size > 0
        json.loads((site / "tables" / f"{name}.json").read_text())
    for name in CURVES:
        for suffix in ("png", "svg"):
            assert (site / "figures" / f"{name}.{suffix}").stat().st_size > 2000
    markdown = (site / "report.md").read_text()
    assert "## Leaderboard at matched benign accuracy" in markdown and re.search(r"\| entry +\|", markdown)
    fgs = pd.read_csv(site / "tables" / "fgs.csv")
    assert set(fgs.reference) == {"standard"} and fgs["eps_ref"].notna().all()


def test_rerunning_the_report_writes_identical_tables(report):
    site = report / "report"
    before = {p.name: p.read_bytes() for p in (site / "tables").iterdir()}
    assert main(["report", "--protocol", "tiny-report", "--workdir", str(report), "--no-progress"]) == 0
    after = {p.name: p.read_bytes() for p in (site / "tables").iterdir()}
    assert before == after and len(before) == 2 * len(TABLES)


def test_report_errors_are_clear(report, capsys):
    assert main(["report", "--protocol", "nothing-here", "--workdir", str(report)]) == 2
    assert "no evaluations stored under protocol 'nothing-here'" in capsys.readouterr().err
    assert main(["report", "--protocol", "tiny-report", "--workdir", str(report),
                 "--match-attack", "nope"]) == 2
    assert "no attack 'nope'" in capsys.readouterr().err


HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--allow-file-access-from-files", "--virtual-time-budget=5000"]


def test_chromium_renders_the_leaderboard_and_every_curve(report, tmp_path):
    index = report / "report" / "index.html"
    dom = subprocess.run([chromium(), *HEADLESS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          index.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    table = re.search(r'<table[^>]*id="table-leaderboard".*?</table>', dom, re.S)
    assert table and table.group(0).count("<tr") >= 3  # header + standard + pgd-at
    images = re.findall(r'<img[^>]*>', dom)
    assert len(images) == len(CURVES)
    assert all('data-state="loaded"' in img for img in images), images
    shot = tmp_path / "report.png"
    subprocess.run([chromium(), *HEADLESS, f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1400,2400",
                    f"--screenshot={shot}", index.as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 10_000
