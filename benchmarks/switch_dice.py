"""Does a speed switch change what the segmentation grid measures? Dice of two grid runs, paired.

    python benchmarks/switch_dice.py BEFORE_DIR AFTER_DIR [--wall-before S] [--wall-after S]
        [--n-boot 10000] [--json FILE]

``BEFORE_DIR`` and ``AFTER_DIR`` are two ``gvae segment --out`` folders of the same grid (same
slices, conditions, fractions, seeds and UNet), run with the speed switches off and on (or by
the code before and after them). For every (condition, fraction) both ran, the table gives each
side's mean test Dice, and the paired difference after - before: per test patient, the Dice
averaged over the seeds, then a percentile bootstrap over patients
(``pipeline.augment.segment.stats.paired_difference``, the grid's own rule). That CI holds
the trained networks fixed: it asks whether these seeds' networks score the test patients
differently. A switch that changes float rounding (NHWC convolutions, another random stream
for the augmentation) sends every run along another trajectory, as another seed would, so the
second CI (``seeds x patients``) also resamples the seeds of each side (a two-level bootstrap:
patients, paired across the sides, and each side's seeds, independently), which counts the
spread between training runs that such a switch brings. A switch leaves the experiment
unchanged where that CI contains 0. Also per side: the summed training seconds
of the runs (each run's own clock) and, when given, the grid's wall time (``--wall-*``, e.g.
from ``/usr/bin/time``), and their ratio before/after.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import common  # noqa: E402
from pipeline.augment.segment.results import per_patient  # noqa: E402
from pipeline.augment.segment.stats import bootstrap_ci, paired_difference  # noqa: E402


def grid_runs(folder: Path) -> dict[tuple[str, float], list[dict]]:
    """``{(condition, fraction): [run records]}`` of ``folder/runs/*.json``; raises naming the
    folder when it holds none."""
    paths = sorted((folder / "runs").glob("*.json"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no runs/*.json (not a `gvae segment --out` folder?)")
    groups: dict[tuple[str, float], list[dict]] = {}
    for p in paths:
        r = json.loads(p.read_text())
        groups.setdefault((r["condition"], float(r["fraction"])), []).append(r)
    return groups


def seed_matrix(runs: list[dict], cases: list[str]) -> np.ndarray:
    """``(seeds, patients)`` Dice of ``runs`` (sorted by seed) for ``cases``; NaN when missing."""
    rows = sorted(runs, key=lambda r: r["seed"])
    get = lambda r, c: (r["patients"].get(c) or {}).get("dice")  # noqa: E731
    return np.array([[math.nan if get(r, c) is None else get(r, c) for c in cases]
                     for r in rows], dtype=np.float64)  # fmt: skip


def seeds_patients_ci(
    before: np.ndarray, after: np.ndarray, n_boot: int = 10000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` of mean Dice after - before over seeds and patients, with a two-level
    percentile bootstrap: each replicate draws the patients with replacement (the same draw for
    both sides: they are paired) and each side's seeds with replacement, independently (a
    switch that changes rounding unpairs the trajectories of a seed). ``before`` and ``after``
    are ``(seeds, patients)`` arrays over the same patients."""
    if before.shape[1] != after.shape[1]:
        raise ValueError(f"need the same patients, got {before.shape[1]} and {after.shape[1]}")
    rng = np.random.default_rng(seed)
    n_pat = before.shape[1]
    pick = rng.integers(0, n_pat, (n_boot, 1, n_pat))

    def means(x: np.ndarray) -> np.ndarray:  # (n_boot,) resampled means of one side
        seeds = x[rng.integers(0, len(x), (n_boot, len(x)))]  # (n_boot, S, P)
        cols = np.take_along_axis(seeds, np.broadcast_to(pick, seeds.shape), axis=2)
        return np.nanmean(cols, axis=(1, 2))

    diffs = means(after) - means(before)
    lo, hi = np.percentile(diffs, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(np.nanmean(after) - np.nanmean(before)), float(lo), float(hi)


def compare(before: Path, after: Path, n_boot: int = 10000, seed: int = 0) -> list[dict]:
    """One row per (condition, fraction) of both folders: Dice of each, paired after - before.

    Raises ``ValueError`` when a pair of cells differs in seeds or test patients: then the two
    folders are not the same grid and a paired difference means nothing.
    """
    a, b = grid_runs(before), grid_runs(after)
    rows = []
    for key in sorted(set(a) & set(b), key=lambda k: (-k[1], k[0])):
        ra, rb = a[key], b[key]
        seeds = sorted(r["seed"] for r in ra), sorted(r["seed"] for r in rb)
        if seeds[0] != seeds[1]:
            raise ValueError(f"{key}: seeds {seeds[0]} before, {seeds[1]} after")
        da, db = per_patient(ra, "dice"), per_patient(rb, "dice")
        if sorted(da) != sorted(db):
            raise ValueError(f"{key}: the two folders scored different test patients")
        cases = sorted(da)
        va, vb = [da[c] for c in cases], [db[c] for c in cases]
        diff, lo, hi = paired_difference(vb, va, n_boot=n_boot, seed=seed)
        _, slo, shi = seeds_patients_ci(seed_matrix(ra, cases), seed_matrix(rb, cases), n_boot,
                                        seed=seed)  # fmt: skip
        rows.append({
            "condition": key[0],
            "fraction": key[1],
            "train_patients": ra[0]["n_train_patients"],
            "seeds": len(ra),
            "patients": len(cases),
            "dice_before": bootstrap_ci(va, n_boot=n_boot, seed=seed)[0],
            "dice_after": bootstrap_ci(vb, n_boot=n_boot, seed=seed)[0],
            "diff": diff,
            "diff_ci": f"[{lo:+.3f}, {hi:+.3f}]",
            "zero_in_ci": "yes" if lo <= 0 <= hi else "**no**",
            "seeds_ci": f"[{slo:+.3f}, {shi:+.3f}]",
            "zero_in_seeds_ci": "yes" if slo <= 0 <= shi else "**no**",
            "better_after": f"{sum(y > x for x, y in zip(va, vb, strict=True))}/{len(cases)}",
            "train_s_before": sum(r["train_seconds"] for r in ra),
            "train_s_after": sum(r["train_seconds"] for r in rb),
        })  # fmt: skip
    if not rows:
        raise ValueError(f"{before} and {after} share no (condition, fraction)")
    return rows


COLUMNS = [
    ("condition", "condition", "s"),
    ("fraction", "fraction", "g"),
    ("train patients", "train_patients", "d"),
    ("seeds", "seeds", "d"),
    ("test patients", "patients", "d"),
    ("Dice before", "dice_before", ".3f"),
    ("Dice after", "dice_after", ".3f"),
    ("after - before", "diff", "+.3f"),
    ("95% CI, patients", "diff_ci", "s"),
    ("0 in it", "zero_in_ci", "s"),
    ("95% CI, seeds x patients", "seeds_ci", "s"),
    ("0 in it", "zero_in_seeds_ci", "s"),
    ("patients better after", "better_after", "s"),
    ("train s before", "train_s_before", ".0f"),
    ("train s after", "train_s_after", ".0f"),
]


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, REPO)
    parser.add_argument("before", type=Path, help="gvae segment --out folder, switches off")
    parser.add_argument("after", type=Path, help="the same grid, switches on")
    parser.add_argument("--wall-before", type=float, help="the grid's wall seconds, before")
    parser.add_argument("--wall-after", type=float, help="the grid's wall seconds, after")
    parser.add_argument("--n-boot", type=int, default=10000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    try:
        rows = compare(args.before, args.after, args.n_boot)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    train = [sum(r[f"train_s_{k}"] for r in rows) for k in ("before", "after")]
    meta = {"before": str(args.before), "after": str(args.after), "train_s": train,
            "wall_s": [args.wall_before, args.wall_after]}  # fmt: skip
    print(f"Segmentation grid, switches off ({args.before}) against on ({args.after}):")
    common.publish(rows, COLUMNS, meta, args.json)
    print(f"\ntraining seconds of all runs: {train[0]:.0f} before, {train[1]:.0f} after "
          f"({train[0] / train[1]:.2f}x)")  # fmt: skip
    if args.wall_before and args.wall_after:
        ratio = args.wall_before / args.wall_after
        print(f"grid wall time: {args.wall_before:.0f} s before, {args.wall_after:.0f} s after "
              f"({ratio:.2f}x)")  # fmt: skip
    for key, what in (("zero_in_ci", "patients"), ("zero_in_seeds_ci", "seeds x patients")):
        outside = [r for r in rows if r[key] != "yes"]
        print(f"{len(rows) - len(outside)} of {len(rows)} cells have 0 in the {what} CI of "
              "after - before" + ("" if not outside else ": not " + ", ".join(
                  f"{r['condition']} f={r['fraction']:g}" for r in outside)))  # fmt: skip
    return 0 if not any(math.isnan(r["diff"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
