"""Does our ranking of the models agree with the paper's? Kendall's tau over common models.

The paper gives no MMD kernel, bandwidth or sample count and no MS-SSIM protocol, so its values
cannot be compared with ours in absolute terms; the order of the models on one metric can.
Kendall's tau-b (Kendall 1938; tau-b handles ties, Kendall 1945) via ``scipy.stats.kendalltau``,
two-sided p-value (exact for small samples without ties). Both sides are ordered by value, so
whether lower or higher is better does not matter. With 4 models even full agreement gives
p = 1/12: the p-value says how little so few models can show.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from scipy import stats

MIN_MODELS = 3
FEWER = f"n/a (fewer than {MIN_MODELS} models in common)"


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def kendall_agreement(paper: Mapping[str, float], ours: Mapping[str, float]) -> dict:
    """Kendall's tau-b between ``paper`` and ``ours`` (model -> value) over the common models.

    Common: a finite value on both sides. Returns a JSON-ready dict ``{"tau", "p_value", "n",
    "models", "paper_order", "our_order", "note"}``; the orders list the common models by
    ascending value. ``tau`` and ``p_value`` are ``None`` with ``note`` saying why when fewer
    than ``MIN_MODELS`` models are common or one side has a single value throughout.
    """
    models = sorted(m for m in paper if m in ours and _finite(paper[m]) and _finite(ours[m]))
    out = {
        "tau": None,
        "p_value": None,
        "n": len(models),
        "models": models,
        "paper_order": sorted(models, key=lambda m: paper[m]),
        "our_order": sorted(models, key=lambda m: ours[m]),
        "note": None,
    }
    if len(models) < MIN_MODELS:
        out["note"] = FEWER
        return out
    tau, p_value = stats.kendalltau([paper[m] for m in models], [ours[m] for m in models])
    if not math.isfinite(tau):
        out["note"] = "n/a (one side gives every model the same value)"
        return out
    out["tau"], out["p_value"] = float(tau), float(p_value)
    return out


def agreement_markdown(results: Mapping[str, dict], source: str) -> str:
    """Markdown lines (one per metric label in ``results``) stating tau, p, n and the models."""
    lines = [
        f"Ranking vs the paper ({source}): Kendall's tau-b (scipy.stats.kendalltau) between the "
        "paper's values and ours over the models both report; both ordered by value.",
        "",
    ]
    for label, r in results.items():
        if r["tau"] is None:
            models = f" ({', '.join(r['models'])})" if r["models"] else ""
            lines.append(f"- {label}: {r['note']}; n = {r['n']}{models}")
            continue
        lines.append(
            f"- {label}: tau = {r['tau']:.3f}, p = {r['p_value']:.3g}, n = {r['n']} models "
            f"({', '.join(r['models'])}); ascending, paper: {' < '.join(r['paper_order'])}; "
            f"ours: {' < '.join(r['our_order'])}"
        )
    return "\n".join(lines) + "\n"
