"""HTML pieces of the report: data URIs, tables, and the one Jinja2 template.

Everything the page shows travels inside it: images and downloadable CSV/JSON are RFC 2397
``data:`` URIs, the CSS is inline, and the template links nothing outside the file, so the
report can be mailed, archived or opened offline and still shows exactly what the run produced.
"""

from __future__ import annotations

import base64
import csv
import io
from importlib import resources
from typing import Any

import jinja2
from markdown_it import MarkdownIt
from markupsafe import Markup

TEMPLATE = "template.html.j2"


def data_uri(data: bytes, mime: str) -> str:
    """Return ``data:<mime>;base64,<data>``: the bytes themselves, as a URL (RFC 2397)."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def markdown_html(text: str) -> Markup:
    """Return the HTML of markdown ``text`` (CommonMark + pipe tables) as safe ``Markup``.

    Raw HTML inside ``text`` is escaped, not passed through (``html: False``), so a table cell
    can never inject markup or a link into the report.
    """
    return Markup(MarkdownIt("commonmark", {"html": False}).enable("table").render(text))


def csv_rows(text: str) -> tuple[list[str], list[list[str]]]:
    """Return ``(header, rows)`` of CSV ``text``; an empty text gives ``([], [])``."""
    rows = list(csv.reader(io.StringIO(text)))
    return (rows[0], rows[1:]) if rows else ([], [])


def render_html(context: dict[str, Any]) -> str:
    """Return the report page for ``context`` (built by ``pipeline.report.collect``).

    Autoescaping is on (every string from a file is text unless it is ``Markup``) and undefined
    names are errors, so a template/context mismatch fails here instead of rendering blanks.
    """
    env = jinja2.Environment(
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    source = resources.files("pipeline.report").joinpath(TEMPLATE).read_text(encoding="utf-8")
    return env.from_string(source).render(**context)
