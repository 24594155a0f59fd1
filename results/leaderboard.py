"""The leaderboard: a pandas table built from the store by SQL, never by attacking again.

Accuracies are percentages computed from exact counts (robust images / images, e.g. 982/1000 ->
98.2), never from the stored float32 fractions' arithmetic."""

from __future__ import annotations

import math
import textwrap

import pandas as pd
from sqlalchemy import func, select

from results.schema import AttackRow, AuditRow, CheckpointRow, EpochRow, Evaluation, TrainingRun
from results.store import Store


#: Attacks whose rows feed curves and the report's tables, not a leaderboard column (the FGS
#: line's median is an Linf size; the report shows its eps_ref table).
CURVE_ONLY_ATTACKS = ("fgs-line",)


def latest_evaluations(store: Store, protocol: str) -> pd.DataFrame:
    """One row per final defense checkpoint: its newest evaluation under the protocol's newest version."""
    query = (select(Evaluation.id.label("evaluation_id"), Evaluation.protocol_version,
                    Evaluation.benign_accuracy, Evaluation.n_examples, Evaluation.created_at,
                    TrainingRun.id.label("run_id"),
                    TrainingRun.label, TrainingRun.defense, TrainingRun.seed, CheckpointRow.arch,
                    CheckpointRow.id.label("checkpoint_id"))
             .join(CheckpointRow, Evaluation.checkpoint_id == CheckpointRow.id)
             .join(TrainingRun, CheckpointRow.run_id == TrainingRun.id)
             .where(Evaluation.protocol == protocol, CheckpointRow.final.is_(True),
                    TrainingRun.role == "defense"))
    with store.connect() as conn:
        frame = pd.read_sql(query, conn)
    if frame.empty:
        return frame
    frame = frame[frame.protocol_version == frame.protocol_version.max()]
    frame = frame.sort_values(["created_at", "evaluation_id"]).groupby("run_id", as_index=False).last()
    return frame.sort_values("run_id").reset_index(drop=True)


def leaderboard(store: Store, protocol: str) -> pd.DataFrame:
    """Benign accuracy, robust accuracy per attack (black-box columns marked), sec/epoch; in %."""
    evaluations = latest_evaluations(store, protocol)
    if evaluations.empty:
        return pd.DataFrame()
    ids = [int(i) for i in evaluations.evaluation_id]
    with store.connect() as conn:
        attacks = pd.read_sql(select(AttackRow.evaluation_id, AttackRow.id, AttackRow.attack_id,
                                     AttackRow.threat, AttackRow.eps, AttackRow.robust_accuracy,
                                     AttackRow.n_examples, AttackRow.median_l2)
                              .where(AttackRow.evaluation_id.in_(ids), AttackRow.grid_of.is_(None),
                                     AttackRow.attack.notin_(CURVE_ONLY_ATTACKS)), conn)
        timing = pd.read_sql(select(EpochRow.run_id, func.avg(EpochRow.seconds).label("sec_per_epoch"))
                             .where(EpochRow.run_id.in_([int(r) for r in evaluations.run_id]))
                             .group_by(EpochRow.run_id), conn)
    order = attacks.sort_values("id").drop_duplicates("attack_id")
    names = {row.attack_id: _column_name(row) for row in order.itertuples()}
    # bounded attacks: robust accuracy in %; minimum-norm attacks (no eps): median L2 of the
    # perturbations that fooled correctly classified points
    percent = [percent_of(f, n) for f, n in zip(attacks.robust_accuracy, attacks.n_examples)]
    attacks["value"] = pd.Series(percent, index=attacks.index).where(attacks.eps.notna(), attacks.median_l2)
    robust = attacks.pivot(index="evaluation_id", columns="attack_id", values="value")
    robust = robust[list(order.attack_id)].rename(columns=names)
    table = evaluations.merge(timing, on="run_id", how="left").set_index("evaluation_id")
    badges = audit_badges(store)
    table["audit"] = [badges.get(int(c), "-") for c in table.checkpoint_id]
    table["benign_accuracy"] = [percent_of(f, n) for f, n in zip(table.benign_accuracy, table.n_examples)]
    table = table[["label", "defense", "arch", "seed", "benign_accuracy", "sec_per_epoch", "audit"]].join(robust)
    columns = ["label", "defense", "arch", "seed", "benign_accuracy", *names.values(), "sec_per_epoch", "audit"]
    return table[columns].rename(columns={"benign_accuracy": "benign", "sec_per_epoch": "sec/epoch"}
                                 ).reset_index(drop=True)


def significant(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits, trailing zeros kept (2.2 -> "2.20", 0.0912 ->
    "0.0912", 1234.5 -> "1.23e+03"): norms and seconds read alike in every table."""
    value = float(value)
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    magnitude = math.floor(math.log10(abs(value)))
    if not -4 <= magnitude < digits:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{max(0, digits - 1 - magnitude)}f}"


def exact_count(fraction: float, n: int) -> int:
    """The count behind a stored fraction of ``n`` images (stored as float32 arithmetic left it)."""
    return int(round(float(fraction) * int(n)))


def percent_of(fraction: float, n: int) -> float:
    """A stored fraction of ``n`` images as a percentage from its exact count: 0.98199999 of
    1000 -> 982 * 100 / 1000 = 98.2."""
    if pd.isna(fraction):
        return float("nan")
    return exact_count(fraction, n) * 100 / int(n)


def audit_badges(store: Store) -> dict[int, str]:
    """Per checkpoint id, its newest reproducibility audit as a badge: the verdict, then the
    gradient-masking flags it raised (``bench.audit.masking``), e.g. "reproduced" or
    "reproduced [!ce-cw-disagree]"."""
    with store.connect() as conn:
        audits = pd.read_sql(select(AuditRow.checkpoint_id, AuditRow.verdict, AuditRow.flags)
                             .where(AuditRow.kind == "reproduce").order_by(AuditRow.id), conn)
    badges = {}
    for row in audits.itertuples():  # later rows overwrite earlier ones
        raised = list(dict.fromkeys(f["check"] for f in (row.flags or []) if f.get("flagged")))
        badges[int(row.checkpoint_id)] = row.verdict + (f" [!{' !'.join(raised)}]" if raised else "")
    return badges


def _column_name(row) -> str:
    if row.threat == "black-box":
        return f"{row.attack_id} (black-box)"
    if pd.isna(row.eps):
        return f"{row.attack_id} median L2"
    return row.attack_id


#: The terminal's width the default table must fit.
TERMINAL_WIDTH = 120


def key_columns(table: pd.DataFrame) -> list[str]:
    """The columns of the default (narrow) table: label, benign accuracy, every threat model's
    worst case, AutoAttack, minimum-norm medians, audit."""
    keep = ["label", "benign"]
    keep += [c for c in table.columns if str(c).startswith("worst-case-")]
    keep += [c for c in table.columns if str(c).startswith("autoattack")]
    # the per-norm minimum-norm worst case first: it is the one kept when the table must narrow
    medians = [c for c in table.columns if str(c).endswith("median L2")]
    keep += sorted(medians, key=lambda c: not str(c).startswith("minimum-norm-"))
    return [*dict.fromkeys(keep), "audit"]


def short_name(column: str) -> str:
    """A narrow header for the terminal: ``worst-case-linf-0.3`` -> ``worst linf 0.3``."""
    if column.startswith("worst-case-"):
        norm, _, eps = column.removeprefix("worst-case-").partition("-")
        return f"worst {norm} {eps}"
    if column.startswith("autoattack-"):
        norm, _, eps = column.removeprefix("autoattack-").partition("-")
        return f"AA {norm} {eps}"
    return column.replace(" median L2", " med L2")


def _badge(text: object, width: int) -> str:
    """An audit badge within ``width``: "reproduced [!a !b !c]" becomes "reproduced [3 flags]"."""
    text = str(text)
    verdict, _, flags = text.partition(" [")
    if len(text) <= width or not flags:
        return _clip(text, width)
    return _clip(f"{verdict} [{flags.count('!')} flag{'s' if flags.count('!') > 1 else ''}]", width)


def _clip(text: object, width: int) -> str:
    text = str(text)
    return text if len(text) <= width else text[:width - 3] + "..."


def _text(shown: pd.DataFrame, clip: dict[str, int] | None) -> pd.DataFrame:
    """Every cell as text: accuracies to one decimal, norms and seconds to three significant
    digits; label and audit left-aligned and, with ``clip``, clipped to those widths."""
    text = shown.astype(object).copy()
    for column in shown.columns:
        values = shown[column]
        if column == "seed" or not pd.api.types.is_float_dtype(values):
            text[column] = ["-" if pd.isna(v) else str(v) for v in values]
        elif "L2" in str(column) or column == "sec/epoch":
            text[column] = ["-" if pd.isna(v) else significant(v) for v in values]
        else:
            text[column] = ["-" if pd.isna(v) else f"{v:.1f}" for v in values]
    for column in ("label", "audit"):
        shorten = _badge if column == "audit" else _clip
        clipped = [shorten(v, clip[column]) if clip else str(v) for v in text[column]]
        longest = max([len(column), *map(len, clipped)])
        text[column] = [v.ljust(longest) for v in clipped]
    text.columns = [str(c).ljust(len(text[c].iloc[0])) if c in ("label", "audit") else c for c in text.columns]
    return text


#: Label and audit widths tried, widest first, until the key columns fit the terminal.
CLIP_WIDTHS = ((28, 30), (22, 22), (18, 16), (14, 12))


def render(table: pd.DataFrame, wide: bool = False, fmt: str = "table") -> str:
    """The leaderboard as text: ``table`` (pandas ``to_string``) or ``markdown`` (``to_markdown``).
    ``wide``: every column, nothing clipped. Otherwise the key columns, fitting ``TERMINAL_WIDTH``:
    long labels and badges are clipped, minimum-norm columns after the first left to ``--wide``,
    and labels and badges clipped narrower, until the table fits."""
    def draw(text: pd.DataFrame) -> str:
        if fmt == "markdown":
            return text.to_markdown(index=False, disable_numparse=True)
        return text.to_string(index=False, justify="right")

    if wide:
        return draw(_text(table, None))
    columns = key_columns(table)
    norms = [c for c in columns if str(c).endswith("median L2")]
    fewest = min(len(norms), 1)
    # widest labels and badges first; then minimum-norm columns after the first go to --wide;
    # then narrower labels and badges
    attempts = [(CLIP_WIDTHS[0], len(norms)), *((CLIP_WIDTHS[1], k) for k in range(len(norms), fewest - 1, -1)),
                *((widths, fewest) for widths in CLIP_WIDTHS[2:])]
    for (label_width, audit_width), kept in attempts:
        shown = table[[c for c in columns if c not in norms[kept:]]].rename(columns=short_name)
        out = draw(_text(shown, {"label": label_width, "audit": audit_width}))
        if fmt == "markdown" or max(map(len, out.splitlines())) <= TERMINAL_WIDTH:
            break
    return out


def exported(table: pd.DataFrame) -> pd.DataFrame:
    """The table for CSV and JSON: accuracies as computed from exact counts, norms to six
    significant digits and seconds to milliseconds (float32 noise beyond that means nothing)."""
    out = table.copy()
    for column in out.columns:
        if "L2" in str(column):
            out[column] = [v if pd.isna(v) else float(f"{v:.6g}") for v in out[column]]
        elif column == "sec/epoch":
            out[column] = out[column].round(3)
    return out


def format_table(table: pd.DataFrame, protocol: str, wide: bool = False) -> str:
    """The terminal leaderboard: a wrapped header and ``render``'s table."""
    if table.empty:
        return f"no evaluations stored under protocol {protocol!r}"
    header = (f"Leaderboard, protocol {protocol}: accuracy in % on the eval subset (robust columns: accuracy "
              "under that attack, 'worst' the per-image worst case of a threat model; 'L2' columns: median "
              "size of a minimum-norm attack's successful perturbations, in [0, 1] pixel units)"
              + ("" if wide else "; --wide shows every attack"))
    return textwrap.fill(header, TERMINAL_WIDTH) + "\n" + render(table, wide)
