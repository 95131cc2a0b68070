"""``SOURCES``: every cohort source of this folder by its ``name``, found by listing the folder.

A module of ``pipeline/cohort/sources`` that sets ``SOURCE`` is a source; nothing else has to
name it. ``gvae ingest --source`` offers these names and ``ingest.source`` must be one of them.
"""

from __future__ import annotations

import importlib
import pkgutil

from pipeline.errors import ParamsError

_PACKAGE = "pipeline.cohort.sources"


def sources() -> dict[str, type]:
    """``{name: source class}`` of every module in this folder that sets ``SOURCE``."""
    found: dict[str, type] = {}
    package = importlib.import_module(_PACKAGE)
    # The package's __path__, not this file's folder: a deployment (or a test) may extend it.
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{_PACKAGE}.{info.name}")
        source = getattr(module, "SOURCE", None)
        if source is not None:
            if source.name in found:
                raise ValueError(f"cohort source name {source.name!r} is defined twice")
            found[source.name] = source
    return dict(sorted(found.items()))


def source_class(name: str) -> type:
    """The source class called ``name``; ``ParamsError`` naming ``ingest.source`` and the
    valid names otherwise."""
    known = sources()
    if name not in known:
        raise ParamsError(
            f"ingest.source: unknown cohort source {name!r}; valid: {', '.join(known)}"
        )
    return known[name]
