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
TABLES = ("headline", "leaderboard", "paired", "paired-long", "results", "attacks", "minimum-norm", "strength", "fgs",
          "transfer", "training", "environment", "paper-claims")


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


def test_the_headline_ranks_every_final_checkpoint(report):
    headline = pd.read_json(report / "report" / "tables" / "headline.json")
    assert set(headline.label) == {"standard", "pgd-at@eps=0.05", "pgd-at@eps=0.1"}
    robust = headline["worst-case-linf-0.1"]
    assert list(headline["rank"]) == [1, 2, 3] and robust.is_monotonic_decreasing
    for value, low, high in zip(robust, headline["robust 95% low"], headline["robust 95% high"]):
        assert low < value < high and round(value * 120 / 100, 8) % 1 == 0  # k / 120 images, exactly
    pairs = pd.read_csv(report / "report" / "tables" / "paired-long.csv")
    assert len(pairs) == 3 and (pairs["95% low"] <= pairs["A - B"]).all() and (pairs["A - B"] <= pairs["95% high"]).all()
    index = (report / "report" / "index.html").read_text()
    assert index.index("id='table-headline'") < index.index("id='table-leaderboard'") < index.index("id='table-paired'")


def test_every_evaluation_keeps_a_gallery_of_the_same_images(report):
    import sqlite3

    import numpy as np

    db = sqlite3.connect(report / "advarena.db")
    pointers = [json.loads(g) for (g,) in db.execute("select gallery from evaluations")]
    assert len(pointers) == 6 and len({tuple(p["example_index"]) for p in pointers}) == 1
    for pointer in pointers:
        with np.load(report / pointer["file"]) as arrays:
            assert arrays["clean"].shape == (8, 1, 8, 8) and set(pointer["attacks"]) >= {"fgsm", "pgd", "transfer"}
            assert np.abs(arrays["adv/pgd"].astype(float) - arrays["clean"]).max() <= 0.1 + 1e-3  # float16


def test_compare_prints_the_difference_its_interval_and_the_p_value(report, capsys):
    where = ["--protocol", "tiny-report", "--workdir", str(report)]
    assert main(["compare", "standard", "pgd-at@eps=0.1", *where]) == 0
    out = capsys.readouterr().out
    pairs = pd.read_csv(report / "report" / "tables" / "paired-long.csv")
    row = pairs[(pairs.A == "pgd-at@eps=0.1") & (pairs.B == "standard")].iloc[0]
    assert f"{-row['A - B']:+.1f} points" in out and "95% paired bootstrap interval" in out
    assert f"[{-row['95% high']:+.1f}, {-row['95% low']:+.1f}]" in out and "McNemar exact" in out and "p = " in out
    assert main(["compare", "standard", "nobody", *where]) == 2
    assert "no final checkpoint labelled 'nobody'" in capsys.readouterr().err


def test_the_site_uses_no_external_url(report):
    pages = list((report / "report").rglob("*.html"))
    assert len(pages) >= 1 + 2 + 5  # index, 2 defense pages, 5 attack galleries
    for page in pages:
        text = page.read_text()
        assert not re.search(r"(?:src|href)\s*=\s*['\"]?(?:https?:)?//", text), page
        assert "http://" not in text and "https://" not in text and "@import" not in text, page


def _cells(browser, table: str, column: int) -> list[str]:
    return browser.evaluate(f"Array.from(document.querySelectorAll('#{table} tbody tr td:nth-child({column})'))"
                            ".map(c => c.textContent)")


def test_chromium_pages_load_every_image_and_tables_sort_on_click(report, tmp_path):
    """Index, one defense page and one attack gallery in headless Chromium (DevTools over a pipe):
    every image decodes, a click on a header sorts the rows, a second click reverses them, the
    filter hides rows, and the dark scheme is dark. Screenshots go to ADVARENA_SCREENSHOTS if set."""
    import os
    import shutil

    from browser import Browser

    site = report / "report"
    browser = Browser(chromium(), tmp_path / "profile", width=1400, height=1000)
    try:
        pages = {"index": site / "index.html", "defense": site / "defenses" / "pgd-at.html",
                 "gallery": site / "gallery" / "pgd.html"}
        counts = {}
        for name, page in pages.items():
            browser.open(page.as_uri())
            loaded = browser.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])")
            assert loaded and all(width > 0 for _, width in loaded), [src for src, width in loaded if not width]
            counts[name] = len(loaded)
            browser.screenshot(tmp_path / f"{name}.png")
        assert counts["defense"] >= 4 + 2 * (8 + 5 * 16) and counts["gallery"] == 8 + 3 * 16

        browser.open(pages["index"].as_uri())
        headers = browser.evaluate("Array.from(document.querySelectorAll('#table-headline thead th'))"
                                   ".map(th => th.textContent)")
        label, benign = headers.index("label") + 1, headers.index("benign") + 1
        before = _cells(browser, "table-headline", label)
        browser.click(f"#table-headline thead th:nth-child({label})")
        assert _cells(browser, "table-headline", label) == sorted(before)
        browser.click(f"#table-headline thead th:nth-child({label})")
        assert _cells(browser, "table-headline", label) == sorted(before, reverse=True)
        browser.click(f"#table-headline thead th:nth-child({benign})")  # numerically, by data-v
        values = [float(v) for v in _cells(browser, "table-headline", benign)]
        assert values == sorted(values) and len(values) == 3
        browser.click(f"#table-headline thead th:nth-child({benign})")
        values = [float(v) for v in _cells(browser, "table-headline", benign)]
        assert values == sorted(values, reverse=True) and len(set(values)) == 3
        browser.evaluate("(() => { const i = document.querySelector('input[data-table=table-headline]'); "
                         "i.value = 'standard'; i.dispatchEvent(new Event('input')); })()")
        visible = browser.evaluate("Array.from(document.querySelectorAll('#table-headline tbody tr'))"
                                   ".filter(r => !r.hidden).length")
        assert visible == 1
    finally:
        browser.close()
    dark = Browser(chromium(), tmp_path / "profile-dark", dark=True)
    try:
        dark.open(pages["index"].as_uri())
        background = dark.evaluate("getComputedStyle(document.body).backgroundColor")
        assert sum(map(int, re.findall(r"\d+", background)[:3])) < 3 * 60, background
        dark.screenshot(tmp_path / "index-dark.png")
    finally:
        dark.close()
    for shot in tmp_path.glob("*.png"):
        assert shot.stat().st_size > 20_000
    if os.environ.get("ADVARENA_SCREENSHOTS"):
        target = os.environ["ADVARENA_SCREENSHOTS"]
        os.makedirs(target, exist_ok=True)
        for shot in tmp_path.glob("*.png"):
            shutil.copy(shot, target)
