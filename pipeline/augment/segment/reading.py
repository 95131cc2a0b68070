"""What the segmentation rows say: condition kinds in a fixed reading order, and the answer.

The rows are those of ``pipeline.augment.segment.results.aggregate`` (or read back from the
stage's ``metrics.json`` with :func:`rows_from_metrics`). Every synthetic condition is judged
against ``real+classical``, the bar issue 28 sets: a synthetic set that does not beat classical
augmentation (and a cheap mixing control) adds nothing. "Beat" means the paired difference's CI
lies above 0, never only a positive mean.

Kept free of matplotlib, scipy and torch on purpose: ``gvae report`` reads this module too.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable

from pipeline.params.segment import CONTROL_KINDS

CLASSICAL = "real+classical"  # the bar: classical augmentation of the real slices alone
# Reading order of the kinds (the forest plot's groups, top to bottom).
KINDS = (
    "real-only", "controls", "joint synthetic", "conditional synthetic", "synthetic-only", "other",
)  # fmt: skip
# The (difference, lo, hi) keys of a row against real+classical and against the best control.
VS_CLASSICAL = ("diff_vs_classical", "diff_classical_lo", "diff_classical_hi")
VS_CONTROL = ("diff_vs_control", "diff_control_lo", "diff_control_hi")


def split_name(name: str) -> tuple[str, str | None, str]:
    """``"real+classical+syn:cgvae/filter"`` -> ``("real+classical+syn", "cgvae", "filter")``.

    Plain string parsing, not ``parse_condition``: rows of older runs must still be readable.
    """
    base, _, recipe = name.partition("/")
    kind, _, model = base.partition(":")
    return kind, model or None, recipe or "mix"


def condition_kind(name: str, conditional: Collection[str] = ()) -> str:
    """The kind (one of ``KINDS``) of condition ``name``.

    ``conditional`` names the mask-conditioned generators; a synthetic condition of any other
    model is a joint (image, mask) one. ``syn:<model>`` (no real slices) is its own kind.
    """
    kind, model, _ = split_name(name)
    if kind == "syn":
        return "synthetic-only"
    if kind.endswith("+syn"):
        return "conditional synthetic" if model in conditional else "joint synthetic"
    if kind in CONTROL_KINDS:
        return "controls"
    if kind in ("real", CLASSICAL):
        return "real-only"
    return "other"


def is_synthetic(name: str) -> bool:
    """Whether condition ``name`` trains on synthetic slices (any syn kind, any recipe)."""
    return split_name(name)[0].endswith("syn")


def ordered_conditions(names: Iterable[str], conditional: Collection[str] = ()) -> list[str]:
    """Distinct ``names`` grouped by kind in ``KINDS`` order, first-seen order within a kind.

    The rows come in run order (the params' condition order, expanded over the models), so a
    kind's conditions keep the order the grid was configured in, the same in every panel.
    """
    seen = list(dict.fromkeys(names))
    return sorted(seen, key=lambda n: (KINDS.index(condition_kind(n, conditional)), seen.index(n)))


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def ci_text(row: dict, keys: tuple[str, str, str]) -> str:
    """``+0.031 [-0.012, +0.074]``: the difference and its CI from ``keys`` of ``row``."""
    d, lo, hi = (row.get(k) for k in keys)
    parts = [f"{v:+.3f}" if _finite(v) else "n/a" for v in (d, lo, hi)]
    return f"{parts[0]} [{parts[1]}, {parts[2]}]"


def _verdict(row: dict, keys: tuple[str, str, str]) -> str:
    """Where ``row``'s CI lies relative to 0, in words."""
    lo, hi = row.get(keys[1]), row.get(keys[2])
    if _finite(lo) and lo > 0:
        return "CI above 0"
    if _finite(hi) and hi < 0:
        return "CI below 0"
    return "CI includes 0"


def _span(values: Iterable[int]) -> str:
    """``3`` or ``3-5``: one value, or the range of several."""
    vals = sorted(set(values))
    return str(vals[0]) if len(vals) == 1 else f"{vals[0]}-{vals[-1]}"


def _size(rows: list[dict]) -> str:
    """``4 training patients (fraction 0.34, 5 test patients, 3 seeds)`` for one fraction."""
    frac, n = rows[0]["fraction"], rows[0].get("n_train_patients")
    head = f"{int(n)} training patient{'' if n == 1 else 's'}" if _finite(n) else None
    details = [f"fraction {frac:g}"] if head else []
    tests = [int(r["n_patients"]) for r in rows if _finite(r.get("n_patients"))]
    seeds = [int(r["n_seeds"]) for r in rows if _finite(r.get("n_seeds"))]
    if tests:
        details.append(f"{_span(tests)} test patients")
    if seeds:
        details.append(f"{_span(seeds)} seed{'' if set(seeds) == {1} else 's'}")
    head = head or f"training fraction {frac:g}"
    return f"{head} ({', '.join(details)})" if details else head


def _synthetic_sentence(syn: list[dict], level: int) -> str:
    """Which synthetic conditions beat real+classical at one size, or the best of them."""
    syn = sorted(syn, key=lambda r: -r[VS_CLASSICAL[0]])
    winners = [r for r in syn if _verdict(r, VS_CLASSICAL) == "CI above 0"]
    # The condition compared with the best control: the best winner, else the best mean.
    best = winners[0] if winners else syn[0]
    if winners:
        named = "; ".join(f"{r['condition']} {ci_text(r, VS_CLASSICAL)}" for r in winners[:3])
        more = f"; and {len(winners) - 3} more" if len(winners) > 3 else ""
        text = (
            f"{len(winners)} of {len(syn)} synthetic condition{'' if len(syn) == 1 else 's'} "
            f"beat {CLASSICAL} ({level}% CI above 0): {named}{more}"
        )
    else:
        text = (
            f"no synthetic condition (of {len(syn)}) beat {CLASSICAL}: best "
            f"{best['condition']}, {ci_text(best, VS_CLASSICAL)} ({_verdict(best, VS_CLASSICAL)})"
        )
    if best.get("best_control") and _finite(best.get(VS_CONTROL[0])):
        text += (
            f"; against the best control ({best['best_control']}) {best['condition']} is "
            f"{ci_text(best, VS_CONTROL)} ({_verdict(best, VS_CONTROL)})"
        )
    return text


def _control_sentence(rows: list[dict]) -> str:
    """How the fraction's best mixing control did against real+classical."""
    names = {r.get("best_control") for r in rows} - {None}
    control = next((r for r in rows if r["condition"] in names), None)
    if control is None or not _finite(control.get(VS_CLASSICAL[0])):
        return "No mixing control ran at this size."
    return (
        f"The best control, {control['condition']}, is {ci_text(control, VS_CLASSICAL)} against "
        f"{CLASSICAL} ({_verdict(control, VS_CLASSICAL)})."
    )


def answer_at(rows: list[dict], level: int = 95) -> str:
    """The answer at one training size: ``rows`` all share one fraction."""
    head = f"At {_size(rows)}"
    if not any(r["condition"] == CLASSICAL for r in rows):
        return f"{head}, {CLASSICAL} did not run: nothing is judged against classical augmentation."
    syn = [r for r in rows if is_synthetic(r["condition"]) and _finite(r.get(VS_CLASSICAL[0]))]
    if not syn:
        return f"{head}, no synthetic condition ran. {_control_sentence(rows)}"
    return f"{head}, {_synthetic_sentence(syn, level)}. {_control_sentence(rows)}"


def answer(rows: list[dict], level: int = 95) -> str:
    """One paragraph: per training size, largest first, did any synthetic condition beat
    ``real+classical`` (CI above 0), which and by how much, and how the best control did.

    Every number comes from ``rows``; differences are paired per patient, ``level``% CIs.
    """
    if not rows:
        return "The segmentation grid has no finished runs."
    fractions = sorted({r["fraction"] for r in rows}, reverse=True)
    return " ".join(answer_at([r for r in rows if r["fraction"] == f], level) for f in fractions)


def rows_from_metrics(metrics: dict) -> list[dict]:
    """The rows of the stage's ``metrics.json`` (``results.metrics_json``), NaN for null.

    ``metrics`` is ``{"f<fraction>": {condition: {column: value}}}``; the rows keep its order.
    """
    rows = []
    for key, conditions in metrics.items():
        if not (key.startswith("f") and isinstance(conditions, dict)):
            raise ValueError(f"not a segmentation metrics record (key {key!r})")
        for cond, values in conditions.items():
            numbers = {k: math.nan if v is None else v for k, v in values.items()}
            # best_control is a name: null means there was none, not a missing number.
            numbers["best_control"] = values.get("best_control")
            rows.append({**numbers, "condition": cond, "fraction": float(key[1:])})
    return rows
