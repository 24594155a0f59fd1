"""The report's headline: every entry ranked by robust accuracy under the strongest threat model's
worst case, and paired comparisons of every two entries on the same images.

Accuracies are percentages from exact counts (``results.leaderboard.percent_of``), with 95% Wilson
score intervals (Wilson 1927) from ``scipy.stats.binomtest(k, n).proportion_ci``."""

from __future__ import annotations

from itertools import combinations

import pandas as pd

from bench.enums import PseudoAttack
from results.frames import StoreFrames, examples_by_row
from results.leaderboard import audit_badges, exact_count, percent_of
from results.metrics import wilson_interval
from results.paired import Paired, compare
from results.tables import MatchingOptions, final_checkpoints, matched_attack_id, table_attacks


def headline_attack(frames: StoreFrames) -> str | None:
    """The worst case of AutoAttack's threat model when the protocol runs AutoAttack, else the
    matching's default (the Linf worst case; ``tables.matched_attack_id``)."""
    a = frames.attacks
    worst = a[a.attack == PseudoAttack.WORST_CASE].drop_duplicates("attack_id")
    for row in a[a.attack == "autoattack"].drop_duplicates("attack_id").itertuples():
        same = worst[(worst.norm == row.norm) & (worst.eps == row.eps)]
        if len(same):
            return str(same.attack_id.iloc[0])
    return matched_attack_id(frames, MatchingOptions())


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of k successes in n trials, in %."""
    low, high = wilson_interval(k, n)
    return 100 * low, 100 * high


def headline_table(frames: StoreFrames) -> pd.DataFrame:
    """One row per final checkpoint, ranked by robust accuracy (%) under ``headline_attack``
    (ties: higher benign accuracy first), with both accuracies' 95% intervals, the other worst
    cases, AutoAttack, the minimum-norm attacks' median L2 and the audit badge."""
    attack_id = headline_attack(frames)
    finals = final_checkpoints(frames)
    if attack_id is None or finals.empty:
        return pd.DataFrame()
    a = frames.attacks[frames.attacks.evaluation_id.isin(finals.evaluation_id) & frames.attacks.grid_of.isna()]
    shown = table_attacks(frames)
    worst = list(dict.fromkeys(a[a.attack == PseudoAttack.WORST_CASE].attack_id))
    autoattack = list(dict.fromkeys(a[a.attack == "autoattack"].attack_id))
    # the per-norm minimum-norm worst case replaces its member attacks' columns where stored
    summaries = list(dict.fromkeys(a[a.attack == PseudoAttack.MINIMUM_NORM_WORST_CASE.value].attack_id))
    minimum_norm = summaries or list(dict.fromkeys(shown[shown.eps.isna() & (shown.threat == "white-box")].attack_id))
    badges = audit_badges(frames.store)
    rows = []
    for checkpoint in finals.itertuples():
        own = a[a.evaluation_id == checkpoint.evaluation_id].set_index("attack_id")
        if attack_id not in own.index:
            continue
        n = int(checkpoint.n_examples)
        benign = exact_count(checkpoint.benign_accuracy, n)
        robust = exact_count(own.loc[attack_id, "robust_accuracy"], int(own.loc[attack_id, "n_examples"]))
        row = {"label": checkpoint.label, "entry": checkpoint.entry, "defense": checkpoint.defense,
               "arch": checkpoint.arch, "images": n, "benign": percent_of(checkpoint.benign_accuracy, n)}
        row["benign 95% low"], row["benign 95% high"] = wilson(benign, n)
        row[attack_id] = robust * 100 / int(own.loc[attack_id, "n_examples"])
        row["robust 95% low"], row["robust 95% high"] = wilson(robust, int(own.loc[attack_id, "n_examples"]))
        for other in [*worst, *autoattack]:
            if other != attack_id and other in own.index:
                row[other] = percent_of(own.loc[other, "robust_accuracy"], int(own.loc[other, "n_examples"]))
        for name in minimum_norm:
            if name in own.index:
                row[f"{name} median L2"] = own.loc[name, "median_l2"]
        row["audit"] = badges.get(int(checkpoint.checkpoint_id), "not audited")
        rows.append(row)
    table = pd.DataFrame(rows).sort_values([attack_id, "benign", "label"], ascending=[False, False, True])
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.reset_index(drop=True)


def _outcomes(frames: StoreFrames, attack_id: str) -> dict[str, tuple[str, pd.Series]]:
    """Final checkpoint label -> (subset hash, robust outcome per example index) under ``attack_id``."""
    finals = final_checkpoints(frames)
    rows = frames.attacks[(frames.attacks.attack_id == attack_id) & frames.attacks.evaluation_id.isin(finals.evaluation_id)]
    examples = examples_by_row(frames, list(rows.id))
    by_evaluation = dict(zip(rows.evaluation_id, rows.id))
    out = {}
    for checkpoint in finals.itertuples():
        row_id = by_evaluation.get(checkpoint.evaluation_id)
        if row_id in examples:
            e = examples[row_id]
            out[checkpoint.label] = (checkpoint.subset_hash,
                                     pd.Series(e.adv_correct.astype(bool).to_numpy(), index=e.example_index.to_numpy()))
    return out


def paired(frames: StoreFrames, label_a: str, label_b: str, attack_id: str) -> Paired:
    """A versus B under ``attack_id`` on the images both were evaluated on (the same subset)."""
    outcomes = _outcomes(frames, attack_id)
    missing = [label for label in (label_a, label_b) if label not in outcomes]
    if missing:
        raise ValueError(f"no final checkpoint labelled {' or '.join(map(repr, missing))} with {attack_id!r} stored "
                         f"under protocol {frames.protocol} (labels: {', '.join(sorted(outcomes)) or 'none'})")
    (subset_a, a), (subset_b, b) = outcomes[label_a], outcomes[label_b]
    if subset_a != subset_b or not a.index.equals(b.index):
        raise ValueError(f"{label_a} and {label_b} were evaluated on different images; a paired comparison needs "
                         f"the same subset")
    return compare(a.to_numpy(), b.to_numpy())


def paired_table(frames: StoreFrames, attack_id: str | None = None) -> pd.DataFrame:
    """Every pair of final checkpoints evaluated on the same images, in headline order: robust
    accuracy of each (%), A - B in points with its paired bootstrap 95% interval, the discordant
    counts and McNemar's exact p-value (``results.paired``)."""
    attack_id = attack_id or headline_attack(frames)
    if attack_id is None:
        return pd.DataFrame()
    order = list(headline_table(frames).label)
    outcomes = _outcomes(frames, attack_id)
    labels = [label for label in order if label in outcomes]
    rows = []
    for label_a, label_b in combinations(labels, 2):
        (subset_a, a), (subset_b, b) = outcomes[label_a], outcomes[label_b]
        if subset_a != subset_b or not a.index.equals(b.index):
            continue
        result = compare(a.to_numpy(), b.to_numpy())
        rows.append({"A": label_a, "B": label_b, "attack": attack_id, "images": result.n,
                     "A robust": 100 * exact_count(result.accuracy_a, result.n) / result.n,
                     "B robust": 100 * exact_count(result.accuracy_b, result.n) / result.n,
                     "A - B": (result.b - result.c) * 100 / result.n,
                     "95% low": 100 * result.low, "95% high": 100 * result.high,
                     "A only": result.b, "B only": result.c, "McNemar p": result.p_value})
    return pd.DataFrame(rows)


def paired_matrix(pairs: pd.DataFrame) -> pd.DataFrame:
    """The pairs as a matrix of text cells (row minus column): difference, interval, p-value."""
    if pairs.empty:
        return pd.DataFrame()
    labels = list(dict.fromkeys([*pairs.A, *pairs.B]))
    cells = pd.DataFrame("", index=labels, columns=labels, dtype=object)
    for row in pairs.to_dict("records"):
        for first, second, sign in ((row["A"], row["B"], 1), (row["B"], row["A"], -1)):
            low, high = sorted((sign * row["95% low"] + 0.0, sign * row["95% high"] + 0.0))  # no -0.0
            p = format_p(row["McNemar p"])
            cells.loc[first, second] = (f"{sign * row['A - B'] + 0.0:+.1f} [{low:+.1f}, {high:+.1f}] "
                                        f"p{p if p.startswith('<') else '=' + p}")
    for label in labels:
        cells.loc[label, label] = "-"
    cells.index.name = "row - column"
    return cells.reset_index()


def format_p(p: float) -> str:
    """A p-value to 2 significant digits; below 0.001 as '<0.001'."""
    return "<0.001" if p < 1e-3 else f"{p:.2g}"

