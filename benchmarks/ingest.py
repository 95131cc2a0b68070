"""Ingest throughput on the real Pancreas-CT patient, next to a plain SimpleITK series read.

    python benchmarks/ingest.py [MIRROR_OR_PANCREAS_DIR] [--repeats N] [--workers 1 2]
        [--cases N]

The path defaults to ``$GVAE_DATA_MIRROR`` or ``../shared/data`` beside the checkout. Prints
slices/s (best and median of N) for: our series read (DICOM -> int16 HU + affine), the whole
per-case ingest (hash + read + label + two gzipped NIfTI files), and SimpleITK's
``ImageSeriesReader`` (GDCM) reading the same files, with the ratios to SimpleITK.

Then scaling with workers: the whole stage (``pipeline.cohort.ingest.run``, manifest included)
on a cohort of ``--cases`` case folders that are symbolic links to the one mirrored patient,
once per ``--workers`` value, as slices/s and the speed-up over the first value.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.cohort.ingest import ingest_case, run  # noqa: E402
from pipeline.cohort.sources.tcia import label_path_for  # noqa: E402
from pipeline.io.dicom_read import list_files, read_series  # noqa: E402
from pipeline.params.loader import IngestParams  # noqa: E402


def find_pancreas(arg: str | None) -> Path:
    """Resolve the ``pancreas_ct`` folder from an argument, ``$GVAE_DATA_MIRROR`` or default."""
    root = Path(arg or os.environ.get("GVAE_DATA_MIRROR") or REPO.parent / "shared" / "data")
    for candidate in (root, root / "pancreas_ct"):
        if (candidate / "Pancreas-CT").is_dir():
            return candidate
    raise SystemExit(f"{root}: no Pancreas-CT folder here or in pancreas_ct/")


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    """Run ``fn`` ``repeats`` times after one warm-up (page cache); return wall times in s."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def sitk_read(series_dir: Path) -> None:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series_dir)))
    sitk.GetArrayViewFromImage(reader.Execute())


def linked_cohort(case_dir: Path, label: Path, root: Path, cases: int) -> tuple[Path, Path]:
    """(images, labels) folders under ``root``: ``cases`` case folders PANCREAS_0001.. that
    link to ``case_dir``, each with a ``labelNNNN.nii.gz`` linking to ``label``.

    One patient read ``cases`` times gives the worker pool equal, real-sized jobs without
    copying data (the mirror holds one DICOM patient).
    """
    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    for k in range(1, cases + 1):
        (images / f"PANCREAS_{k:04d}").symlink_to(case_dir.resolve(), target_is_directory=True)
        (labels / f"label{k:04d}.nii.gz").symlink_to(label.resolve())
    return images, labels


def worker_scaling(case_dir: Path, label: Path, workers: list[int], cases: int, n: int) -> None:
    """Print slices/s of the whole ingest stage on a linked cohort for each worker count."""
    print(f"Whole stage on {cases} linked copies of {case_dir.name} ({cases * n} slices), 1 run")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        images, labels = linked_cohort(case_dir, label, Path(tmp), cases)
        for w in workers:
            start = time.perf_counter()
            rows = run(IngestParams(workers=w), images, labels, Path(tmp) / f"out-{w}")
            seconds = time.perf_counter() - start
            failed = [f"{r['case_id']}: {r.get('error')}" for r in rows if r["status"] != "ok"]
            if failed:
                raise SystemExit(f"ingest failed: {'; '.join(failed)}")
            rate = cases * n / seconds
            base = base or rate
            print(
                f"  workers {w:<3} {rate:7.1f} slices/s  ({seconds:.2f} s)"
                f"  x{rate / base:.2f} of workers {workers[0]}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", nargs="?", help="data mirror or its pancreas_ct folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workers", nargs="+", type=int, default=[1, 2], help="ingest.workers values to compare"
    )
    parser.add_argument("--cases", type=int, default=2, help="linked case folders for scaling")
    args = parser.parse_args()
    if args.cases < 1 or min(args.workers) < 1:
        parser.error(f"need --cases >= 1 and --workers >= 1, got {args.cases}, {args.workers}")
    src = find_pancreas(args.path)
    case_dir = sorted(p for p in (src / "Pancreas-CT").iterdir() if p.is_dir())[0]
    files = list_files(case_dir)
    series_dir = files[0].parent
    n = len(files)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # same footing as one ingest worker

    with tempfile.TemporaryDirectory() as tmp:
        labels = src / "TCIA_pancreas_labels-02-05-2017"
        results = {
            "gvae read_series": timed(lambda: read_series(case_dir), args.repeats),
            "gvae ingest case": timed(
                lambda: ingest_case(case_dir, labels, Path(tmp), IngestParams()), args.repeats
            ),
            "SimpleITK read": timed(lambda: sitk_read(series_dir), args.repeats),
        }
    print(f"{case_dir.name}: {n} slices, best/median of {args.repeats} (1 thread each)")
    ref = n / min(results["SimpleITK read"])
    for name, times in results.items():
        best, median = n / min(times), n / statistics.median(times)
        print(
            f"  {name:<18} {best:7.1f} slices/s best  {median:7.1f} median"
            f"  ({min(times):.2f} s)  x{best / ref:.2f} of SimpleITK"
        )
    print()
    label = label_path_for(case_dir.name, labels, case_dir)
    worker_scaling(case_dir, label, args.workers, args.cases, n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
