"""The report's curves (matplotlib, PNG + SVG), drawn from stored rows only.

1. robustness curve: benign accuracy vs rho (mean L2 of successful minimum-norm perturbations,
   C&W when the protocol has it, else DeepFool), one line per suite entry over its sweep values
   and epoch checkpoints (seed 000 fig. 5);
2. accuracy vs L2 budget from per-example minimum norms (seed 000 fig. 4);
3. accuracy vs eps under PGD (the protocol's eps grid) and along the FGS line (seeds 001, 003, 004);
4. accuracy vs PGD iterations, from each point's first fooling iteration in one run (seeds 001, 003)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from cycler import cycler  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from results.frames import StoreFrames, examples_by_row  # noqa: E402
from results.metrics import accuracy_by_iteration, accuracy_within, doubling_iterations  # noqa: E402
from bench.enums import PseudoAttack  # noqa: E402
from results.tables import RHO_ATTACKS, final_checkpoints, protocol_attacks  # noqa: E402

#: Curve names, in the order the report shows them.
CURVES = ("robustness-curve", "accuracy-vs-l2-budget", "accuracy-vs-eps", "accuracy-vs-iterations")


def _save(figure: plt.Figure, folder: Path, name: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.png", folder / f"{name}.svg"]
    figure.savefig(paths[0], dpi=100, bbox_inches="tight", metadata={"Software": None})
    figure.savefig(paths[1], bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(figure)
    return paths


def _empty(axis: plt.Axes, message: str) -> None:
    axis.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=axis.transAxes)
    axis.set_axis_off()


def _finish(axis: plt.Axes, xlabel: str, ylabel: str | None, title: str, legend: bool = True) -> None:
    axis.set_xlabel(xlabel)
    if ylabel:
        axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if legend:
        axis.legend(fontsize=7, ncol=2)


def rho_attack(frames: StoreFrames) -> str | None:
    """The minimum-norm L2 row the robustness and budget curves use: the L2 minimum-norm worst
    case where the protocol stores it, else C&W if stored, else DeepFool-L2."""
    a = frames.attacks[frames.attacks.grid_of.isna()]
    l2 = a.config.map(lambda c: c.get("threat_norm", "l2") == "l2").astype(bool)
    summary = a[(a.attack == PseudoAttack.MINIMUM_NORM_WORST_CASE.value) & l2].attack_id
    if len(summary):
        return str(summary.iloc[0])
    attacks = protocol_attacks(frames)
    for name in RHO_ATTACKS:
        l2 = attacks.config.map(lambda c: c.get("threat_norm", "l2") == "l2").astype(bool)
        ids = attacks[(attacks.attack == name) & attacks.eps.isna() & l2].attack_id
        if len(ids):
            return str(ids.iloc[0])
    return None


def robustness_curve(frames: StoreFrames, folder: Path) -> list[Path]:
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    attack_id = rho_attack(frames)
    if attack_id is None:
        _empty(axis, "no minimum-norm L2 attack in this protocol")
        return _save(figure, folder, CURVES[0])
    a = frames.attacks[frames.attacks.attack_id == attack_id]
    rho = dict(zip(a.evaluation_id, a.mean_l2))
    for entry, group in frames.checkpoints.groupby("entry", sort=False):
        group = group[group.evaluation_id.map(lambda e: e in rho and pd.notna(rho[e])).astype(bool)]
        if group.empty:
            continue
        finals = group[group.final.astype(bool)].sort_values(["sweep_value", "seed"], na_position="first")
        line, = axis.plot([rho[e] for e in finals.evaluation_id], 100 * finals.benign_accuracy, marker="o",
                          label=entry)
        epochs = group[~group.final.astype(bool)]
        if len(epochs):
            axis.scatter([rho[e] for e in epochs.evaluation_id], 100 * epochs.benign_accuracy, s=12,
                         alpha=0.45, color=line.get_color())
    _finish(axis, f"rho: mean L2 of successful {attack_id} perturbations", "benign accuracy (%)",
            "Robustness curve (line: sweep values; dots: epoch checkpoints)")
    return _save(figure, folder, CURVES[0])


def _final_examples(frames: StoreFrames, attack_ids: list[str]) -> dict[tuple[str, str], pd.DataFrame]:
    """(label, attack id) -> per-example rows, for the final checkpoints."""
    finals = final_checkpoints(frames)
    a = frames.attacks[frames.attacks.attack_id.isin(attack_ids) & frames.attacks.evaluation_id.isin(finals.evaluation_id)]
    label_of = dict(zip(finals.evaluation_id, finals.label))
    groups = examples_by_row(frames, list(a.id))
    return {(label_of[r.evaluation_id], r.attack_id): groups[r.id] for r in a.itertuples() if r.id in groups}


def l2_budget_curve(frames: StoreFrames, folder: Path) -> list[Path]:
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    attack_id = rho_attack(frames)
    data = _final_examples(frames, [attack_id]) if attack_id else {}
    if not data:
        _empty(axis, "no minimum-norm L2 attack in this protocol")
        return _save(figure, folder, CURVES[1])
    top = max(float(g.l2[g.success.astype(bool)].quantile(0.99)) if g.success.any() else 0.0 for g in data.values())
    budgets = np.linspace(0.0, max(top, 1e-3), 101)
    for (label, _), examples in data.items():
        axis.plot(budgets, 100 * accuracy_within(examples, budgets, "l2"), label=label)
    _finish(axis, f"L2 budget (per-example minimum norms of {attack_id})", "accuracy (%)", "Accuracy vs L2 budget")
    return _save(figure, folder, CURVES[1])


def eps_curve(frames: StoreFrames, folder: Path) -> list[Path]:
    figure, (pgd_axis, fgs_axis) = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    finals = final_checkpoints(frames)
    a = frames.attacks[frames.attacks.evaluation_id.isin(finals.evaluation_id)]
    parents = sorted(set(a.grid_of.dropna()))
    if parents:
        parent = parents[0]
        rows = a[(a.attack_id == parent) | (a.grid_of == parent)]
        for checkpoint in finals.itertuples():
            own = rows[rows.evaluation_id == checkpoint.evaluation_id].sort_values("eps")
            pgd_axis.plot([0.0, *own.eps], [100 * checkpoint.benign_accuracy, *(100 * own.robust_accuracy)],
                          marker="o", label=checkpoint.label)
        _finish(pgd_axis, "eps", "accuracy (%)", f"{parent} over its eps grid")
    else:
        _empty(pgd_axis, "no eps grid in this protocol")
    lines = _final_examples(frames, list(a[a.attack == "fgs-line"].attack_id.unique()))
    if lines:
        max_eps = float(a[a.attack == "fgs-line"].config.iloc[0].get("max_eps", 0.5))
        grid = np.linspace(0.0, max_eps, 101)
        for (label, _), examples in lines.items():
            fgs_axis.plot(grid, 100 * accuracy_within(examples, grid, "linf"), label=label)
        _finish(fgs_axis, "eps", None, "FGS line (FGSM accuracy at every eps)", legend=False)
    else:
        _empty(fgs_axis, "no FGS line in this protocol")
    return _save(figure, folder, CURVES[2])


def iteration_curve(frames: StoreFrames, folder: Path) -> list[Path]:
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    attacks = protocol_attacks(frames)
    one_restart = attacks.config.map(lambda c: c.get("restarts", 1) == 1).astype(bool)
    pgd = attacks[(attacks.attack == "pgd") & (attacks.norm == "linf") & one_restart]
    if pgd.empty:
        _empty(axis, "no one-restart Linf PGD in this protocol")
        return _save(figure, folder, CURVES[3])
    attack_id = str(pgd.attack_id.iloc[0])
    steps = int(pgd.config.iloc[0]["steps"])
    iterations = doubling_iterations(steps)
    for (label, _), examples in _final_examples(frames, [attack_id]).items():
        axis.plot(iterations, 100 * accuracy_by_iteration(examples, iterations), marker="o", label=label)
    axis.set_xscale("log", base=2)
    axis.set_xticks(iterations, [str(k) for k in iterations])
    _finish(axis, f"{attack_id} iterations (one run, first fooling iterate per point)", "accuracy (%)",
            "Accuracy vs PGD iterations")
    return _save(figure, folder, CURVES[3])


def draw_all(frames: StoreFrames, folder: Path) -> dict[str, list[Path]]:
    """Every curve, as {name: [png, svg]}."""
    drawers = (robustness_curve, l2_budget_curve, eps_curve, iteration_curve)
    # 20 distinct colours, then dashed: suites have more entries than the default 10 colours
    style = cycler(linestyle=["-", "--"]) * cycler(color=plt.get_cmap("tab20").colors)
    with plt.rc_context({"svg.hashsalt": "advarena", "axes.prop_cycle": style}):  # deterministic SVG ids
        return {name: draw(frames, folder) for name, draw in zip(CURVES, drawers)}
