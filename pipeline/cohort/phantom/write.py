"""``gvae phantom``: write the synthetic abdominal CT cohort in TCIA Pancreas-CT's layout.

    OUT/Pancreas-CT/PANCREAS_0001/<MM-DD-YYYY>-PANCREAS0001-Pancreas-<5>/Pancreas-<5>/1-001.dcm
    OUT/TCIA_pancreas_labels-02-05-2017/label0001.nii.gz

exactly as the TCIA download tools write the real collection (Roth et al.,
doi:10.7937/K9/TCIA.2016.tNB1kqBU), so ``gvae ingest`` reads both through the same code. The
anatomy is ``pipeline.cohort.phantom.anatomy.make_case``; this module only names, writes and guards.
Every series says ``SYNTHETIC PHANTOM`` in ImageComments and Manufacturer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from common.atomic import atomic_dir, write_json
from pipeline.cohort.phantom.anatomy import CaseGeometry, label_to_tcia, make_case
from pipeline.errors import StageError
from pipeline.io.dicom_write import SeriesHeader, write_ct_series
from pipeline.io.nifti import write_nifti
from pipeline.params.cohort import PhantomParams

IMAGES_DIR = "Pancreas-CT"
LABELS_DIR = "TCIA_pancreas_labels-02-05-2017"
MANIFEST = "phantom_manifest.json"
MARK = "SYNTHETIC PHANTOM"


def _uid(seed: int, index: int, what: str) -> str:
    # Deterministic UIDs (hash of seed, case, role), so a rerun names the same folders.
    return generate_uid(entropy_srcs=["gvae-phantom", str(seed), str(index), what])


def series_header(geom: CaseGeometry, seed: int) -> SeriesHeader:
    """Return the DICOM series header of one synthetic case (TCIA-like identity, marked)."""
    return SeriesHeader(
        patient_id=geom.case_id,
        pixel_spacing=geom.pixel_spacing,
        slice_step_mm=geom.slice_step_mm,
        slice_thickness_mm=geom.slice_thickness_mm,
        origin=geom.origin,
        orientation=geom.orientation,
        slice_direction=geom.slice_direction,
        rescale_intercept=geom.rescale_intercept,
        rescale_slope=geom.rescale_slope,
        study_uid=_uid(seed, geom.index, "study"),
        series_uid=_uid(seed, geom.index, "series"),
        frame_of_reference_uid=_uid(seed, geom.index, "frame"),
        series_description="Pancreas",
        manufacturer=f"{MARK} (gvae-pipeline)",
        image_comments=MARK,
        study_date=geom.study_date,
    )


def tcia_folders(header: SeriesHeader, index: int) -> tuple[str, str]:
    """Return TCIA's (study folder, series folder) names, e.g. ``11-24-2015-PANCREAS0001-
    Pancreas-18957`` and ``Pancreas-99667``: date, id, description, last 5 digits of the UID."""
    d = header.study_date
    study = f"{d[4:6]}-{d[6:8]}-{d[:4]}-PANCREAS{index:04d}-Pancreas-{header.study_uid[-5:]}"
    return study, f"{header.series_description}-{header.series_uid[-5:]}"


def _is_phantom(case_dir: Path) -> bool:
    first = next(iter(sorted(case_dir.rglob("*.dcm"))), None)
    if first is None:
        return False
    ds = pydicom.dcmread(first, stop_before_pixels=True, force=True)
    return str(ds.get("ImageComments", "")) == MARK


def _clear_stale(images: Path, labels: Path, keep: set[str]) -> None:
    """Refuse to overwrite a non-phantom case; delete phantom cases beyond this cohort."""
    if not images.is_dir():
        return
    for case_dir in sorted(p for p in images.iterdir() if p.name.startswith("PANCREAS_")):
        if not _is_phantom(case_dir):
            raise StageError(
                f"{case_dir}: existing case is not a synthetic phantom; refusing to write "
                "the phantom cohort over it (choose an empty --out)"
            )
        if case_dir.name not in keep:
            shutil.rmtree(case_dir)
            (labels / f"label{case_dir.name[-4:]}.nii.gz").unlink(missing_ok=True)


def write_case(out_dir: Path, seed: int, index: int, params: PhantomParams) -> dict:
    """Make case ``index`` and write its series and label atomically; return its manifest row."""
    hu, label, geom = make_case(seed, index, params)
    header = series_header(geom, seed)
    study, series = tcia_folders(header, index)
    label_path = out_dir / LABELS_DIR / f"label{index:04d}.nii.gz"
    with atomic_dir(out_dir / IMAGES_DIR / geom.case_id) as tmp:
        write_ct_series(tmp / study / series, hu, header)
        # The label (itself written atomically) lands just before the case folder is swapped
        # in: a crash in between leaves an orphan label, which ingest ignores (cases are found
        # from the image folders), never a case without its label.
        write_nifti(label_path, label_to_tcia(label), geom.label_affine())
    slices = label.any(axis=(1, 2)).nonzero()[0]
    return {
        "case": geom.case_id,
        "series": f"{IMAGES_DIR}/{geom.case_id}/{study}/{series}",
        "label": f"{LABELS_DIR}/{label_path.name}",
        "pixel_spacing_mm": list(geom.pixel_spacing),
        "slice_step_mm": geom.slice_step_mm,
        "rescale_intercept": geom.rescale_intercept,
        "noise_hu": round(geom.noise_hu, 2),
        "pancreas_voxels": int(label.sum()),
        "pancreas_slices": [int(slices.min()) + 1, int(slices.max()) + 1] if slices.size else [],
    }


def run(params: PhantomParams, out_dir: str | Path) -> list[str]:
    """Write ``params.cases`` synthetic cases under ``out_dir``; return their ids in order.

    Each case is derived from ``(params.seed, index)`` alone, so case 3 is the same whether 3 or
    8 cases are written. A manifest of geometry and pancreas extent goes to ``MANIFEST``.
    """
    out_dir = Path(out_dir)
    ids = [f"PANCREAS_{i:04d}" for i in range(1, params.cases + 1)]
    _clear_stale(out_dir / IMAGES_DIR, out_dir / LABELS_DIR, set(ids))
    rows = [write_case(out_dir, params.seed, i, params) for i in range(1, params.cases + 1)]
    write_json(out_dir / MANIFEST, {"params": params.model_dump(), "cases": rows})
    return ids
