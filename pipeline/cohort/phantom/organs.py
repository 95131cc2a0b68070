"""Organ shapes of the synthetic abdomen: pure, vectorised masks on a patient-mm grid.

Every organ is an analytic solid in patient coordinates (mm): ``lr`` grows toward the patient's
left, ``ap`` toward the back, ``z`` toward the head, all relative to the centre of the body at
the level of the pancreatic body. Shapes are ellipsoids whose surface is perturbed by a few
angular harmonics (the "lobulated ellipsoid" of shape-model phantoms, cf. Segars et al., 4D XCAT,
Med. Phys. 37(9), 2010) plus a swept-sphere tube for the pancreas, so they vary smoothly along z
and between cases. Sizes and positions follow textbook adult abdominal anatomy; HU values follow
typical contrast-enhanced CT (Hounsfield, Br. J. Radiol. 46, 1973 for the scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Tissue ids of the label map; ``paint_order`` paints them in this order (later wins).
AIR, FAT, MUSCLE, VFAT, BOWEL, FLUID, GAS, LIVER, SPLEEN, STOMACH = range(10)
KIDNEY, MEDULLA, DUODENUM, PANCREAS, IVC, AORTA, CSF, DISC, CANCELLOUS, CORTICAL = range(10, 20)
N_TISSUES = 20


@dataclass(frozen=True)
class Grid:
    """Patient-mm coordinates of every voxel: ``lr``/``ap`` are (rows, cols), ``z`` is (n,)."""

    lr: np.ndarray
    ap: np.ndarray
    z: np.ndarray


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    """One ``rng.uniform(lo, hi)`` draw as a float (also ``anatomy``'s, as ``org._u``)."""
    return float(rng.uniform(lo, hi))


def ellipsoid(
    grid: Grid,
    centre: tuple[float, float, float],
    axes: tuple[float, float, float],
    lobes: tuple[float, ...] = (),
) -> np.ndarray:
    """Return a bool (n, rows, cols) mask of a lobulated ellipsoid.

    The surface is ``q = 1 + sum_m a_m cos(m*theta - phi_m)`` in the normalised quadratic
    ``q^2 = (dlr/a)^2 + (dap/b)^2 + (dz/c)^2``; ``lobes`` is flat ``(a_1, phi_1, a_2, phi_2, ...)``
    so harmonic m = 1, 2, ... shifts and dents the outline in-plane, identically on every slice.
    """
    dlr, dap = grid.lr - centre[0], grid.ap - centre[1]
    q2 = (dlr / axes[0]) ** 2 + (dap / axes[1]) ** 2  # (rows, cols)
    dz2 = ((grid.z - centre[2]) / axes[2]) ** 2  # (n,)
    bound = np.ones_like(q2)
    if lobes:
        theta = np.arctan2(dap, dlr)
        for m in range(len(lobes) // 2):
            bound = bound + lobes[2 * m] * np.cos((m + 1) * theta - lobes[2 * m + 1])
    return q2[None] + dz2[:, None, None] < (bound**2)[None]  # (n, rows, cols)


def cylinder(grid: Grid, centre: tuple[float, float], axes: tuple[float, float]) -> np.ndarray:
    """Return a bool (n, rows, cols) mask of an elliptic cylinder along z (vessels, canal)."""
    inside = ((grid.lr - centre[0]) / axes[0]) ** 2 + ((grid.ap - centre[1]) / axes[1]) ** 2 < 1
    return np.broadcast_to(inside[None], (grid.z.size, *inside.shape))


def tube(grid: Grid, points: np.ndarray, radii: np.ndarray, z_scale: float = 1.0) -> np.ndarray:
    """Return a bool (n, rows, cols) mask of the union of spheroids around centreline points.

    Voxel X is inside when ``|X - P_j| < r_j`` for some j with z distances divided by
    ``z_scale`` (> 1 makes the tube taller than thick). ``points`` (m, 3) in (lr, ap, z) mm sampled
    densely along a centreline, ``radii`` (m,). Only
    the in-plane bounding box of the tube is evaluated, which keeps this cheap on 512^2 images.
    """
    n, (rows, cols) = grid.z.size, grid.lr.shape
    out = np.zeros((n, rows, cols), dtype=bool)
    rmax = float(radii.max())
    near = (
        (grid.lr > points[:, 0].min() - rmax)
        & (grid.lr < points[:, 0].max() + rmax)
        & (grid.ap > points[:, 1].min() - rmax)
        & (grid.ap < points[:, 1].max() + rmax)
    )
    if not near.any():
        return out
    ri, ci = np.nonzero(near.any(axis=1))[0], np.nonzero(near.any(axis=0))[0]
    box = np.s_[ri[0] : ri[-1] + 1, ci[0] : ci[-1] + 1]
    lr, ap = grid.lr[box], grid.ap[box]  # (h, w)
    for k in range(n):
        r2 = radii**2 - ((grid.z[k] - points[:, 2]) / z_scale) ** 2  # in-plane radius^2
        hit = r2 > 0
        if not hit.any():
            continue
        p, r2 = points[hit], r2[hit]
        d2 = (lr[None] - p[:, 0, None, None]) ** 2 + (ap[None] - p[:, 1, None, None]) ** 2
        out[k][box] = (d2 < r2[:, None, None]).any(axis=0)  # (m, h, w) -> (h, w)
    return out


def _lobes(rng: np.random.Generator, amp: float, harmonics: int = 3) -> tuple[float, ...]:
    out: list[float] = []
    for m in range(harmonics):
        out += [_u(rng, -amp, amp) / (m + 1), _u(rng, 0, 2 * np.pi)]
    return tuple(out)


def body_masks(
    grid: Grid, rng: np.random.Generator, max_half: tuple[float, float]
) -> tuple[list[tuple[int, np.ndarray]], dict[str, float]]:
    """Body outline, subcutaneous fat, abdominal wall muscle and the visceral cavity.

    The outline is a superellipse ``|lr/A|^p + |ap/B|^p < 1`` (p ~ 2.0-2.6, flatter at the back
    as on a CT couch) whose half-axes drift linearly with z. ``max_half`` (lr, ap) caps the
    half-axes so the body stays inside the field of view. Returns the paint layers and the
    sizes later organs are placed by.
    """
    a = min(_u(rng, 135, 175), max_half[0])
    b = min(_u(rng, 95, 130), max_half[1], 0.85 * a)
    p, grow = _u(rng, 2.0, 2.6), _u(rng, -0.08, 0.08)
    fat, wall = _u(rng, 8, 30), _u(rng, 6, 12)
    scale = 1 + grow * grid.z / 100.0  # (n,) wider or narrower toward the pelvis
    ax, ay = a * scale[:, None, None], b * scale[:, None, None]
    lr, ap = np.abs(grid.lr)[None], np.abs(grid.ap)[None]

    def shell(t: float) -> np.ndarray:  # superellipse shrunk by t mm
        return (lr / np.maximum(ax - t, 1)) ** p + (ap / np.maximum(ay - t, 1)) ** p < 1

    body, inner_fat, cavity = shell(0), shell(fat), shell(fat + wall)
    layers = [(FAT, body), (MUSCLE, inner_fat), (VFAT, cavity)]
    sizes = {"A": a, "B": b, "fat": fat, "wall": wall, "cav_a": a - fat - wall}
    sizes["cav_b"] = b - fat - wall
    return layers, sizes


def spine_masks(
    grid: Grid, rng: np.random.Generator, s: dict[str, float]
) -> list[tuple[int, np.ndarray]]:
    """Vertebra (cortical shell, cancellous core, periodic discs), canal, psoas, paraspinals."""
    r = _u(rng, 16, 21)
    c = s["B"] - s["fat"] - _u(rng, 50, 62)  # vertebral body centre, posterior in the cavity
    s.update(vb_ap=c, vb_r=r)
    period, disc, phase = _u(rng, 32, 38), _u(rng, 6, 9), _u(rng, 0, 40)
    is_disc = ((grid.z - phase) % period < disc)[:, None, None]  # (n, 1, 1)
    vb = cylinder(grid, (0.0, c), (r * 1.1, r))
    core = cylinder(grid, (0.0, c), (r * 1.1 - 2.5, r - 2.5))
    pedicles = cylinder(grid, (-r * 0.55, c + r), (5, 9)) | cylinder(
        grid, (r * 0.55, c + r), (5, 9)
    )
    spinous = cylinder(grid, (0.0, c + r + 24), (6, 16))
    lamina = ellipsoid(grid, (0.0, c + r + 14, 0.0), (r * 0.9, 6, 1e6))
    transverse = cylinder(grid, (-r * 1.5, c + r + 8), (14, 5)) | cylinder(
        grid, (r * 1.5, c + r + 8), (14, 5)
    )
    posterior = (pedicles | spinous | lamina | transverse) & ~is_disc
    psoas_r = _u(rng, 11, 16)
    psoas_grow = 1 - np.clip(grid.z, -80, 40)[:, None, None] / 120  # psoas thickens caudally
    psoas = [
        ((grid.lr - sx * (r + psoas_r * 0.8)) / (psoas_r * psoas_grow)) ** 2
        + ((grid.ap - c + 2) / (psoas_r * 1.1 * psoas_grow)) ** 2
        < 1
        for sx in (-1, 1)
    ]
    para = cylinder(grid, (-(r + 20), c + r + 18), (20, 24)) | cylinder(
        grid, (r + 20, c + r + 18), (20, 24)
    )
    return [
        (MUSCLE, para | psoas[0] | psoas[1]),
        (CORTICAL, (vb & ~is_disc) | posterior),
        (CANCELLOUS, core & ~is_disc),
        (DISC, vb & is_disc),
        (CSF, cylinder(grid, (0.0, c + r + 9), (8, 7))),
    ]


def vessel_masks(
    grid: Grid, rng: np.random.Generator, s: dict[str, float]
) -> list[tuple[int, np.ndarray]]:
    """Aorta (left of midline, anterior to the spine) and inferior vena cava (right)."""
    ra = _u(rng, 9, 13)
    s.update(ao_lr=_u(rng, 4, 14), ao_ap=s["vb_ap"] - s["vb_r"] - ra - _u(rng, 1, 4), ao_r=ra)
    s.update(ivc_lr=-_u(rng, 20, 30), ivc_ap=s["vb_ap"] - s["vb_r"] - _u(rng, 4, 10))
    return [
        (AORTA, cylinder(grid, (s["ao_lr"], s["ao_ap"]), (ra, ra))),
        (IVC, cylinder(grid, (s["ivc_lr"], s["ivc_ap"]), (_u(rng, 11, 15), _u(rng, 7, 10)))),
    ]


def viscera_masks(
    grid: Grid, rng: np.random.Generator, s: dict[str, float], cavity: np.ndarray
) -> list[tuple[int, np.ndarray]]:
    """Bowel loops, liver (right), spleen (left, posterior), stomach (left, anterior), kidneys."""
    ca, cb = s["cav_a"], s["cav_b"]
    layers: list[tuple[int, np.ndarray]] = []
    for _ in range(int(rng.integers(6, 11))):  # bowel loops: wall, fluid or gas content
        c = (_u(rng, -0.7, 0.7) * ca, _u(rng, -0.75, 0.15) * cb, _u(rng, -90, 15))
        ax = (_u(rng, 12, 22), _u(rng, 12, 20), _u(rng, 15, 40))
        inner = (ax[0] - 3, ax[1] - 3, ax[2] - 3)
        content = GAS if rng.random() < 0.35 else FLUID
        layers += [(BOWEL, ellipsoid(grid, c, ax) & cavity), (content, ellipsoid(grid, c, inner))]
        if content == FLUID and rng.random() < 0.5:  # gas floats anterior (low ap) when supine
            layers.append((GAS, ellipsoid(grid, c, inner) & (grid.ap < c[1] - 0.5 * inner[1])))
    liver_c = (-_u(rng, 0.42, 0.55) * ca, -_u(rng, 0, 0.15) * cb)
    liver = ellipsoid(
        grid,
        (*liver_c, _u(rng, 45, 75)),
        (_u(rng, 0.6, 0.75) * ca, _u(rng, 0.8, 0.95) * cb, _u(rng, 90, 120)),
        _lobes(rng, 0.08),
    )
    sp = (_u(rng, 0.62, 0.75) * ca, _u(rng, 0.3, 0.5) * cb, _u(rng, 30, 50))
    s.update(sp_lr=sp[0], sp_ap=sp[1])
    spleen = ellipsoid(
        grid, sp, (_u(rng, 18, 26), _u(rng, 38, 55), _u(rng, 40, 55)), _lobes(rng, 0.1)
    )
    st = (_u(rng, 0.25, 0.4) * ca, -_u(rng, 0.3, 0.45) * cb, _u(rng, 35, 60))
    st_ax = (_u(rng, 40, 55), _u(rng, 30, 40), _u(rng, 45, 65))
    lumen = ellipsoid(grid, st, (st_ax[0] - 4, st_ax[1] - 4, st_ax[2] - 4))
    gas_level = st[1] - st_ax[1] * (1 - 2 * _u(rng, 0.1, 0.45))
    layers += [
        (LIVER, liver & cavity),
        (SPLEEN, spleen & cavity),
        (STOMACH, ellipsoid(grid, st, st_ax) & cavity),
        (FLUID, lumen),
        (GAS, lumen & (grid.ap < gas_level)[None]),
    ]
    for side in (-1, 1):  # right kidney sits lower than the left (liver above it)
        kc = (
            side * _u(rng, 58, 75),
            s["vb_ap"] - _u(rng, 0, 10),
            -_u(rng, 10, 30) - (15 if side < 0 else 0),
        )
        kax = (_u(rng, 24, 30), _u(rng, 20, 26), _u(rng, 45, 55))
        lobes = _lobes(rng, 0.06)
        layers += [
            (KIDNEY, ellipsoid(grid, kc, kax, lobes)),
            (MEDULLA, ellipsoid(grid, kc, (kax[0] * 0.6, kax[1] * 0.6, kax[2] * 0.8), lobes)),
        ]
    return layers


def pancreas_centreline(rng: np.random.Generator, s: dict[str, float], m: int = 64) -> tuple:
    """Return ``(points (m + 16, 3), radii)`` of the pancreas: head, neck/body, tail, uncinate.

    A quadratic Bezier runs head -> body -> tail with its control point chosen so the curve
    passes through the body point at t = 1/2: the head lies anterior to the IVC beside the
    duodenum, the body crosses anterior to the aorta, the tail rises toward the splenic hilum.
    A short uncinate segment hooks down and back from the head. Radii taper head -> tail.
    """
    head = np.array([s["ivc_lr"] + _u(rng, -8, 4), s["ivc_ap"] - _u(rng, 18, 28), -_u(rng, 0, 12)])
    body = np.array([s["ao_lr"] + _u(rng, -8, 4), s["ao_ap"] - s["ao_r"] - _u(rng, 12, 22), 0.0])
    tail = np.array([s["sp_lr"] - _u(rng, 18, 32), s["sp_ap"] - _u(rng, 15, 30), _u(rng, 0, 15)])
    ctrl = 2 * body - (head + tail) / 2
    t = np.linspace(0, 1, m)[:, None]
    curve = (1 - t) ** 2 * head + 2 * t * (1 - t) * ctrl + t**2 * tail  # (m, 3)
    rh, rb, rt = _u(rng, 12, 16), _u(rng, 8, 11), _u(rng, 6, 9)
    tt = t[:, 0]
    radii = np.where(tt < 0.5, rh + (rb - rh) * tt * 2, rb + (rt - rb) * (tt - 0.5) * 2)
    radii = radii * (1 + 0.12 * np.sin(2 * np.pi * (_u(rng, 2, 4) * tt + _u(rng, 0, 1))))
    drop = _u(rng, 15, 28)  # uncinate process below the head, tucked behind the SMV
    u = np.linspace(0, 1, 16)[:, None]
    hook = head + u * np.array([_u(rng, 2, 10), _u(rng, 4, 10), -drop])
    points = np.concatenate([curve, hook])
    radii = np.concatenate([radii, rh * (1 - 0.4 * u[:, 0])])
    s.update(pan_head_lr=float(head[0]), pan_head_ap=float(head[1]), pan_head_z=float(head[2]))
    s.update(pan_rh=rh)
    return points, radii


def pancreas_masks(
    grid: Grid, rng: np.random.Generator, s: dict[str, float], cavity: np.ndarray
) -> list[tuple[int, np.ndarray]]:
    """Duodenal C-loop beside the head, then the pancreas itself (painted over the duodenum)."""
    points, radii = pancreas_centreline(rng, s)
    d = (s["pan_head_lr"] - s["pan_rh"] - _u(rng, 6, 10), s["pan_head_ap"], s["pan_head_z"] - 10)
    duo_ax = (_u(rng, 10, 14), _u(rng, 12, 18), _u(rng, 30, 45))
    duo = ellipsoid(grid, d, duo_ax) & cavity
    layers = [(DUODENUM, duo)]
    if rng.random() < 0.5:
        layers.append((GAS, ellipsoid(grid, d, (duo_ax[0] - 4, duo_ax[1] - 4, duo_ax[2] - 4))))
    # The gland is taller (craniocaudal) than it is thick (anteroposterior).
    layers.append((PANCREAS, tube(grid, points, radii, _u(rng, 1.3, 1.7)) & cavity))
    return layers
