"""Result tables as text: a header and rows of cells -> markdown, and the same -> CSV.

The pipeline's comparison tables (``gvae tables``, ``gvae ct-quality-report``'s table and
near-copies, the segmentation ``table.md`` / ``results.csv``) are all written here, so the two
formats of one table come from one header and one list of rows, and an empty cell means the
same everywhere: :func:`is_missing` (None or NaN; with ``finite`` also +-inf). In a JSON
metrics file the same value is ``null`` (:func:`json_number`).

Markdown: ``| a | b |``, then ``|---|---|``, one line per row, a final newline. CSV: Python's
``csv.writer`` (minimal quoting); a full-precision cell is the value itself (:func:`raw`), which
the writer prints with ``str``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from typing import Any


def is_missing(value: Any, *, finite: bool = False) -> bool:
    """True for None and a float NaN; with ``finite``, for every non-finite float (+-inf too)."""
    if value is None:
        return True
    if not isinstance(value, float):
        return False
    return not math.isfinite(value) if finite else math.isnan(value)


def json_number(value: Any) -> Any:
    """``value`` for a JSON file, None (``null``) where it :func:`is_missing` with ``finite``:
    JSON has no NaN or infinity, and ``dvc metrics`` and strict readers reject them."""
    return None if is_missing(value, finite=True) else value


def cell(value: Any, fmt: str = "{}", *, empty: str = "", finite: bool = False) -> str:
    """``fmt.format(value)``, or ``empty`` where ``value`` :func:`is_missing`."""
    return empty if is_missing(value, finite=finite) else fmt.format(value)


def raw(value: Any, *, finite: bool = False) -> Any:
    """A full-precision CSV cell: ``value`` itself, ``""`` where it :func:`is_missing`."""
    return "" if is_missing(value, finite=finite) else value


def markdown(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table of ``header`` and ``rows`` (cells already text), newline-terminated."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def csv_text(
    header: Sequence[Any], rows: Iterable[Sequence[Any]], *, lineterminator: str = "\n"
) -> str:
    """``header`` and ``rows`` as CSV text, every line ended by ``lineterminator``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=lineterminator)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()
