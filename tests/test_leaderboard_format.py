"""The terminal leaderboard's layout and numbers (``results.leaderboard``), on a frame shaped like
the full protocol's (every attack column, AutoAttack, long labels and audit badges)."""

import pandas as pd

from results.leaderboard import TERMINAL_WIDTH, exported, format_table, key_columns, percent_of, render, significant

ATTACKS = ["fgsm-linf-0.3", "pgd40-linf-0.3", "mim10-linf-0.3", "fgm-l2-2.0", "pgd40-l2-2.0",
           "transfer-pgd40-linf-0.3 (black-box)", "apgd-ce-linf-0.3", "noise-linf-0.3", "autoattack-linf-0.3"]


def full_table() -> pd.DataFrame:
    rows = []
    for i, label in enumerate(["standard", "fast-at-forced-catastrophic-overfitting@eps=0.3@seed12", "trades@beta=6"]):
        row = {"label": label, "defense": label.split("@")[0], "arch": "preact-resnet18", "seed": i,
               "benign": percent_of(0.98199999, 1000)}
        row.update({attack: percent_of(0.319 + i / 10, 1000) for attack in ATTACKS})
        row.update({"deepfool-l2 median L2": 1.2300000190734863, "deepfool-linf median L2": 0.0912345,
                    "cw-l2 median L2": 1.01, "worst-case-linf-0.3": 30.0, "worst-case-l2-2": 12.5,
                    "sec/epoch": 12.3456789, "audit": "reproduced [!ce-cw-disagree !noise-beats-gradient !fgsm-beats-pgd]"})
        rows.append(row)
    return pd.DataFrame(rows)


def test_percentages_come_from_exact_counts():
    assert percent_of(0.98199999, 1000) == 98.2 and repr(percent_of(0.31900000000000002, 1000)) == "31.9"
    assert percent_of(float("nan"), 10) != percent_of(float("nan"), 10)  # NaN stays missing


def test_norms_keep_three_significant_digits():
    assert [significant(v) for v in (2.2, 0.0912345, 12.3456, 123.45, 1234.5, 0.0, 1.0)] == \
        ["2.20", "0.0912", "12.3", "123", "1.23e+03", "0", "1.00"]


def test_the_default_table_fits_120_columns_and_wide_shows_everything():
    table = full_table()
    narrow = format_table(table, "full")
    assert max(map(len, narrow.splitlines())) <= TERMINAL_WIDTH
    assert key_columns(table) == ["label", "benign", "worst-case-linf-0.3", "worst-case-l2-2", "autoattack-linf-0.3",
                                  "deepfool-l2 median L2", "deepfool-linf median L2", "cw-l2 median L2", "audit"]
    assert "98.2" in narrow and "1.23" in narrow and "AA linf 0.3" in narrow and "[3 flags]" in narrow
    wide = render(table, wide=True)
    assert all(attack in wide for attack in ATTACKS) and "!fgsm-beats-pgd]" in wide and "0.0912" in wide
    markdown = render(table, fmt="markdown").splitlines()
    assert len(markdown) == 2 + len(table) and markdown[0].count("|") == len(key_columns(table)) + 1


def test_exported_numbers_carry_no_float32_noise():
    csv = exported(full_table()).to_csv(index=False)
    assert "98.2," in csv and "1.23," in csv and "0000001" not in csv and "12.346" in csv
