"""Quality-control contact sheet: a grid of windowed slices with the pancreas outlined.

A person should be able to open one PNG and see at a glance that the orientation is the
radiological one (anterior up, patient right on the viewer's left), that the window shows soft
tissue, and that the label sits on the pancreas. Uses matplotlib's object API with the Agg canvas,
so no display and no pyplot global state are involved.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common.atomic import atomic_path

# Red on a grey-scale image: the one colour that never blends into CT intensities.
CONTOUR_COLOUR = "#ff2020"


@dataclass(frozen=True)
class Panel:
    """One tile of the sheet: a 2D image in ``[-1, 1]``, its 2D mask and a title."""

    image: np.ndarray
    mask: np.ndarray
    title: str


def best_panel(case_id: str, image: np.ndarray, mask: np.ndarray, slice_index) -> Panel | None:
    """Return the panel of the slice with the largest mask area, or ``None`` if all are empty.

    ``image`` and ``mask`` are ``(N, 1, S, S)``; ``slice_index`` gives each slice's k.
    """
    if len(mask) == 0:
        return None
    area = np.asarray(mask).reshape(len(mask), -1).sum(axis=1)
    i = int(np.argmax(area))
    if area[i] == 0:
        return None
    return Panel(image[i, 0].copy(), mask[i, 0].copy(), f"{case_id}  k={int(slice_index[i])}")


def spread(items: Sequence, limit: int) -> list:
    """Pick at most ``limit`` items evenly spaced over ``items`` (all of them if they fit)."""
    if len(items) <= limit:
        return list(items)
    picks = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in picks]


def mask_fill(mask: np.ndarray, alpha: float) -> np.ndarray:
    """RGBA (S, S, 4) float overlay: the contour colour at opacity ``alpha`` inside ``mask``.

    An outline alone hides a mask's extent: a mask over the whole image has no edge inside it,
    so it would look like no mask at all.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"fill opacity must be in [0, 1], got {alpha}")
    rgba = np.zeros((*np.shape(mask), 4))
    rgba[..., :3] = [int(CONTOUR_COLOUR[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    rgba[..., 3] = (np.asarray(mask) > 0) * alpha
    return rgba


def render_contact_sheet(panels: Sequence[Panel], ncols: int = 4, fill: float = 0.0) -> Figure:
    """Draw ``panels`` as a grid with mask contours, the masks filled at opacity ``fill``
    (0: outlines only); an empty list gives a sheet saying so."""
    n = max(1, len(panels))
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(2.6 * ncols, 2.9 * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no slice with pancreas", ha="center", va="center")
    # Not strict: the last row may have more axes than panels left.
    for ax, panel in zip(axes.flat, panels, strict=False):
        # origin="upper": row 0 (anterior) at the top, exactly as the arrays are stored.
        ax.imshow(panel.image, cmap="gray", vmin=-1.0, vmax=1.0, interpolation="nearest")
        if panel.mask.any() and fill > 0:
            ax.imshow(mask_fill(panel.mask, fill), interpolation="nearest")
        if panel.mask.any():
            ax.contour(
                panel.mask.astype(float), levels=[0.5], colors=CONTOUR_COLOUR, linewidths=1.0
            )
        ax.set_title(panel.title, fontsize=8)
    fig.suptitle("anterior up, patient right on the left; red: pancreas label", fontsize=9)
    return fig


def write_contact_sheet(
    dest: str | os.PathLike, panels: Sequence[Panel], ncols: int = 4, fill: float = 0.0
) -> None:
    """Render ``panels`` (masks filled at opacity ``fill``) and save the PNG atomically at
    ``dest``."""
    fig = render_contact_sheet(panels, ncols, fill)
    with atomic_path(dest) as tmp:
        # Explicit format: the temporary file's suffix is not ".png".
        fig.savefig(tmp, format="png")
