"""The segmentation figures: the forest plot (the headline) and Dice against training-set size.

``forest.png``: one row per condition, its Dice difference to ``real+classical`` paired per
patient with its CI, one panel per training size, a line at 0. It answers the question the grid
asks (does synthetic data beat classical augmentation?) at a glance; the Dice-vs-size plot
shows the absolute level. Both are pure functions of the aggregated rows
(``pipeline.augment.segment.results.aggregate``) plus a thin writer, drawn with matplotlib's
object API on the Agg canvas: no display, no pyplot global state.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from common.atomic import atomic_path
from pipeline.augment.segment.reading import (
    CLASSICAL,
    KINDS,
    VS_CLASSICAL,
    condition_kind,
    ordered_conditions,
    split_name,
)

# One colour per kind in the forest plot, one line style per kind in the Dice-vs-size plot.
KIND_COLOURS = {
    "real-only": "#333333", "controls": "#8c564b", "joint synthetic": "#1f77b4",
    "conditional synthetic": "#d62728", "synthetic-only": "#9467bd", "other": "#7f7f7f",
}  # fmt: skip
KIND_LINESTYLES = {
    "real-only": "-", "controls": "--", "joint synthetic": ":",
    "conditional synthetic": (0, (6, 2, 1, 2, 1, 2)), "synthetic-only": "-.", "other": "-",
}  # fmt: skip
# Dice vs size: colour by generator (the same model keeps its colour across kinds and recipes),
# marker by how its slices are used; the baselines and controls have fixed colours.
MODEL_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:olive",
                 "tab:cyan")  # fmt: skip
NAMED_COLOURS = {
    "real": "black", CLASSICAL: "tab:gray",
    "real+classical+carvemix": "tab:brown", "real+classical+cutmix": "tab:pink",
}  # fmt: skip
VARIANT_MARKERS = {
    ("real+syn", "mix"): "o", ("real+classical+syn", "mix"): "s",
    ("real+syn", "pretrain"): "<", ("real+classical+syn", "pretrain"): "^",
    ("real+syn", "filter"): "d", ("real+classical+syn", "filter"): "D",
    ("syn", "mix"): "v", ("syn", "filter"): "X",
}  # fmt: skip


@dataclass(frozen=True)
class ForestPanel:
    """One training size: ``points[i]`` is ``(diff, lo, hi)`` of the layout's ``conditions[i]``
    against ``real+classical``, NaNs where that condition (or real+classical) did not run."""

    fraction: float
    n_train_patients: int | None
    title: str
    points: tuple[tuple[float, float, float], ...]


@dataclass(frozen=True)
class ForestLayout:
    """What the forest plot shows: rows (top to bottom) with their kinds, and the panels."""

    conditions: tuple[str, ...]
    kinds: tuple[str, ...]
    panels: tuple[ForestPanel, ...]


def _float(v) -> float:
    return float(v) if isinstance(v, (int, float)) else math.nan


def forest_layout(rows: list[dict], conditional: Collection[str] = ()) -> ForestLayout:
    """The forest plot's rows and panels from the aggregated ``rows``.

    One row per condition except ``real+classical`` (the reference line at 0), grouped by kind
    (``reading.KINDS``); one panel per fraction, the largest training size first, titled with
    its number of training patients when the rows give it. ``conditional`` names the
    mask-conditioned generators (their conditions form their own group).
    """
    names = ordered_conditions((r["condition"] for r in rows), conditional)
    names = [n for n in names if n != CLASSICAL]
    panels = []
    for frac in sorted({r["fraction"] for r in rows}, reverse=True):
        at = {r["condition"]: r for r in rows if r["fraction"] == frac}
        n = next((r.get("n_train_patients") for r in at.values()), None)
        n = int(n) if isinstance(n, (int, float)) and math.isfinite(n) else None
        title = f"fraction {frac:g}"
        if n is not None:
            title = f"{n} training patient{'' if n == 1 else 's'}\n({title})"
        points = tuple(
            tuple(_float(at[c].get(k)) for k in VS_CLASSICAL) if c in at else (math.nan,) * 3
            for c in names
        )
        panels.append(ForestPanel(float(frac), n, title, points))
    kinds = tuple(condition_kind(n, conditional) for n in names)
    return ForestLayout(tuple(names), kinds, tuple(panels))


def _x_limits(layout: ForestLayout) -> tuple[float, float]:
    """Symmetric limits around 0 that hold every CI (0 stays in the middle of each panel)."""
    ends = [abs(v) for p in layout.panels for pt in p.points for v in pt if math.isfinite(v)]
    half = 1.15 * max(ends) if ends and max(ends) > 0 else 0.1
    return -half, half


def _shade_groups(ax, kinds: tuple[str, ...]) -> None:
    """A light band behind every other kind and a rule between kinds, so groups read apart."""
    starts = [i for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
    for g, start in enumerate(starts):
        end = starts[g + 1] if g + 1 < len(starts) else len(kinds)
        if g % 2:
            ax.axhspan(start - 0.5, end - 0.5, color="0.94", zorder=0, linewidth=0)
        if g:
            ax.axhline(start - 0.5, color="0.75", linewidth=0.6, zorder=1)


def _draw_panel(ax, panel: ForestPanel, layout: ForestLayout) -> None:
    """One panel: a point and CI bar per condition, hollow when the CI includes 0."""
    _shade_groups(ax, layout.kinds)
    ax.axvline(0, color="0.2", linewidth=0.9, zorder=2)
    for y, ((d, lo, hi), kind) in enumerate(zip(panel.points, layout.kinds, strict=True)):
        if not math.isfinite(d):
            ax.text(0.98, y, "not run", transform=ax.get_yaxis_transform(), ha="right",
                    va="center", fontsize=7, color="0.5")  # fmt: skip
            continue
        colour = KIND_COLOURS[kind]
        excludes_zero = (math.isfinite(lo) and lo > 0) or (math.isfinite(hi) and hi < 0)
        err = [[d - lo], [hi - d]] if math.isfinite(lo) and math.isfinite(hi) else None
        ax.errorbar([d], [y], xerr=err, fmt="o", color=colour, ms=5, capsize=2.5, elinewidth=1.4,
                    mfc=colour if excludes_zero else "white", mec=colour, zorder=3)  # fmt: skip
    ax.set_title(panel.title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="x", labelsize=8)


def render_forest(layout: ForestLayout, level: int = 95) -> Figure:
    """Draw ``layout``: panels side by side sharing the condition axis and the x range."""
    n_rows, n_panels = max(1, len(layout.conditions)), max(1, len(layout.panels))
    # At least 6.4 in wide: the one-line title needs it when there is a single panel.
    width = max(6.4, 2.6 + 2.5 * n_panels)
    fig = Figure(figsize=(width, 1.7 + 0.27 * n_rows), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, sharey=True, sharex=True, squeeze=False)[0]
    if not layout.conditions or not layout.panels:
        axes[0].text(0.5, 0.5, f"no condition to compare with {CLASSICAL}", ha="center",
                     va="center", transform=axes[0].transAxes)  # fmt: skip
        axes[0].set_axis_off()
        return fig
    for ax, panel in zip(axes, layout.panels, strict=True):
        _draw_panel(ax, panel, layout)
    axes[0].set_yticks(range(len(layout.conditions)), layout.conditions, fontsize=8)
    for tick, kind in zip(axes[0].get_yticklabels(), layout.kinds, strict=True):
        tick.set_color(KIND_COLOURS[kind])
    axes[0].set_ylim(len(layout.conditions) - 0.5, -0.5)  # the first condition on top
    axes[0].set_xlim(*_x_limits(layout))
    for ax in axes:
        ax.set_xlabel(f"Dice - {CLASSICAL}", fontsize=8)
    fig.suptitle(
        f"Test Dice difference to {CLASSICAL}, paired per patient, {level}% bootstrap CI",
        fontsize=10,
    )
    present = list(dict.fromkeys(layout.kinds))
    handles = [Line2D([], [], marker="o", linestyle="", color=KIND_COLOURS[k], label=k)
               for k in KINDS if k in present]  # fmt: skip
    handles.append(Line2D([], [], marker="o", linestyle="", color="0.4", mfc="white",
                          label="hollow: CI includes 0"))  # fmt: skip
    # One legend row when the panels are wide enough for it, else rows of three.
    ncols = len(handles) if n_panels >= 3 else 3
    fig.legend(handles=handles, loc="outside lower center", ncols=ncols, fontsize=8,
               frameon=False)  # fmt: skip
    return fig


def conditional_models(names: Iterable[str]) -> frozenset[str]:
    """The mask-conditioned generators among the models of condition ``names``.

    Read from the model registry (a model class's ``conditional``); a name the registry does
    not know (a run of a model since removed) counts as joint.
    """
    from models.registry import available, lookup  # torch: only the stage's writer needs it

    models = {m for m in (split_name(n)[1] for n in names) if m}
    known = set(available())
    return frozenset(m for m in models if m in known and lookup(m)[0].conditional)


def plot_forest(
    rows: list[dict], dest: Path, level: int = 95, conditional: Collection[str] | None = None
) -> ForestLayout:
    """Write the forest plot of ``rows`` to ``dest`` (PNG, atomically); return its layout.

    ``conditional`` defaults to the registry's mask-conditioned models (``conditional_models``).
    """
    if conditional is None:
        conditional = conditional_models(r["condition"] for r in rows)
    layout = forest_layout(rows, conditional)
    fig = render_forest(layout, level)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
    return layout


def line_styles(names: Iterable[str], conditional: Collection[str] = ()) -> dict[str, dict]:
    """``{condition: {color, linestyle, marker}}`` for the Dice-vs-size plot.

    Line style by kind, colour by generator (fixed colours for the baselines and controls),
    marker by how the synthetic slices are used: colours may repeat, the triple does not
    (up to ``len(MODEL_COLOURS)`` generators).
    """
    names = list(dict.fromkeys(names))
    models = list(dict.fromkeys(m for m in (split_name(n)[1] for n in names) if m))
    styles = {}
    for i, name in enumerate(names):
        kind_name, model, recipe = split_name(name)
        kind = condition_kind(name, conditional)
        if model:
            colour = MODEL_COLOURS[models.index(model) % len(MODEL_COLOURS)]
        else:
            colour = NAMED_COLOURS.get(name, MODEL_COLOURS[i % len(MODEL_COLOURS)])
        styles[name] = {
            "color": colour,
            "linestyle": KIND_LINESTYLES[kind],
            "marker": VARIANT_MARKERS.get((kind_name, recipe), "o"),
        }
    return styles


def plot_dice_vs_size(
    rows: list[dict], dest: Path, level: int = 95, conditional: Collection[str] = ()
) -> None:
    """Dice vs number of training patients, one line per condition with its CI band."""
    names = list(dict.fromkeys(r["condition"] for r in rows))
    styles = line_styles(names, conditional)
    # Many conditions (the `full` grid has ~40): the legend goes beside the axes, not over them.
    outside = len(names) > 10
    fig = Figure(figsize=(7.5 + (3.0 if outside else 0), 4.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for cond in names:
        pts = sorted((r for r in rows if r["condition"] == cond), key=lambda r: r["fraction"])
        x = [r["n_train_patients"] for r in pts]
        y = np.array([r["dice"] for r in pts], float)
        lo = np.array([r["dice_lo"] for r in pts], float)
        hi = np.array([r["dice_hi"] for r in pts], float)
        style = styles[cond]
        (line,) = ax.plot(x, y, label=cond, ms=5, **style)
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
        # With one fraction a band has no width: show the interval as an error bar too.
        ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt="none", ecolor=line.get_color(), capsize=3)
    ax.set_xlabel("real training patients")
    ax.set_ylabel(f"test Dice (mean over patients, {level}% CI)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if outside:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  ncols=2 if len(names) > 24 else 1)  # fmt: skip
    else:
        ax.legend(fontsize=7, loc="best")
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
