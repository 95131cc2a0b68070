"""Shared fixtures.

Real-data tests read the public data mirror: ``$GVAE_DATA_MIRROR`` or ``../shared/data`` beside
the checkout. When ``GVAE_REQUIRE_REAL_DATA=1`` (CI sets it) a missing mirror is a failure, not
a skip, so a real-data test can never silently stand in for a feature.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_mirror() -> Path | None:
    """Return the mirror folder if it exists, else ``None``."""
    env = os.environ.get("GVAE_DATA_MIRROR")
    candidate = Path(env) if env else REPO.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The data mirror (MNIST, Fashion-MNIST, Pancreas-CT); skip or fail when absent."""
    mirror = data_mirror()
    if mirror is None:
        msg = "data mirror not found: set GVAE_DATA_MIRROR or place it at ../shared/data"
        if os.environ.get("GVAE_REQUIRE_REAL_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return mirror


@pytest.fixture(scope="session")
def real_pair_slices(real_data_dir, tmp_path_factory) -> Path:
    """The mirror's 395 real Pancreas-CT slices of 43 patients through `gvae slices` (source
    pairs, 200 mm at 64 px, the default patient split), written once per session."""
    from pipeline.cohort.write_slices import run
    from pipeline.params.cohort import SlicesParams

    out = tmp_path_factory.mktemp("pairs_real") / "slices"
    params = SlicesParams(source="pairs", size=64, fov_mm=200.0)
    run(params, real_data_dir / "pancreas_ct_slices", out)
    return out
