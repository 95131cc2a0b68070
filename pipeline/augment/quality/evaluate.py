"""``gvae ct-quality``: one synthetic slice set (or the real floor) against the real test split.

Compares a ``gvae generate`` folder (split ``synthetic``) with the slices folder's **test**
split, never with the training slices it was fitted to: MMD, MS-SSIM diversity, in-domain FID
and precision/recall, the anatomy checks of ``pipeline.augment.quality.metrics`` and the near-copy
check of ``pipeline.augment.quality.memorization`` against the **train** split. ``--reference``
puts a
random subset of the real train split in place of the synthetic set: the floor row every model
is read against. Its memorization entry scores the real test slices themselves, so its
``near_copy_share`` is the chance level (about the quantile).

``--fractions`` adds the near-copy check of every training-fraction set of the same model
(the ``f<fraction>/`` folders of ``gvae generate --each-fraction``): the generators of the
low-data regimes see two or three patients, and a model that copies does it there first. Each
set is scored against the whole train split with the same threshold, as the export's privacy
gate scores it (its own patients are a subset, so a copy of one of them is still found).
It also measures every fraction set's FID, MMD, precision/recall and MS-SSIM against the same
real test slices (``by_fraction.json``): the usefulness correlation sets each against the Dice
difference that fraction's set produced.

Writes into ``--out`` (one folder, replaced atomically): ``metrics.json`` (flat numbers;
``near_copy_share_f<fraction>`` per fraction set), ``headline.json`` (FID and MMD only: what
``dvc exp show`` and ``dvc metrics diff`` print by default), ``memorization.json``
(threshold, quantile, per-sample distance and flag; per fraction set its share and flagged
slices), ``by_fraction.json`` with ``--fractions`` and ``grid.png`` (real test slices on the
left, the compared set on the right, pancreas masks as red contours).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic import atomic_dir, write_json
from pipeline.augment.quality.train_features import NET_NAME
from pipeline.io.contact_sheet import Panel, spread, write_contact_sheet
from pipeline.io.shards import INDEX_NAME, load_slices, read_index, same_grid
from pipeline.io.tables import json_number
from pipeline.params.quality import QualityParams

METRICS_NAME = "metrics.json"
MEMORIZATION_NAME = "memorization.json"
GRID_NAME = "grid.png"
BY_FRACTION_NAME = "by_fraction.json"
# The few numbers `dvc exp show` and `dvc metrics diff` print by default (tracked in git);
# everything else stays in METRICS_NAME (a cached output, shown with `--targets`).
HEADLINE_NAME = "headline.json"
HEADLINE_METRICS = ("fid", "mmd_x1e4")


def _subset(n: int, cap: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of at most ``cap`` of ``n`` items."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n)[:cap])


def _check_geometry(real: dict, other: dict, other_dir: Path) -> None:
    """The compared set must be on the real slices' grid and window, else areas and HU lie."""
    if not same_grid(real, other):
        raise ValueError(
            f"{other_dir / INDEX_NAME}: size {other['size']}, pixel_mm {other['pixel_mm']}, "
            f"window {other['window']} differ from the real slices' size {real['size']}, "
            f"pixel_mm {real['pixel_mm']}, window {real['window']}"
        )


def _grid_panels(real, other, flags, n: int, other_name: str) -> list[Panel]:
    """Rows of 4: two real test tiles, then two tiles of the compared set."""
    (ri, rm, rmeta), (oi, om, ometa) = real, other
    # Real tiles show the pancreas where possible; the compared set is shown as drawn.
    with_mask = [i for i in range(len(rm)) if rm[i].any()] or list(range(len(rm)))
    picks_r = spread(with_mask, n)
    picks_o = list(range(min(n, len(oi))))
    real_p = [
        Panel(ri[i, 0], rm[i, 0], f"real test {rmeta['case_id'][i]} k={rmeta['slice_index'][i]}")
        for i in picks_r
    ]
    other_p = [
        Panel(
            oi[i, 0],
            om[i, 0],
            f"{other_name} #{ometa['slice_index'][i]}" + (" NEAR-COPY" if flags[i] else ""),
        )
        for i in picks_o
    ]
    panels = []
    for r in range(0, max(len(real_p), len(other_p)), 2):
        for side in (real_p, other_p):
            pair = side[r : r + 2]
            # An empty tile keeps real on the left and the compared set on the right.
            panels += pair + [Panel(np.zeros_like(ri[0, 0]), np.zeros_like(rm[0, 0]), "")] * (
                2 - len(pair)
            )
    return panels


def _sample_record(mem: dict, i: int, meta: dict, train_meta: dict) -> dict:
    """Slice ``i`` of a scored set: its distances, flag and nearest training slice."""
    return {
        "case_id": str(meta["case_id"][i]),
        "slice_index": int(meta["slice_index"][i]),
        "distance": float(mem["distances"][i]),
        "relative_distance": float(mem["relative"][i]),
        "near_copy": bool(mem["flags"][i]),
        "nn_train_case": str(train_meta["case_id"][mem["nn_index"][i]]),
        "nn_train_slice": int(train_meta["slice_index"][mem["nn_index"][i]]),
    }


def _memorization_record(mem: dict, meta: dict, train_meta: dict, params, name: str) -> dict:
    samples = [_sample_record(mem, i, meta, train_meta) for i in range(len(mem["flags"]))]
    return {
        "set": name,
        "quantile": params.memorization.quantile,
        "downsample": params.memorization.downsample,
        "threshold": mem["threshold"],
        "ratio": mem["ratio"],
        "neighbours": mem["neighbours"],
        "share": mem["share"],
        "n_flagged": int(mem["flags"].sum()),
        "samples": samples,
    }


def _same(a: str | os.PathLike, b: str | os.PathLike | None) -> bool:
    return b is not None and Path(a).resolve() == Path(b).resolve()


def fraction_sets(root: str | os.PathLike) -> dict[str, Path]:
    """``{"f1.0": folder, "f0.5": ...}``: the sets of ``gvae generate --each-fraction`` under
    ``root``, largest fraction first; ``ValueError`` naming ``root`` when there is none."""
    root = Path(root)
    found: dict[float, Path] = {}
    for index in root.glob(f"f*/{INDEX_NAME}"):
        try:
            found[float(index.parent.name[1:])] = index.parent
        except ValueError:
            continue  # not a fraction folder (f<number>)
    if not found:
        raise ValueError(
            f"{root}: no f<fraction>/{INDEX_NAME}; --fractions takes the folder written by "
            "`gvae generate --each-fraction`"
        )
    return {found[f].name: found[f] for f in sorted(found, reverse=True)}


def fraction_memorization(
    sets: dict[str, Path],
    train: tuple,
    threshold: float,
    params: QualityParams,
    scored: dict[Path, tuple[dict, dict]] | None = None,
) -> list[dict]:
    """The near-copy check of each fraction set against the train split, one record each.

    The threshold is the one calibrated on the real test slices for the whole train split:
    every set is held to the bar the export's privacy gate applies to it. ``scored`` maps a
    resolved folder already checked with these settings to its ``(meta, find_near_copies
    result)`` (the stage's own ``--synthetic`` set), which is then not loaded and searched again.
    """
    from pipeline.augment.quality.memorization import find_near_copies
    from pipeline.export.privacy import check_reference

    m = params.memorization
    records = []
    for name, folder in sets.items():
        if folder.resolve() in (scored or {}):
            meta, found = scored[folder.resolve()]
        else:
            images, _, meta = load_slices(folder, "synthetic")
            found = find_near_copies(
                images, train[0], threshold, params.batch_size, m.downsample, m.ratio, m.neighbours
            )
        trained_on = (read_index(folder).get("source") or {}).get("trained_on") or []
        check_reference(meta, train[2], trained_on, str(folder / INDEX_NAME))
        n = len(found["flags"])
        flagged = np.flatnonzero(found["flags"])
        records.append(
            {
                "set": name,
                "folder": str(folder),
                "trained_on": list(trained_on),
                "n": n,
                "n_flagged": len(flagged),
                "share": found["share"],
                "relative_min": float(found["relative"].min()) if n else None,
                "relative_median": float(np.median(found["relative"])) if n else None,
                "flagged": [_sample_record(found, i, meta, train[2]) for i in flagged],
            }
        )
    return records


# The distribution metrics kept per fraction set: what the usefulness correlation reads.
FRACTION_METRICS = ("fid", "mmd_x1e4", "precision", "recall", "ms_ssim", "n_samples")


def fraction_quality(
    sets: dict[str, Path], params: QualityParams, net, real: tuple, scored: dict[str, dict]
) -> dict[str, dict]:
    """``{"f0.5": {fid, mmd_x1e4, precision, recall, ms_ssim, n_samples}, ...}``: each fraction
    set against the same real test slices with the same feature net and subset rule as the
    stage's own set, so FID and friends can be set against the Dice difference each fraction's
    set produced (``pipeline.augment.usefulness``). ``scored`` maps a set name already measured
    (the ``--synthetic`` set) to its metrics, which are reused."""
    out = {}
    for name, folder in sets.items():
        if name in scored:
            metrics = scored[name]
        else:
            image, mask, _ = load_slices(folder, "synthetic")
            oi = _subset(len(image), params.n_samples, params.seed + 1)
            metrics = _set_metrics(params, net, real, (image[oi], mask[oi]), False)
        out[name] = _json_safe({k: metrics[k] for k in FRACTION_METRICS})
    return out


def _json_safe(metrics: dict[str, Any]) -> dict[str, Any]:
    """Undefined values (NaN, e.g. no mask at all) and infinities -> null: JSON has neither."""
    return {k: json_number(v) for k, v in metrics.items()}


def _load_sets(params: QualityParams, slices_dir: Path, features_dir: Path, synthetic_dir):
    """(test, train, scored-set name, scored set, feature net), every size and geometry checked."""
    from pipeline.augment.quality.features import load_feature_net

    test = load_slices(slices_dir, "test")
    train = load_slices(slices_dir, "train")
    if synthetic_dir is None:
        name, other = "real train", train
    else:
        name, other = "synthetic", load_slices(synthetic_dir, "synthetic")
        _check_geometry(test[2], other[2], Path(synthetic_dir))
    for label, (img, _, _) in (("test", test), ("train", train), (name, other)):
        if len(img) < params.pr_k + 1:
            raise ValueError(f"{label} set has {len(img)} slices; need > pr_k = {params.pr_k}")
    net = load_feature_net(features_dir / NET_NAME)
    if net.trained_size not in (None, test[2]["size"]):
        raise ValueError(
            f"{features_dir / NET_NAME}: trained on {net.trained_size}-px slices, "
            f"{slices_dir} holds {test[2]['size']}-px slices; rerun `gvae ct-features`"
        )
    return test, train, name, other, net


def _set_metrics(params: QualityParams, net, real: tuple, other: tuple, reference: bool) -> dict:
    """Distribution (MMD, MS-SSIM, FID, P/R) and anatomy metrics of ``other`` vs ``real``."""
    from pipeline.augment.quality.features import features
    from pipeline.augment.quality.metrics import anatomy_metrics, area_distance_mm2, sample_metrics

    (r_img, r_msk, meta), (o_img, o_msk) = real, other
    level, width = (float(meta["window"][k]) for k in ("level", "width"))
    pixel_mm = float(meta["pixel_mm"])
    s = sample_metrics(
        r_img,
        o_img,
        features(net, r_img, params.batch_size),
        features(net, o_img, params.batch_size),
        ms_ssim_pairs=params.ms_ssim_pairs,
        pr_k=params.pr_k,
        bandwidth=params.mmd_bandwidth,
        seed=params.seed,
        batch_size=params.batch_size,
    )
    metrics: dict[str, Any] = {
        "reference": float(reference),
        "n_real": float(len(r_img)),
        "n_samples": float(len(o_img)),
        "mmd": s["mmd"],
        "mmd_x1e4": s["mmd"] * 1e4,
        "mmd_bandwidth": s["mmd_bandwidth"],
        "ms_ssim": s["ms_ssim_other"],
        "ms_ssim_real": s["ms_ssim_real"],
        "fid": s["fid"],
        "precision": s["precision"],
        "recall": s["recall"],
    }
    metrics.update(anatomy_metrics(o_img, o_msk, level, width, pixel_mm))
    real_anat = anatomy_metrics(r_img, r_msk, level, width, pixel_mm)
    metrics.update({f"real_{k}": v for k, v in real_anat.items()})
    metrics["area_w1_mm2"] = area_distance_mm2(o_msk, r_msk, pixel_mm)
    return metrics


def run(
    params: QualityParams,
    slices_dir: str | os.PathLike,
    features_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    synthetic_dir: str | os.PathLike | None = None,
    fractions_dir: str | os.PathLike | None = None,
) -> dict:
    """Compute every metric of one set (``synthetic_dir``, or real train if ``None``); write.

    ``fractions_dir``: also check every fraction set under it for near-copies (module doc).
    """
    from pipeline.augment.quality import memorization as mem_
    from pipeline.augment.quality.metrics import FRACTION_PREFIX

    t0 = time.perf_counter()
    slices_dir, features_dir, out_dir = Path(slices_dir), Path(features_dir), Path(out_dir)
    reference = synthetic_dir is None
    if reference and fractions_dir is not None:
        raise ValueError("--fractions scores synthetic sets; the --reference floor has none")
    sets = fraction_sets(fractions_dir) if fractions_dir is not None else {}
    test, train, name, other, net = _load_sets(params, slices_dir, features_dir, synthetic_dir)

    m = params.memorization
    threshold = mem_.near_copy_threshold(
        test[0], train[0], m.quantile, params.batch_size, m.downsample
    )
    scored = test if reference else other  # the reference scores the real test slices (chance)
    mem = mem_.find_near_copies(
        scored[0], train[0], threshold, params.batch_size, m.downsample, m.ratio, m.neighbours
    )

    ti = _subset(len(test[0]), params.n_samples, params.seed)
    oi = _subset(len(other[0]), params.n_samples, params.seed + 1)
    real = (test[0][ti], test[1][ti], test[2])
    metrics = _set_metrics(params, net, real, (other[0][oi], other[1][oi]), reference)
    metrics.update(
        near_copy_threshold=threshold, near_copy_quantile=m.quantile, near_copy_share=mem["share"]
    )
    known = {} if reference else {Path(synthetic_dir).resolve(): (other[2], mem)}
    by_fraction = fraction_memorization(sets, train, threshold, params, known)
    metrics.update({f"{FRACTION_PREFIX}{r['set']}": r["share"] for r in by_fraction})
    own = {n: metrics for n, f in sets.items() if not reference and _same(f, synthetic_dir)}
    quality = fraction_quality(sets, params, net, real, own)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)

    flags = mem["flags"][oi] if not reference else np.zeros(len(oi), bool)
    panels = _grid_panels(
        (test[0][ti], test[1][ti], {k: test[2][k][ti] for k in ("case_id", "slice_index")}),
        (other[0][oi], other[1][oi], {k: other[2][k][oi] for k in ("case_id", "slice_index")}),
        flags,
        params.grid,
        name,
    )
    record = _memorization_record(
        mem, scored[2], train[2], params, "real test" if reference else "synthetic"
    )
    if by_fraction:
        record["fractions"] = by_fraction
    with atomic_dir(out_dir) as tmp:
        write_contact_sheet(tmp / GRID_NAME, panels, ncols=4)
        write_json(tmp / MEMORIZATION_NAME, record)
        write_json(tmp / METRICS_NAME, _json_safe(metrics))
        write_json(tmp / HEADLINE_NAME, _json_safe({k: metrics[k] for k in HEADLINE_METRICS}))
        if quality:
            write_json(tmp / BY_FRACTION_NAME, quality)
    return metrics
