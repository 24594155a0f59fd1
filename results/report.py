"""``advarena report``: a static leaderboard site from the store (docs/design.md, "Data flow").

Writes, under the output folder:
- ``index.html`` and ``report.md``: the ranking under the strongest threat model's worst case,
  the leaderboard at matched benign accuracy, the paired-comparison matrix, the results per
  configuration, seed 000 Table 1 per defense, minimum-norm metrics, seed 002's FGS table, the
  transfer matrix, training cost, the curves, and the protocol and environments;
- ``defenses/ENTRY.html``: one page per suite entry with its rows, curves and gallery;
  ``gallery/ATTACK.html``: one attack's adversarial examples of the same images on every defense;
- pages work offline: no external URL; the small inline script sorts and filters the tables;
- ``tables/NAME.csv`` and ``tables/NAME.json`` for every table (deterministic: an unchanged store
  gives identical files);
- ``figures/NAME.png`` and ``.svg`` for every curve."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

from results import curves, gallery, headline, paper_claims, tables
from results.frames import StoreFrames, load_frames
from results.interop import reference_table
from results.leaderboard import significant
from results.store import Store


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    caption: str
    table: pd.DataFrame


def build_sections(frames: StoreFrames, matching: tables.MatchingOptions,
                   fgs_reference: dict[str, str] | None = None) -> list[Section]:
    long_transfer = tables.transfer_table(frames)
    attack_id = headline.headline_attack(frames)
    pairs = headline.paired_table(frames, attack_id)
    return [
        Section("headline", f"Ranking: robust accuracy under {attack_id}",
                f"Every final checkpoint ranked by its robust accuracy (%) under {attack_id}: per image, "
                "the worst case over every attack of that threat model (AutoAttack's, when the protocol runs "
                "it). Benign and robust accuracy carry 95% Wilson intervals; the other worst cases, "
                "AutoAttack and the minimum-norm attacks' median L2 follow, then the newest audit's badge.",
                headline.headline_table(frames).drop(columns="entry", errors="ignore")),
        Section("leaderboard", "Leaderboard at matched benign accuracy",
                "Robust accuracy (%) of each entry at the target benign accuracy, interpolated on the "
                "Pareto front of its sweep values and epoch checkpoints, else its nearest checkpoint "
                f"within {100 * matching.tolerance:.1f} points, else not reachable (no extrapolation).",
                tables.matching_table(frames, matching)),
        Section("paired", f"Paired comparisons under {attack_id}",
                "Row minus column, in accuracy points on the same images: the difference, its paired "
                "bootstrap 95% interval (10,000 resamples, seed 0) and McNemar's exact p-value on the images "
                "robust for one of the two only. tables/paired-long.csv has the counts.",
                headline.paired_matrix(pairs)),
        Section("results", "Results per configuration",
                "Accuracy (%) of each final checkpoint under every protocol attack and worst case; "
                "mean and std over training seeds; 'median L2' columns are minimum-norm attacks.",
                tables.results_table(frames)),
        Section("attacks", "Per defense: attacks (seed 000, Table 1 layout)",
                "White-box accuracy (%) with its 95% Wilson interval, success rate on clean-correct "
                "points, mean and median L2 of successful perturbations, black-box accuracy of the "
                "transfer attack with the same base attack, benign accuracy, seconds per epoch.",
                tables.attack_table(frames)),
        Section("minimum-norm", "Minimum-norm attacks",
                "Success rate beside rho (mean L2), median L2 and rho_2 = mean ||delta|| / ||x|| "
                "(seed 002 eq. 7), over successful perturbations of clean-correct points.",
                tables.minimum_norm_table(frames)),
        Section("strength", "Evaluation strength: indicators of attack failure and optimality",
                "Per attack: the indicators of attack failure (Pintor et al. 2022) that fired on its own trace "
                "during the evaluation, and for minimum-norm attacks AttackBench's optimality (1: as small "
                "as the per-image best of every attack of that norm; the audit flags attack-suboptimal "
                "below 0.9).",
                tables.strength_table(frames)),
        Section("fgs", "FGS robustness at fractions of eps_ref (seed 002 sec. 4.1)",
                "eps_ref: the eps at which the reference model misclassifies half the images along "
                "the FGS line; accuracy (%) of every model of that architecture at 0.2, 0.5, 1.0 eps_ref.",
                tables.fgs_table(frames, fgs_reference)),
        Section("transfer", "Transfer matrix (sources x targets)",
                "Black-box accuracy (%) of each target under adversarials crafted on each source.",
                tables.transfer_matrix(long_transfer)),
        Section("training", "Training cost",
                "Epochs run, the kept epoch, seconds and forward/backward passes (images) per epoch.",
                tables.training_table(frames)),
        Section("environment", "Environments", "Where the evaluations ran.",
                tables.environment_table(frames)),
    ], pairs


def _records(table: pd.DataFrame) -> list[dict]:
    return json.loads(table.to_json(orient="records", double_precision=10))


def write_tables(sections: list[Section], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for section in sections:
        section.table.to_csv(folder / f"{section.name}.csv", index=False, float_format="%.4f",
                             lineterminator="\n")
        (folder / f"{section.name}.json").write_text(json.dumps(_records(section.table), indent=1,
                                                                sort_keys=False) + "\n")


# -- number formats: accuracies (%) to one decimal, norms and seconds to three significant digits --

def column_kind(name: str, values: pd.Series) -> str:
    """How a column is shown: "int", "accuracy" (%, one decimal), "norm" (three significant
    digits: L2/Linf sizes, rho, eps, seconds), "p" (a p-value) or "text"."""
    name = str(name)
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return "text"
    if pd.api.types.is_integer_dtype(values):
        return "int"
    if name.endswith(" p"):
        return "p"
    if re.search(r"(mean|median) L2|^rho|^eps|sec/|seconds", name):
        return "norm"
    return "accuracy"  # every other number is an accuracy (or a difference of accuracies) in %


def format_value(kind: str, value: object) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "-"
    if kind == "accuracy":
        return f"{float(value):.1f}"
    if kind == "norm":
        return significant(float(value))
    if kind == "p":
        return headline.format_p(float(value))
    if kind == "int":
        return str(int(value))
    return str(value)


def display_frame(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """``table`` with each 'X 95% low' / 'X 95% high' pair shown as one 'X 95% CI' text column;
    returns it and the kind of every column."""
    shown = table.copy()
    for column in list(shown.columns):
        if str(column).endswith(" 95% low") and str(column).replace(" low", " high") in shown.columns:
            high = str(column).replace(" low", " high")
            text = ["-" if pd.isna(a) or pd.isna(b) else f"{a:.1f}-{b:.1f}" for a, b in zip(shown[column], shown[high])]
            position = list(shown.columns).index(column)
            shown = shown.drop(columns=[column, high])
            shown.insert(position, str(column).replace(" low", " CI"), text)
    return shown, {c: column_kind(c, shown[c]) for c in shown.columns}


#: Columns whose values (run labels, suite entries) link to their defense page.
LINKED = ("label", "entry", "row - column", "A", "B")


def html_table(table: pd.DataFrame, name: str, links: dict[str, str] | None = None) -> str:
    """A sortable, filterable HTML table: numeric cells carry their value in ``data-v`` (the page's
    script sorts by it), labels found in ``links`` link to their defense page."""
    if table.empty:
        return "<p class='empty'>No rows: the store holds nothing this table needs.</p>"
    shown, kinds = display_frame(table)
    head = "".join(f"<th scope='col' class='{'num' if kinds[c] not in ('text',) else 'text'}' title='sort'>"
                   f"{escape(str(c))}</th>" for c in shown.columns)
    body = []
    for record in shown.itertuples(index=False):
        cells = []
        for column, value in zip(shown.columns, record):
            kind = kinds[column]
            text = escape(format_value(kind, value))
            if links and column in LINKED and str(value) in links:
                text = Markup(f"<a href='{escape(links[str(value)])}'>{text}</a>")
            numeric = kind != "text" and not pd.isna(value)
            cells.append(f"<td class='num' data-v='{float(value)!r}'>{text}</td>" if numeric else
                         f"<td class='{'num' if kind != 'text' else 'text'}'>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<input class='filter' type='search' placeholder='filter rows' aria-label='filter {escape(name)}' "
            f"data-table='table-{escape(name)}'>"
            f"<div class='scroll'><table class='table sortable {escape(name)}' id='table-{escape(name)}'>"
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def markdown_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "_No rows._"
    shown, kinds = display_frame(table)
    text = pd.DataFrame({c: [format_value(kinds[c], v) for v in shown[c]] for c in shown.columns})
    align = tuple("left" if kinds[c] == "text" else "right" for c in shown.columns)
    return text.to_markdown(index=False, disable_numparse=True, colalign=align)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _subset(frames: StoreFrames, entry: str) -> StoreFrames:
    """The frames of one suite entry's checkpoints only (its curves)."""
    checkpoints = frames.checkpoints[frames.checkpoints.entry == entry].reset_index(drop=True)
    attacks = frames.attacks[frames.attacks.evaluation_id.isin(checkpoints.evaluation_id)].reset_index(drop=True)
    return replace(frames, checkpoints=checkpoints, attacks=attacks)


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("results", "templates"), autoescape=select_autoescape(["html.j2"]),
                      keep_trailing_newline=True)
    env.filters["significant"] = significant
    return env


def write_report(store: Store, protocol: str, out: Path, matching: tables.MatchingOptions,
                 fgs_reference: dict[str, str] | None = None, workdir: Path | None = None) -> Path:
    """Build the whole site under ``out``; returns the path of index.html. ``workdir`` holds the
    evaluations' gallery files (none: the pages show no gallery)."""
    frames = load_frames(store, protocol)
    if frames.checkpoints.empty:
        raise ValueError(f"no evaluations stored under protocol {protocol!r}; run 'advarena run' first")
    sections, pairs = build_sections(frames, matching, fgs_reference)
    references = reference_table(store)
    if not references.empty:
        sections.append(Section("reported", "Reported elsewhere, not re-evaluated",
                                "Imported RobustBench model_info files: their own numbers under their own "
                                "protocols, shown for orientation; advarena has not attacked these models.",
                                references))
    claims = paper_claims.claims_table(tables.final_checkpoints(frames), frames.attacks, frames.training,
                                       next(s.table for s in sections if s.name == "minimum-norm"))
    if not claims.empty:
        sections.append(Section("paper-claims", "Paper vs ours", paper_claims.CAPTION, claims))
    write_tables([*sections, Section("paired-long", "", "", pairs)], out / "tables")
    figures = curves.draw_all(frames, out / "figures")
    env = _environment()
    finals = tables.final_checkpoints(frames)
    entries = list(dict.fromkeys(finals.entry))
    entry_pages = {entry: f"defenses/{slug(entry)}.html" for entry in entries}
    label_links = {**{label: entry_pages[entry] for label, entry in zip(finals.label, finals.entry)}, **entry_pages}
    galleries = _galleries(finals, workdir, out)
    attack_ids = list(dict.fromkeys(a for _, per_attack in galleries.values() for a in per_attack))
    attack_pages = {attack: f"gallery/{slug(attack)}.html" for attack in attack_ids}
    common = {"protocol": protocol, "version": frames.version, "entry_pages": entry_pages,
              "attack_pages": attack_pages}

    def figure_list(drawn: dict[str, list[Path]], base: Path) -> list[dict]:
        return [{"name": name, "png": paths[0].relative_to(base).as_posix(), "svg": paths[1].relative_to(base).as_posix()}
                for name, paths in drawn.items()]

    context = {**common, "root": "",
               "n_checkpoints": len(frames.checkpoints), "n_final": len(finals),
               "sections": [{"name": s.name, "title": s.title, "caption": s.caption,
                             "html": Markup(html_table(s.table, s.name, label_links)),
                             "markdown": markdown_table(s.table)} for s in sections],
               "figures": figure_list(figures, out),
               "protocol_attacks": Markup(html_table(frames.attacks.drop_duplicates("attack_id")[
                   ["attack_id", "attack", "threat", "norm", "eps"]], "protocol"))}
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.html").write_text(env.get_template("index.html.j2").render(**context))
    (out / "report.md").write_text(env.get_template("report.md.j2").render(**context))
    by_name = {s.name: s.table for s in sections}
    for entry in entries:
        labels = list(finals[finals.entry == entry].label)
        own = _subset(frames, entry)
        drawn = curves.draw_all(own, out / "defenses" / "figures" / slug(entry))
        page_tables = []
        for name, title in (("headline", "Ranking rows"), ("leaderboard", "At matched benign accuracy"),
                            ("attacks", "Attacks (seed 000, Table 1 layout)"), ("minimum-norm", "Minimum-norm attacks"),
                            ("paper-claims", "Paper vs ours")):
            table = by_name.get(name, pd.DataFrame())
            key = "entry" if name == "leaderboard" else "label"
            if not table.empty and key in table.columns:
                table = table[table[key].isin([entry] if key == "entry" else labels)]
                page_tables.append({"title": title, "html": Markup(html_table(table, f"{name}", None))})
        page = {**common, "root": "../", "entry": entry, "labels": labels, "tables": page_tables,
                "figures": figure_list(drawn, out / "defenses"),
                "galleries": [{"label": label, "clean": galleries[label][0], "attacks": galleries[label][1]}
                              for label in labels if label in galleries]}
        (out / entry_pages[entry]).write_text(env.get_template("defense.html.j2").render(**page))
    for attack, path in attack_pages.items():
        rows = [{"label": label, "page": label_links.get(label), "clean": clean, "tiles": per_attack[attack]}
                for label, (clean, per_attack) in galleries.items() if attack in per_attack]
        page = {**common, "root": "../", "attack": attack, "rows": rows}
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_text(env.get_template("gallery.html.j2").render(**page))
    return out / "index.html"


def _galleries(finals: pd.DataFrame, workdir: Path | None, out: Path) -> dict[str, tuple[list, dict]]:
    """Label -> (clean tiles, tiles per attack) of every final checkpoint whose gallery file exists."""
    drawn = {}
    if workdir is None:
        return drawn
    for checkpoint in finals.itertuples():
        arrays = gallery.load(workdir, checkpoint.gallery)
        if arrays is not None:
            drawn[checkpoint.label] = gallery.draw(arrays, out, f"gallery/images/{slug(checkpoint.label)}")
    return drawn
