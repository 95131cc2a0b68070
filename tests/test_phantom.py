"""``gvae phantom``: deterministic synthetic cases in TCIA Pancreas-CT's exact layout/convention."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from pipeline.cli import main as cli_main
from pipeline.cohort.phantom import organs as org
from pipeline.cohort.phantom import write as phantom
from pipeline.cohort.phantom.anatomy import case_rng, make_case, sample_geometry, tissue_map
from pipeline.errors import StageError
from pipeline.io.dicom_write import SeriesHeader, write_ct_series
from pipeline.params.cohort import PhantomParams

TINY = PhantomParams(cases=2, seed=0, slices=16, matrix=64, slice_thickness_mm=5.0)
STUDY_RE = re.compile(r"^\d{2}-\d{2}-\d{4}-PANCREAS(\d{4})-Pancreas-\d{5}$")
SERIES_RE = re.compile(r"^Pancreas-\d{5}$")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("phantom")
    return out, phantom.run(TINY, out)


def _series(out: Path, case: str) -> list[pydicom.Dataset]:
    files = sorted((out / "Pancreas-CT" / case).rglob("*.dcm"))
    return sorted((pydicom.dcmread(f) for f in files), key=lambda ds: int(ds.InstanceNumber))


def _hu(series: list[pydicom.Dataset]) -> np.ndarray:
    return np.stack(
        [ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in series]
    )


def test_make_case_is_deterministic_per_seed_and_case() -> None:
    hu, lab, geom = make_case(0, 1, TINY)
    hu2, lab2, geom2 = make_case(0, 1, TINY)
    assert hu.dtype == np.int16 and lab.dtype == np.uint8
    assert hu.shape == lab.shape == (16, 64, 64)
    assert hu.tobytes() == hu2.tobytes() and lab.tobytes() == lab2.tobytes() and geom == geom2
    other, other_lab, _ = make_case(1, 1, TINY)
    assert other.tobytes() != hu.tobytes() and other_lab.tobytes() != lab.tobytes()
    # An explicit Generator is consumed as given: the same stream gives the same case.
    hu3, _, _ = make_case(case_rng(0, 1), 1, TINY)
    assert np.array_equal(hu3, hu)
    with pytest.raises(ValueError, match="index"):
        make_case(0, 0, TINY)


def test_layout_is_tcia(cohort, real_data_dir: Path) -> None:
    out, ids = cohort
    assert ids == ["PANCREAS_0001", "PANCREAS_0002"]
    assert sorted(p.name for p in (out / "Pancreas-CT").iterdir()) == ids
    labels = out / "TCIA_pancreas_labels-02-05-2017"
    assert sorted(p.name for p in labels.iterdir()) == ["label0001.nii.gz", "label0002.nii.gz"]
    # The real collection's folders follow the same patterns, checked on the mirror.
    real = real_data_dir / "pancreas_ct" / "Pancreas-CT" / "PANCREAS_0001"
    for root in (real, out / "Pancreas-CT" / "PANCREAS_0002"):
        (study,) = list(root.iterdir())
        match = STUDY_RE.match(study.name)
        assert match and match.group(1) == root.name[-4:], study.name
        (series,) = list(study.iterdir())
        assert SERIES_RE.match(series.name), series.name
        names = sorted(p.name for p in series.iterdir())
        assert names[:2] == ["1-001.dcm", "1-002.dcm"]
    names = sorted(p.name for p in (out / "Pancreas-CT" / "PANCREAS_0002").rglob("*.dcm"))
    assert names == [f"1-{i:03d}.dcm" for i in range(1, 17)]
    assert not [p for p in out.rglob(".*")], "temporary files left behind"


def test_dicom_headers_and_hu_round_trip(cohort) -> None:
    out, _ = cohort
    hu, _, geom = make_case(TINY.seed, 1, TINY)
    series = _series(out, "PANCREAS_0001")
    ds = series[0]
    assert ds.Modality == "CT" and ds.PatientID == "PANCREAS_0001"
    assert ds.ImageComments == "SYNTHETIC PHANTOM" and "SYNTHETIC" in ds.Manufacturer
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, -1, 0]  # as TCIA
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx(geom.pixel_spacing)
    assert float(ds.SliceThickness) == 5.0 and float(ds.RescaleSlope) == 1.0
    assert float(ds.RescaleIntercept) == geom.rescale_intercept
    assert len({s.SeriesInstanceUID for s in series}) == 1
    assert len({s.SOPInstanceUID for s in series}) == 16
    # Instance 1 is the most superior slice; positions step 5 mm inferior, like TCIA's.
    z = np.array([float(s.ImagePositionPatient[2]) for s in series])
    assert np.allclose(np.diff(z), -5.0)
    assert np.array_equal(_hu(series), hu)


def test_label_follows_tcia_convention(cohort, real_data_dir: Path) -> None:
    out, _ = cohort
    _, lab, geom = make_case(TINY.seed, 1, TINY)
    img = nib.load(out / "TCIA_pancreas_labels-02-05-2017" / "label0001.nii.gz")
    data = np.asarray(img.dataobj)
    assert data.dtype == np.uint8 and data.shape == (64, 64, 16)  # (cols, rows, slices)
    assert set(np.unique(data)) == {0, 1}
    assert np.array_equal(data, lab.transpose(2, 1, 0))
    real = nib.load(real_data_dir / "pancreas_ct/TCIA_pancreas_labels-02-05-2017/label0001.nii.gz")
    # Same axis signs as TCIA's label: diag(-col spacing, +row spacing, -slice step).
    assert np.array_equal(np.sign(img.affine[:3, :3]), np.sign(real.affine[:3, :3]))
    assert np.allclose(np.abs(np.diag(img.affine)[:3]), [*geom.pixel_spacing[::-1], 5.0])
    # label[x, y, k] marks pixel_array[row=y, col=x] of InstanceNumber k + 1: HU under the mask
    # look like pancreas (TCIA reference: mean 102.6, sd 30.9); every flip or transpose is worse.
    hu = _hu(_series(out, "PANCREAS_0001")).transpose(2, 1, 0)  # (cols, rows, slices)
    mask = data > 0
    mean, sd = hu[mask].mean(), hu[mask].std()
    assert 80 < mean < 130 and sd < 40, (mean, sd)
    for name, wrong in {
        "x": mask[::-1],
        "y": mask[:, ::-1],
        "k": mask[:, :, ::-1],
        "xy": mask.transpose(1, 0, 2),
    }.items():
        m, s = hu[wrong].mean(), hu[wrong].std()
        assert abs(m - mean) > 15 or s > sd + 8, (name, m, s)


def test_cases_vary(cohort) -> None:
    cases = [make_case(3, i, TINY) for i in (1, 2, 3)]
    spacings = {g.pixel_spacing for _, _, g in cases}
    assert len(spacings) == 3
    for _, _, g in cases:  # 0.66-0.98 mm at 512^2, scaled to the 64^2 matrix
        assert 0.66 * 8 <= g.pixel_spacing[0] <= 0.98 * 8
        assert g.rescale_intercept in (-1024.0, -1000.0, 0.0)
    vols = [lab.sum() * g.pixel_spacing[0] ** 2 * 5.0 for _, lab, g in cases]
    assert len({round(v) for v in vols}) == 3
    assert all(15_000 < v < 150_000 for v in vols), vols  # mm^3: adult pancreas 20-100 ml
    centroids = [np.argwhere(lab).mean(axis=0) for _, lab, _ in cases]
    assert np.linalg.norm(centroids[0] - centroids[1]) > 0.5


def test_anatomy_is_plausible() -> None:
    hu, lab, geom = make_case(0, 1, TINY)
    body = hu > -500
    assert -200 < hu[body].mean() < 150
    assert (hu > 500).sum() > 20  # vertebra
    assert hu.min() >= -1024 and hu.max() <= 3071
    # Gas pockets inside the body (bowel, stomach): below -900 HU but enclosed by tissue rows.
    inside = np.zeros_like(body)
    for k in range(hu.shape[0]):
        cols = body[k].any(axis=0).nonzero()[0]
        rows = body[k].any(axis=1).nonzero()[0]
        inside[k, rows[0] + 3 : rows[-1] - 3, cols[0] + 3 : cols[-1] - 3] = True
    assert ((hu < -900) & inside).sum() > 0
    # The pancreas is on a subset of slices, as in the real data (71 of 240 slices).
    present = lab.any(axis=(1, 2))
    assert 3 <= present.sum() < present.size
    # TCIA's orientation: spine at low rows, liver (patient right) at low columns, spleen high.
    rng = case_rng(0, 1)
    tissue = tissue_map(sample_geometry(rng, 1, TINY), rng)

    def centre(tid: int) -> np.ndarray:
        return np.argwhere(tissue == tid)[:, 1:].mean(axis=0)  # (row, col)

    assert centre(org.CORTICAL)[0] < centre(org.AORTA)[0] < centre(org.PANCREAS)[0]
    assert centre(org.LIVER)[1] < centre(org.AORTA)[1] < centre(org.SPLEEN)[1]


def _params_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(body)
    return path


def test_cli_flags_override_params(tmp_path: Path, capsys) -> None:
    params = _params_file(tmp_path, "phantom: {cases: 3, seed: 5, slices: 8, matrix: 64}\n")
    out = tmp_path / "raw"
    rc = cli_main(["phantom", "--params", str(params), "--out", str(out), "--cases", "1"])
    assert rc == 0
    assert [p.name for p in (out / "Pancreas-CT").iterdir()] == ["PANCREAS_0001"]
    series = _series(out, "PANCREAS_0001")
    assert len(series) == 8 and int(series[0].Rows) == 64
    expected, _, _ = make_case(5, 1, PhantomParams(seed=5, slices=8, matrix=64))
    assert np.array_equal(_hu(series), expected)
    # Rerunning with fewer cases removes the earlier run's surplus phantom cases.
    rc = cli_main(["phantom", "--params", str(params), "--out", str(out), "--seed", "6"])
    assert rc == 0 and len(list((out / "Pancreas-CT").iterdir())) == 3
    rc = cli_main(["phantom", "--params", str(params), "--out", str(out), "--cases", "2"])
    assert rc == 0 and len(list((out / "Pancreas-CT").iterdir())) == 2
    assert not (out / "TCIA_pancreas_labels-02-05-2017" / "label0003.nii.gz").exists()
    capsys.readouterr()
    rc = cli_main(["phantom", "--params", str(params), "--out", str(out), "--cases", "0"])
    assert rc == 2 and "--cases" in capsys.readouterr().err
    bad = _params_file(tmp_path, "phantom: {casez: 2}\n")
    rc = cli_main(["phantom", "--params", str(bad), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "phantom.casez" in err and str(bad) in err


def test_refuses_to_overwrite_real_cases(tmp_path: Path) -> None:
    real = tmp_path / "Pancreas-CT" / "PANCREAS_0001" / "study" / "series"
    header = SeriesHeader(
        "PANCREAS_0001", pixel_spacing=(1, 1), slice_step_mm=1, slice_thickness_mm=1
    )
    write_ct_series(real, np.zeros((2, 8, 8), np.int16), header)
    with pytest.raises(StageError, match="PANCREAS_0001.*not a synthetic phantom"):
        phantom.run(TINY, tmp_path)
    assert (real / "1-001.dcm").exists()
    assert not (tmp_path / "TCIA_pancreas_labels-02-05-2017").exists()


def test_interrupted_case_leaves_nothing_half_written(tmp_path: Path, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(phantom, "write_nifti", boom)
    with pytest.raises(OSError, match="disk full"):
        phantom.run(TINY, tmp_path)
    assert list((tmp_path / "Pancreas-CT").iterdir()) == []  # no case, no temp folder
