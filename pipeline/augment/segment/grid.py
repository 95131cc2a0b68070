"""Executing the segmentation grid: load the data, check it, run, resume, write.

The experiment's design (conditions, patient subsets, leakage guard, training sets) lives in
``pipeline.augment.segment.experiment``; the networks in ``pipeline.augment.segment.train``; the
mixing controls in ``pipeline.augment.segment.mixing``; the usage recipes (mix, pretrain,
filter) in ``pipeline.augment.segment.recipes``; the tables in
``pipeline.augment.segment.results``. Output folder::

    runs/<condition>__f<fraction>__s<seed>.json   one per run, written as soon as it finishes
    metrics.json results.csv table.md                 (pipeline.augment.segment.results)
    dice_vs_size.png forest.png                       (pipeline.augment.segment.plots)
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import time
from collections.abc import Mapping, MutableMapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from common.atomic import atomic_path, ensure_writable_dir, write_json
from pipeline.augment.segment import faithfulness as faith
from pipeline.augment.segment.experiment import (
    SYN_SPLIT,
    Dataset,
    RunSpec,
    SyntheticSet,
    build_training_set,
    check_leakage,
    check_synthetic,
    held_out_cases,
    plan_runs,
    synthetic_folder,
    training_subset,
)
from pipeline.io.shards import INDEX_NAME, load_slices, read_index
from pipeline.params.segment import Condition, SegmentParams


def load_dataset(slices_dir: Path) -> Dataset:
    """Load the train and test splits; ``ValueError`` naming the file when unusable."""
    index = read_index(slices_dir)
    splits = {s: list(e.get("cases", [])) for s, e in index.get("splits", {}).items()}
    for split in ("train", "test"):
        if not splits.get(split):
            raise ValueError(f"{slices_dir / INDEX_NAME}: split '{split}' has no patient")
    ti, tm, tmeta = load_slices(slices_dir, "train")
    xi, xm, xmeta = load_slices(slices_dir, "test")
    return Dataset(
        ti, tm, tmeta["case_id"], xi, xm, xmeta["case_id"],
        float(index["pixel_mm"]), int(index["size"]), splits, index,
    )  # fmt: skip


# Settings read by some conditions only: the mixing controls, the pretrain and filter recipes.
CONDITION_SETTINGS = ("mixing", "pretrain", "filter")
# Speed switches that change a run's numbers, with the value that reproduces the runs made
# before they existed: hashed only when set otherwise, so those runs keep their fingerprint.
# The augmentation backend counts only where there is classical augmentation to draw.
SWITCHES = {"augment_backend": "monai", "channels_last": False, "compile": False,
            "precision": "auto"}  # fmt: skip


def fingerprint(
    params: SegmentParams,
    data: Dataset,
    syn_index: Mapping | None,
    condition: Condition | None = None,
) -> str:
    """Hash of everything that decides a run's result, for ``--resume`` to trust a run JSON.

    Covers the params that shape training, the real slices' ``index.json`` and the synthetic
    folder's (their split lists, shard lists and generator source). Threads stay in (the float
    summation order, hence the weights, depends on them); grid lists, statistics and the number
    of worker processes are left out, so adding a seed or a condition does not invalidate the
    runs already done. The settings of ``CONDITION_SETTINGS`` count only for the ``condition``
    that reads them, so a run made before they existed keeps its fingerprint and a new
    ``filter.min_dice`` reruns the filter runs only. The ``SWITCHES`` count once off their old
    value (``augment_backend`` only for a condition with classical augmentation).
    """
    used = set()
    if condition is not None:
        used = {"mixing"} if condition.control else {condition.recipe}
    same = {k for k, old in SWITCHES.items() if getattr(params, k) == old}
    if condition is not None and not condition.classical:
        same.add("augment_backend")
    keep = params.model_dump(
        mode="json",
        exclude={"conditions", "models", "fractions", "seeds", "seeds_by_fraction", "n_boot",
                 "alpha", "boot_seed", "eval_batch_size", "workers", *same,
                 *(set(CONDITION_SETTINGS) - used)},
    )  # fmt: skip
    blob = {
        "params": keep,
        "real": data.index,
        "synthetic": syn_index,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def read_run(path: Path, expected: str) -> dict | None:
    """A finished run's record if ``path`` holds one with fingerprint ``expected``, else None."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("fingerprint") == expected else None


def load_synthetic(folder: Path, data: Dataset) -> SyntheticSet:
    """Load and check a synthetic folder against the real data (size, ids, no held-out source)."""
    index = read_index(folder)
    image, mask, meta = load_slices(folder, SYN_SPLIT)
    if int(index["size"]) != data.size:
        raise ValueError(
            f"{folder / INDEX_NAME}: synthetic size {index['size']} px, real slices {data.size} px"
        )
    if not len(image):
        raise ValueError(f"{folder / INDEX_NAME}: split '{SYN_SPLIT}' holds no slice")
    check_synthetic(folder, index, meta["case_id"], held_out_cases(data))
    return SyntheticSet(folder, image, mask, meta["case_id"], index)


def run_one(
    spec: RunSpec,
    data: Dataset,
    syn: SyntheticSet | None,
    params: SegmentParams,
    fp: str,
    networks: MutableMapping | None = None,
) -> dict:
    """Train and score one run; return its JSON record. Checks leakage before training.

    The record holds per-patient ``dice``/``hd95``/``slices``, the real patients used, the
    numbers of real and synthetic training slices and ``seconds`` (training + scoring); a
    ``filter`` run its ``filter`` entry (scored, kept, kept share, the UNet's patients), a
    ``pretrain`` run its ``phase_steps``, a control its ``mixing`` entry (source patients,
    pastes). ``networks`` shares the ``real`` runs' networks with the filter runs.
    """
    from pipeline.augment.segment.recipes import filter_synthetic, training_phases
    from pipeline.augment.segment.train import evaluate_patients, predict, train_phases

    start = time.perf_counter()
    extra: dict = {}
    if spec.condition.recipe == "filter" and syn is not None:
        syn, extra["filter"] = filter_synthetic(spec, data, syn, params, networks)
    ts = build_training_set(spec, data, syn, params)
    phases, mixer = training_phases(spec, ts, params)
    # The carve/cut sources are training data too: the guard covers them with the samples.
    check_leakage([*ts.cases, *(mixer.sources if mixer else [])], held_out_cases(data))
    result = train_phases(phases, params, spec.seed)
    if networks is not None and spec.condition.name == "real":
        networks[(spec.fraction, spec.seed)] = result.model
    if spec.condition.recipe == "pretrain":
        extra["phase_steps"] = dict(zip([p.name for p in phases], result.phase_steps, strict=True))
    if mixer is not None:
        extra["mixing"] = {"control": mixer.kind, "sources": mixer.sources,
                           "pasted": mixer.pasted}  # fmt: skip
    pred = predict(result.model, data.test_image, params.eval_batch_size)
    patients = evaluate_patients(pred, data.test_mask, data.test_case, data.pixel_mm)
    return {
        "condition": spec.condition.name,
        "fraction": spec.fraction,
        "seed": spec.seed,
        "fingerprint": fp,
        "train_patients": ts.patients,
        "n_train_patients": len(
            training_subset(data.splits["train"], spec.fraction, params.subset_seed,
                            params.min_patients)
        ),
        "n_real": ts.n_real,
        "n_synthetic": ts.n_synthetic,
        "synthetic_folder": None if syn is None else str(syn.folder),
        "synthetic_pool": None if syn is None else len(syn.image),
        **extra,
        "final_loss": result.final_loss,
        "train_seconds": round(result.seconds, 2),
        "seconds": round(time.perf_counter() - start, 2),
        "device": str(next(result.model.parameters()).device),
        "mean_dice": float(np.mean([p["dice"] for p in patients.values()])),
        "patients": patients,
    }  # fmt: skip


def prepare(
    params: SegmentParams,
    data: Dataset,
    folders: Mapping[tuple[str, float | None], Path],
    log=print,
) -> dict[tuple[str, float], SyntheticSet]:
    """Validate the whole grid before any run; return the synthetic set of every (model, f).

    Raises ``ValueError`` for a fraction without patients, a leaking subset, a model without a
    folder, or an unusable synthetic folder, so a bad setting never leaves half a grid behind.
    """
    held = held_out_cases(data)
    for f in params.fractions:
        check_leakage(
            training_subset(data.splits["train"], f, params.subset_seed, params.min_patients), held
        )
    loaded: dict[Path, SyntheticSet] = {}
    out: dict[tuple[str, float], SyntheticSet] = {}
    for spec in plan_runs(params):
        model = spec.condition.model
        if model is None or (model, spec.fraction) in out:
            continue
        try:
            folder = synthetic_folder(folders, model, spec.fraction)
        except ValueError as exc:
            raise ValueError(f"condition '{spec.condition.name}': {exc}") from None
        if folder not in loaded:
            loaded[folder] = load_synthetic(folder, data)
        out[(model, spec.fraction)] = loaded[folder]
        subset = training_subset(
            data.splits["train"], spec.fraction, params.subset_seed, params.min_patients
        )
        extra = sorted(set(_trained_on(loaded[folder].index)) - set(subset))
        if extra:
            # Not test leakage (checked above), but a confound: the low-data regime would see
            # patients it does not have through the generator. Allowed, never silent.
            log(
                f"segment: warning: {folder} (model {model}) was trained on {len(extra)} "
                f"patient(s) outside the f={spec.fraction:g} subset; pass "
                f"--synthetic {model}@{spec.fraction:g}=DIR for a generator of that subset"
            )
    return out


def score_faithfulness(
    spec: RunSpec,
    record: Mapping,
    data: Dataset,
    syn_sets: Mapping[tuple[str, float], SyntheticSet],
    params: SegmentParams,
    out_dir: Path,
    networks: MutableMapping | None,
    aggregate_only: bool,
    log=print,
) -> list[dict]:
    """The mask faithfulness of every synthetic set at the ``real`` run ``spec``'s fraction,
    scored by that run's network (``pipeline.augment.segment.faithfulness``), one JSON each.

    A JSON with the same fingerprint (run settings + synthetic index) is read, not recomputed;
    otherwise the network comes from ``networks`` (the run just trained it) or is trained again
    with the run's settings and seed (:func:`filter_network`: same weights on the same device
    and thread count). ``aggregate_only`` reads what is there and computes nothing.
    """
    from pipeline.augment.segment.recipes import filter_network

    out = []
    for (model, frac), syn in sorted(syn_sets.items()):
        if frac != spec.fraction:
            continue
        path = out_dir / faith.record_name(model, frac, spec.seed)
        fp = faith.fingerprint(record["fingerprint"], syn.index)
        found = read_run(path, fp)
        if found is None and aggregate_only:
            log(f"segment: faithfulness of {model} f={frac:g} seed {spec.seed}: not scored")
            continue
        if found is None:
            network, _, how = filter_network(spec, data, params, networks)
            numbers = faith.score(network, syn.image, syn.mask, data.test_image,
                                  data.test_mask, params.eval_batch_size)  # fmt: skip
            found = {"model": model, "fraction": frac, "seed": spec.seed, "fingerprint": fp,
                     "n_train_patients": record["n_train_patients"], "network": how,
                     "folder": str(syn.folder), **numbers}  # fmt: skip
            path.parent.mkdir(exist_ok=True)
            write_json(path, found)
            log(
                f"segment: faithfulness of {model} f={frac:g} seed {spec.seed}: "
                f"{found['faithfulness']:.3f} on {found['n_scored']} slices "
                f"(real test ceiling {found['ceiling']:.3f}; UNet {how})"
            )
        out.append(found)
    return out


def _run_notes(record: Mapping) -> str:
    """What the stage log says about a run beyond its Dice: replacement, filter, phases, pastes."""
    notes = ""
    if record["n_synthetic"] > (record["synthetic_pool"] or 0) > 0:
        notes += f"; synthetic drawn with replacement from {record['synthetic_pool']}"
    if "filter" in record:
        f = record["filter"]
        notes += (
            f"; filter kept {f['kept']} of {f['scored']} ({f['kept_share']:.0%}) at Dice >= "
            f"{f['min_dice']:g}, UNet {f['network']}"
        )
    if "phase_steps" in record:
        notes += "; steps " + " then ".join(f"{n} {k}" for k, n in record["phase_steps"].items())
    if "mixing" in record:
        m = record["mixing"]
        notes += f"; {m['control']} pasted into {m['pasted']} samples"
    return notes


def _trained_on(index: Mapping) -> list[str]:
    cases = (index.get("source") or {}).get("trained_on") or []
    return [str(c) for c in cases] if isinstance(cases, list) else []


def _run_in_workers(
    params: SegmentParams,
    slices_dir: str | Path,
    out_dir: str | Path,
    synthetic: Mapping[tuple[str, float | None], Path] | None,
) -> int:
    """Run the grid's shards ``(i, params.workers)`` in as many processes, each resuming what
    is already there with ``params.threads`` threads; return how many runs they executed.

    The runs are independent and seeded, so every run's JSON is the one a serial grid writes
    (a run's numbers depend on its thread count, never on which process ran it).
    """
    n = params.workers
    # spawn, not fork: a forked child inherits torch's thread pool state and can deadlock.
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        shards = [
            pool.submit(run_experiment, params, slices_dir, out_dir, synthetic, True, print, (i, n))
            for i in range(n)
        ]
        return sum(job.result()["executed"] for job in shards)


def run_experiment(
    params: SegmentParams,
    slices_dir: str | Path,
    out_dir: str | Path,
    synthetic: Mapping[tuple[str, float | None], Path] | None = None,
    resume: bool = False,
    log=print,
    shard: tuple[int, int] | None = None,
    aggregate_only: bool = False,
) -> dict:
    """Run the grid into ``out_dir``; write each run's JSON as it finishes, then the tables.

    With ``resume`` a run whose JSON exists with the same fingerprint is read, not rerun.
    Without it, earlier run JSONs in ``out_dir/runs`` are removed first. ``shard=(i, n)`` runs
    only the planned runs at positions ``i, i + n, ...`` and writes no tables (several workers
    share one GPU or machine, then one ``aggregate_only`` call writes the tables from every
    finished run without running the missing ones). With ``params.workers`` > 1 (and no shard)
    the runs go to that many processes, one shard each, once the inputs have been checked here;
    this call then reads their JSONs and writes the tables. Returns a summary with ``runs``
    (planned), ``executed``, ``missing`` and the aggregated ``rows`` (empty for a shard).
    """
    from pipeline.augment.segment.results import write_results

    data = load_dataset(Path(slices_dir))
    syn_sets = prepare(params, data, synthetic or {}, log)
    runs_dir = ensure_writable_dir(Path(out_dir)) / "runs"
    if shard is not None and not (resume and 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard {shard} needs --resume and 0 <= i < n")
    if not resume:
        shutil.rmtree(runs_dir, ignore_errors=True)
    runs_dir.mkdir(exist_ok=True)
    records: list[dict] = []
    executed = missing = 0
    # The real runs' networks, for the filter runs and the faithfulness scores of the same
    # fraction; only when there are.
    filters = any(c.recipe == "filter" for c in {s.condition for s in plan_runs(params)})
    networks: dict | None = {} if filters or syn_sets else None
    faithful: list[dict] = []
    if not resume:
        shutil.rmtree(Path(out_dir) / faith.DIRNAME, ignore_errors=True)
    if params.workers > 1 and shard is None and not aggregate_only:
        executed = _run_in_workers(params, slices_dir, out_dir, synthetic)
        resume = aggregate_only = True  # below: read what the workers wrote, run nothing
    for position, spec in enumerate(plan_runs(params)):
        if shard is not None and position % shard[1] != shard[0]:
            continue
        if networks and next(iter(networks))[0] != spec.fraction:
            networks.clear()  # the plan is ordered by fraction: those networks are done
        syn = syn_sets.get((spec.condition.model, spec.fraction))
        fp = fingerprint(params, data, None if syn is None else syn.index, spec.condition)
        path = runs_dir / f"{spec.name}.json"
        record = read_run(path, fp) if resume else None
        if record is None and aggregate_only:
            missing += 1
            log(f"segment: {spec.name}: not run (aggregate only)")
            continue
        if record is None:
            record = run_one(spec, data, syn, params, fp, networks)
            write_json(path, record)
            executed += 1
            how = f"{record['seconds']:.1f} s on {record['device']}" + _run_notes(record)
        else:
            how = "resumed"
        records.append(record)
        if spec.condition.name == "real":
            faithful += score_faithfulness(
                spec, record, data, syn_sets, params, Path(out_dir), networks, aggregate_only, log
            )
        same = [
            r["mean_dice"]
            for r in records
            if r["condition"] == spec.condition.name and r["fraction"] == spec.fraction
        ]
        log(
            f"segment: {spec.condition.name} f={spec.fraction:g} seed {spec.seed}: "
            f"Dice {record['mean_dice']:.3f} (mean of {len(same)} seed(s) {np.mean(same):.3f}; "
            f"{record['n_real']} real + {record['n_synthetic']} synthetic; {how})"
        )  # fmt: skip
    rows = [] if shard is not None else write_results(records, params, Path(out_dir))
    if shard is None:  # always written (header only without synthetic sets): a DVC output
        (Path(out_dir) / faith.DIRNAME).mkdir(exist_ok=True)
        faith_rows = faith.aggregate(faithful)
        for name, text in (("faithfulness.md", faith.table_markdown(faith_rows)),
                           ("faithfulness.csv", faith.table_csv(faith_rows))):  # fmt: skip
            with atomic_path(Path(out_dir) / name) as tmp:
                tmp.write_text(text)
    return {
        "runs": len(records),
        "executed": executed,
        "missing": missing,
        "rows": rows,
        "out": str(out_dir),
    }
