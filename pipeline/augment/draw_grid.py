"""The look-at-it check of a mask-conditioned generator: is the image drawn FOR the mask?

``draws.png`` beside a conditional run's ``grid.png``: each row is one conditioning mask on
the real slice it came from, then several draws for that same mask (different z). A model that
reads its mask puts the gland where the outline is in every draw and varies the rest; one that
ignores it draws the same kind of image whatever the outline, and a collapsed one draws the
same image every time. With ``generate.masks: deformed`` the last row is one real training
mask followed by deformed versions of it (MAISI-style), so the deformations can be judged too.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.augment.masks import MaskSet
from pipeline.io.contact_sheet import Panel, spread


def _rows(conditions: MaskSet, rows: int) -> list[int]:
    """Indices of ``rows`` conditions from different source slices, spread over the set."""
    _, first = np.unique(conditions.source, return_index=True)
    return [int(i) for i in spread(sorted(first.tolist()), rows)]


def draw_panels(
    model: torch.nn.Module,
    conditions: MaskSet,
    seed: int,
    rows: int = 4,
    draws: int = 5,
    originals: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[Panel]:
    """``rows`` rows of (condition, ``draws`` draws), ``draws + 1`` panels each, then with
    ``originals`` (the (image, mask) arrays ``conditions.source`` indexes) one row of a real
    mask and its deformed versions. Seeded: row ``r`` draws with seed ``seed + r``."""
    panels = []
    for r, i in enumerate(_rows(conditions, rows)):
        mask = conditions.mask[i].astype(np.float32) * 2.0 - 1.0  # {0, 1} -> {-1, 1}
        pair = np.concatenate([conditions.image[i], mask])[None].repeat(draws, axis=0)
        gen = torch.Generator().manual_seed(seed + r)
        out = model.sample(draws, generator=gen, condition=torch.from_numpy(pair)).numpy()
        panels.append(Panel(conditions.image[i, 0], conditions.mask[i, 0], "condition"))
        panels += [Panel(out[k, 0], conditions.mask[i, 0], f"draw {k + 1}") for k in range(draws)]
    if originals is not None:
        sources, counts = np.unique(conditions.source, return_counts=True)
        s = int(sources[np.argmax(counts)])  # the real mask with the most kept deformations
        image, mask = originals
        panels.append(Panel(image[s, 0], mask[s, 0], "real mask"))
        kept = np.flatnonzero(conditions.source == s)[:draws]
        panels += [
            Panel(conditions.image[j, 0], conditions.mask[j, 0], f"deformed {k + 1}")
            for k, j in enumerate(kept)
        ]
    return panels
