"""Training stability of the sanity models, per dataset: loss curves and mode-collapse flags.

Pure summaries of what the stages wrote: ``losses.csv`` of each run (``models/train/trainer.py``)
and the ``stability`` entry of each ``metrics.json`` (``gvae evaluate``: the class-entropy
trajectory of the trainer's snapshots and the verdict of ``models.eval.metrics.entropy_collapse``).
``gvae tables`` writes both into ``stability.json`` and ``stability.png``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from models.train.checkpoint import CRITIC_PREFIX, LOSSES


def stability_summary(per_model: dict[str, list[tuple[int, dict]]]) -> dict:
    """``{"models": {model: {seed: stability or None}}, "flagged": ["model s<seed>: reason"]}``.

    ``per_model`` maps a model to its ``(seed, metrics.json dict)`` pairs.
    """
    models, flagged = {}, []
    for name, seeds in per_model.items():
        models[name] = {}
        for seed, metrics in seeds:
            stab = metrics.get("stability")
            models[name][str(seed)] = stab
            if stab and stab.get("collapsed"):
                flagged.append(f"{name} s{seed}: {stab['reason']}")
    return {"models": models, "flagged": flagged}


def read_losses(path: Path) -> dict[str, list[float]]:
    """Columns of a trainer ``losses.csv`` as float lists (empty cells become NaN)."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    return {k: [float(r[k]) if r[k] not in ("", None) else math.nan for r in rows] for k in rows[0]}


def adversarial_curves(runs: Path, per_model: dict[str, list[tuple[int, dict]]]) -> dict:
    """``{model: losses}`` of the first seed of every model whose run logs critic terms."""
    from pipeline.sanity.seeds import seed_dirname

    out = {}
    for name, seeds in per_model.items():
        path = runs / name / seed_dirname(seeds[0][0]) / LOSSES
        if path.is_file():
            losses = read_losses(path)
            if any(k.startswith(CRITIC_PREFIX) for k in losses):
                out[name] = losses
    return out


def stability_figure(
    dataset: str, runs: Path, per_model: dict[str, list[tuple[int, dict]]], path: Path
) -> Path:
    """One PNG per dataset: a loss panel per adversarial model, then the entropy trajectories.

    Loss panels show every logged term of the model's first seed against the step on a symlog
    axis (the terms span 1e-2 to 1e3). The last panel shows each run's normalised class entropy
    at its snapshots (one line per model and seed); flagged runs are drawn with crosses.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = adversarial_curves(runs, per_model)
    n = len(curves) + 1
    cols = min(n, 4)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax, (name, losses) in zip(flat, curves.items(), strict=False):
        steps = losses.pop("step")
        for key, values in losses.items():
            ax.plot(
                steps, values, lw=1, ls="--" if key.startswith(CRITIC_PREFIX) else "-", label=key
            )
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_title(f"{name} (seed {per_model[name][0][0]})", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.legend(fontsize=6, ncol=2)
    ax = flat[len(curves)]
    drawn = 0
    for k, (name, seeds) in enumerate(per_model.items()):
        for seed, metrics in seeds:
            stab = metrics.get("stability")
            if not stab:
                continue
            marker = "x" if stab["collapsed"] else "o"
            label = name if seed == seeds[0][0] else None
            color = f"C{k % 10}"
            ax.plot(
                stab["steps"],
                stab["class_entropy_norm"],
                marker=marker,
                ms=4,
                lw=1,
                color=color,
                label=label,
            )
            drawn += 1
    ax.set_ylim(0, 1.05)
    ax.set_title("class entropy / log K during training (x: flagged)", fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    if drawn:
        ax.legend(fontsize=6, ncol=2)
    else:
        ax.text(
            0.5,
            0.5,
            "no training snapshots\n(train.snapshot_samples: 0)",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    for extra in flat[len(curves) + 1 :]:
        extra.axis("off")
    fig.suptitle(f"{dataset}: training stability", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
