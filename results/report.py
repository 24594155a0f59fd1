"""``advarena report``: a static leaderboard site from the store (DESIGN.md, "Data flow").

Writes, under the output folder:
- ``index.html`` and ``report.md``: the leaderboard at matched benign accuracy, the results per
  configuration, seed 000 Table 1 per defense, minimum-norm metrics, seed 002's FGS table, the
  transfer matrix, training cost, the curves, and the protocol and environments;
- ``tables/NAME.csv`` and ``tables/NAME.json`` for every table (deterministic: an unchanged store
  gives identical files);
- ``figures/NAME.png`` and ``.svg`` for every curve."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from results import curves, tables
from results.frames import StoreFrames, load_frames
from results.interop import reference_table
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
    return [
        Section("leaderboard", "Leaderboard at matched benign accuracy",
                "Robust accuracy (%) of each entry at the target benign accuracy, interpolated on the "
                "Pareto front of its sweep values and epoch checkpoints, else its nearest checkpoint "
                f"within {100 * matching.tolerance:.1f} points, else not reachable (no extrapolation).",
                tables.matching_table(frames, matching)),
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
    ]


def _records(table: pd.DataFrame) -> list[dict]:
    return json.loads(table.to_json(orient="records", double_precision=10))


def write_tables(sections: list[Section], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for section in sections:
        section.table.to_csv(folder / f"{section.name}.csv", index=False, float_format="%.4f",
                             lineterminator="\n")
        (folder / f"{section.name}.json").write_text(json.dumps(_records(section.table), indent=1,
                                                                sort_keys=False) + "\n")


def _html_table(table: pd.DataFrame, name: str) -> str:
    if table.empty:
        return "<p class='empty'>No rows: the store holds nothing this table needs.</p>"
    return table.to_html(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}", border=0,
                         classes=["table", name], table_id=f"table-{name}")


def _markdown_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "_No rows._"
    text = table.astype(object).where(table.notna(), "-")
    header = "| " + " | ".join(map(str, text.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in text.columns) + " |"
    body = ["| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |"
            for row in text.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def write_report(store: Store, protocol: str, out: Path, matching: tables.MatchingOptions,
                 fgs_reference: dict[str, str] | None = None) -> Path:
    """Build the whole site under ``out``; returns the path of index.html."""
    frames = load_frames(store, protocol)
    if frames.checkpoints.empty:
        raise ValueError(f"no evaluations stored under protocol {protocol!r}; run 'advarena run' first")
    sections = build_sections(frames, matching, fgs_reference)
    references = reference_table(store)
    if not references.empty:
        sections.append(Section("reported", "Reported elsewhere, not re-evaluated",
                                "Imported RobustBench model_info files: their own numbers under their own "
                                "protocols, shown for orientation; advarena has not attacked these models.",
                                references))
    write_tables(sections, out / "tables")
    figures = curves.draw_all(frames, out / "figures")
    env = Environment(loader=PackageLoader("results", "templates"), autoescape=select_autoescape(["html"]),
                      keep_trailing_newline=True)
    context = {
        "protocol": protocol, "version": frames.version,
        "n_checkpoints": len(frames.checkpoints), "n_final": int(frames.checkpoints.final.sum()),
        "sections": [{"name": s.name, "title": s.title, "caption": s.caption,
                      "html": _html_table(s.table, s.name), "markdown": _markdown_table(s.table)}
                     for s in sections],
        "figures": [{"name": name, "png": paths[0].relative_to(out).as_posix(),
                     "svg": paths[1].relative_to(out).as_posix()} for name, paths in figures.items()],
        "protocol_attacks": frames.attacks.drop_duplicates("attack_id")[["attack_id", "attack", "threat",
                                                                         "norm", "eps"]]
        .to_html(index=False, na_rep="-", border=0, classes=["table", "protocol"]),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.html").write_text(env.get_template("index.html.j2").render(**context))
    (out / "report.md").write_text(env.get_template("report.md.j2").render(**context))
    return out / "index.html"
