"""Synthetic abdominal CT cases: geometry, tissue map, HU rendering and TCIA-style labels.

``make_case`` is the pure core of ``gvae phantom``: it draws one patient's scan geometry and
anatomy from a seeded generator and returns the HU volume in DICOM instance order, the pancreas
mask and the geometry needed to write the series. The geometry copies TCIA Pancreas-CT
(Roth et al., doi:10.7937/K9/TCIA.2016.tNB1kqBU): orientation (1,0,0,0,-1,0), so the spine is at
the top of the image and the patient's right at low columns, instance 1 most superior, square
pixels of 0.66-0.98 mm at 512^2 (scaled by 512 / matrix so the field of view stays realistic).

HU rendering: a piecewise-constant tissue map, a smooth per-tissue texture field, a sub-mm
blur for partial volume, and Gaussian noise slightly correlated in-plane (CT noise is not white:
its power spectrum is shaped by the reconstruction kernel; Hanson, Med. Phys. 6(5), 1979).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from pipeline.cohort.phantom import organs as org
from pipeline.params.cohort import PhantomParams

TCIA_ORIENTATION = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
TCIA_SLICE_DIRECTION = (0.0, 0.0, -1.0)  # instance k -> k+1 moves inferior, as in TCIA
HU_MIN, HU_MAX = -1024, 3071  # 12-bit CT range; TCIA's Pancreas-CT stays inside it
PAD_HU = -1024  # outside the reconstruction circle
INTERCEPTS = (-1024.0, -1000.0, 0.0)


@dataclass(frozen=True)
class CaseGeometry:
    """Scan geometry and rescale of one synthetic case (what its DICOM headers will say).

    ``origin`` is the ImagePositionPatient (LPS, mm) of InstanceNumber 1, the most superior slice;
    ``pixel_spacing`` is (row spacing, column spacing) as in the DICOM attribute.
    """

    index: int
    rows: int
    cols: int
    n_slices: int
    pixel_spacing: tuple[float, float]
    slice_step_mm: float
    slice_thickness_mm: float
    origin: tuple[float, float, float]
    rescale_intercept: float
    noise_hu: float
    study_date: str  # YYYYMMDD
    orientation: tuple[float, ...] = TCIA_ORIENTATION
    slice_direction: tuple[float, float, float] = TCIA_SLICE_DIRECTION
    rescale_slope: float = 1.0

    @property
    def case_id(self) -> str:
        """TCIA's patient id, ``PANCREAS_0001`` for index 1."""
        return f"PANCREAS_{self.index:04d}"

    def label_affine(self) -> np.ndarray:
        """Return the 4x4 RAS affine of ``label[x=col, y=row, k=instance-1]``.

        Built like TCIA's labels (PS3.3 C.7.6.2.1.1 mapped LPS -> RAS): columns are row cosine x
        column spacing, column cosine x row spacing and the instance direction x slice step, which
        for TCIA's orientation is ``diag(-col_spacing, row_spacing, -slice_step)``.
        """
        iop = np.asarray(self.orientation, dtype=np.float64)
        lps = np.eye(4)
        lps[:3, 0] = iop[:3] * self.pixel_spacing[1]
        lps[:3, 1] = iop[3:] * self.pixel_spacing[0]
        lps[:3, 2] = np.asarray(self.slice_direction) * self.slice_step_mm
        lps[:3, 3] = self.origin
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def case_rng(seed: int, index: int) -> np.random.Generator:
    """Return the generator of case ``index``: independent of how many cases are written."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def sample_geometry(rng: np.random.Generator, index: int, params: PhantomParams) -> CaseGeometry:
    """Draw one case's pixel spacing, table position, rescale intercept, noise and study date."""
    spacing = round(org._u(rng, 0.66, 0.98) * 512 / params.matrix, 6)
    half = (params.matrix - 1) / 2 * spacing
    # IOP (1,0,0,0,-1,0): column index runs +x (left), row index runs -y (anterior); centring
    # the image on the isocentre puts instance 1's top-left pixel at (-half, +half).
    origin = (-half, half, round(org._u(rng, -150.0, 150.0), 2))
    intercept = INTERCEPTS[int(rng.integers(len(INTERCEPTS)))]
    day = dt.date(2012, 1, 1) + dt.timedelta(days=int(rng.integers(0, 5 * 365)))
    return CaseGeometry(
        index=index,
        rows=params.matrix,
        cols=params.matrix,
        n_slices=params.slices,
        pixel_spacing=(spacing, spacing),
        slice_step_mm=params.slice_thickness_mm,
        slice_thickness_mm=params.slice_thickness_mm,
        origin=(round(origin[0], 4), round(origin[1], 4), origin[2]),
        rescale_intercept=intercept,
        noise_hu=org._u(rng, 10, 18),
        study_date=day.strftime("%Y%m%d"),
    )


def patient_grid(geom: CaseGeometry, centre: tuple[float, float, float]) -> org.Grid:
    """Return the patient-mm grid of ``geom`` relative to ``centre`` (LPS x, y, z).

    ``lr`` = x (patient left +), ``ap`` = y (posterior +), ``z`` = superior +; see
    ``pipeline.cohort.phantom.organs``.
    """
    iop = np.asarray(geom.orientation, dtype=np.float64)
    rs, cs = geom.pixel_spacing
    r = np.arange(geom.rows, dtype=np.float64)[:, None]
    c = np.arange(geom.cols, dtype=np.float64)[None, :]
    # PS3.3 Eq. C.7.6.2-1: P = origin + col * cs * row_cosine + row * rs * column_cosine
    x = geom.origin[0] + c * cs * iop[0] + r * rs * iop[3]  # (rows, cols)
    y = geom.origin[1] + c * cs * iop[1] + r * rs * iop[4]
    k = np.arange(geom.n_slices, dtype=np.float64)
    z = geom.origin[2] + k * geom.slice_step_mm * geom.slice_direction[2]  # (n,)
    return org.Grid(
        lr=(x - centre[0]).astype(np.float32),
        ap=(y - centre[1]).astype(np.float32),
        z=(z - centre[2]).astype(np.float32),
    )


def tissue_hu(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return per-tissue (mean HU, texture sd HU), each (N_TISSUES,), for one contrast phase.

    ``phase`` in [0, 1] runs from late portal-venous to pancreatic-phase enhancement: it raises
    the aorta (150-210 HU), the renal cortex (~110-190 HU), IVC, liver and spleen together, as a
    real bolus does. The pancreas is drawn near 105 HU with a 20 HU lobular texture so that,
    with noise and partial volume, voxels under the mask average ~100 HU with sd ~30 HU like the
    TCIA reference patient (mean 102.6, sd 30.9).
    """
    phase = org._u(rng, 0.0, 1.0)
    mean = np.zeros(org.N_TISSUES)
    tex = np.full(org.N_TISSUES, 5.0)
    mean[org.AIR], tex[org.AIR] = -1000, 0
    mean[org.FAT], tex[org.FAT] = org._u(rng, -110, -90), 8
    mean[org.VFAT], tex[org.VFAT] = org._u(rng, -100, -80), 12
    mean[org.MUSCLE] = org._u(rng, 42, 58)
    mean[org.BOWEL] = org._u(rng, 35, 55)
    mean[org.FLUID] = org._u(rng, 5, 25)
    mean[org.GAS], tex[org.GAS] = -1000, 0
    mean[org.LIVER], tex[org.LIVER] = 60 + 35 * phase + org._u(rng, -5, 5), 8
    mean[org.SPLEEN] = 50 + 50 * phase + org._u(rng, -5, 5)
    mean[org.STOMACH] = org._u(rng, 35, 50)
    mean[org.KIDNEY] = 110 + 80 * phase + org._u(rng, -10, 10)
    mean[org.MEDULLA] = 35 + 40 * phase
    mean[org.DUODENUM] = org._u(rng, 30, 50)
    mean[org.PANCREAS], tex[org.PANCREAS] = org._u(rng, 96, 110), 25
    mean[org.IVC] = 80 + 60 * phase
    mean[org.AORTA] = 150 + 60 * phase + org._u(rng, -5, 5)
    mean[org.CSF] = org._u(rng, 5, 20)
    mean[org.DISC] = org._u(rng, 70, 95)
    mean[org.CANCELLOUS], tex[org.CANCELLOUS] = org._u(rng, 200, 300), 40
    mean[org.CORTICAL], tex[org.CORTICAL] = org._u(rng, 600, 800), 60
    return mean, tex


def tissue_map(geom: CaseGeometry, rng: np.random.Generator) -> np.ndarray:
    """Return the uint8 (n, rows, cols) tissue-id map of one case (ids in phantom_organs).

    Organs are drawn in a fixed order (so the generator stream, hence the case, is fixed by the
    seed) and painted in anatomical precedence: body, viscera, pancreas, vessels, spine.
    """
    fov_lr = geom.cols * geom.pixel_spacing[1]
    fov_ap = geom.rows * geom.pixel_spacing[0]
    off = (org._u(rng, -10, 10), org._u(rng, -5, 25))  # body centre relative to the isocentre
    coverage = geom.n_slices * geom.slice_step_mm
    # The pancreatic body sits 35-60 % down the scanned range, so it appears on a subset of
    # slices with organ-free margins above (liver dome) and below (kidneys, bowel).
    level = geom.origin[2] - org._u(rng, 0.35, 0.6) * coverage
    grid = patient_grid(geom, (off[0], off[1], level))
    max_half = (0.47 * fov_lr - abs(off[0]), 0.44 * fov_ap - abs(off[1]))
    body, sizes = org.body_masks(grid, rng, max_half)
    cavity = body[-1][1]
    spine = org.spine_masks(grid, rng, sizes)
    vessels = org.vessel_masks(grid, rng, sizes)
    viscera = org.viscera_masks(grid, rng, sizes, cavity)
    pancreas = org.pancreas_masks(grid, rng, sizes, cavity)
    tissue = np.full((geom.n_slices, geom.rows, geom.cols), org.AIR, dtype=np.uint8)
    for tid, mask in body + viscera + pancreas + vessels + spine:
        tissue[mask] = tid
    return tissue


def render_hu(tissue: np.ndarray, geom: CaseGeometry, rng: np.random.Generator) -> np.ndarray:
    """Return float32 HU (n, rows, cols): tissue means + texture, partial volume, CT noise."""
    mean, tex = tissue_hu(rng)
    px = geom.pixel_spacing[1]
    shape = tissue.shape
    # Texture: unit-variance noise smoothed over ~3 mm in-plane and one slice; its amplitude is
    # per tissue (lobulated pancreas, trabecular bone, fat septa).
    field = gaussian_filter(rng.standard_normal(shape, dtype=np.float32), (0.7, 3.0 / px, 3.0 / px))
    field /= max(float(field.std()), 1e-6)
    hu = mean.astype(np.float32)[tissue] + tex.astype(np.float32)[tissue] * field
    # Partial volume: ~0.6 mm in-plane point spread, so coarse matrices are barely blurred.
    sigma = 0.6 / px
    if sigma > 0.25:
        hu = gaussian_filter(hu, (0, sigma, sigma))
    noise = gaussian_filter(rng.standard_normal(shape, dtype=np.float32), (0, 0.7, 0.7))
    hu += noise * (geom.noise_hu / max(float(noise.std()), 1e-6))
    # Scanners fill pixels outside the reconstructed circle with a padding value.
    r = np.arange(geom.rows)[:, None] - (geom.rows - 1) / 2
    c = np.arange(geom.cols)[None, :] - (geom.cols - 1) / 2
    outside = r**2 + c**2 > (min(geom.rows, geom.cols) / 2) ** 2
    hu[:, outside] = PAD_HU
    return hu


def make_case(
    rng_or_seed: np.random.Generator | int, index: int, params: PhantomParams
) -> tuple[np.ndarray, np.ndarray, CaseGeometry]:
    """Build synthetic case ``index`` (1-based); return ``(hu, label, geometry)``.

    ``hu`` is int16 (n, rows, cols) in DICOM instance order (k = 0 most superior), ``label`` the
    uint8 pancreas mask of the same shape (1 where the rendered tissue is pancreas). An int seed
    gives the same case for the same (seed, index) however many cases are made; a Generator is
    consumed as given.
    """
    if index < 1:
        raise ValueError(f"case index must be >= 1, got {index}")
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else None
    rng = rng or case_rng(int(rng_or_seed), index)
    geom = sample_geometry(rng, index, params)
    tissue = tissue_map(geom, rng)
    hu = render_hu(tissue, geom, rng)
    hu = np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)
    label = (tissue == org.PANCREAS).astype(np.uint8)
    return hu, label, geom


def label_to_tcia(label: np.ndarray) -> np.ndarray:
    """Return (n, rows, cols) -> (cols, rows, n): ``out[x, y, k] = label[k, y, x]`` (TCIA order)."""
    if label.ndim != 3:
        raise ValueError(f"label must be (slices, rows, cols), got shape {label.shape}")
    return np.ascontiguousarray(np.transpose(label, (2, 1, 0)).astype(np.uint8))
