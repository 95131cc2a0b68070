"""Where the runs of each training seed live: ``<model folder>/s<seed>``.

The sanity stages train, sample and evaluate every (dataset, model) once per ``mnist.seeds``
entry (dvc.yaml's ``seed`` matrix axis), each into its own ``s<seed>`` sub-folder, so that the
tables can report mean and sd over seeds.
"""

from __future__ import annotations

import re
from pathlib import Path

_SEED_DIR = re.compile(r"^s(\d+)$")


def seed_dirname(seed: int) -> str:
    """Sub-folder of one training seed: ``s0``, ``s12``."""
    return f"s{int(seed)}"


def seed_dirs(folder: Path) -> list[tuple[int, Path]]:
    """Return ``[(seed, path)]`` of the ``s<seed>`` sub-folders of ``folder``, by seed."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _SEED_DIR.match(p.name))]
    return sorted(p for p in found if p[1].is_dir())
