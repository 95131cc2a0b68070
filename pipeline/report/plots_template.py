"""``gvae plots-template``: the HTML page of ``dvc plots show`` with its libraries inlined.

DVC's default page (dvc-render's ``PAGE_HTML``) loads vega, vega-lite and vega-embed from a
CDN, so without a network every vega plot on it stays blank. This writes a page with the three
minified libraries inlined instead, in the versions pinned by ``docs/plots/package.json`` and
its ``package-lock.json`` (installed with ``npm ci`` when ``node_modules`` is missing or holds
other versions). ``.dvc/config`` points ``plots.html_template`` at the page, so a plain
``dvc plots show`` uses it. The page is a build product: git-ignored, rebuilt by this command.

dvc-render fills a template by plain string replacement of ``{plot_divs}`` (required),
``{scripts}`` and ``{refresh_tag}`` over the whole page. The page leaves out ``{scripts}``, so
the CDN ``<script src=...>`` tags are never inserted.

Run from the repository root: ``gvae plots-template`` or ``python -m
pipeline.report.plots_template``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from common import npm
from common.atomic import atomic_path

NPM_DIR = Path("docs/plots")
# Relative to .dvc/, where DVC resolves a relative `plots.html_template`: ../docs/plots/build/...
DEFAULT_OUT = NPM_DIR / "build" / "dvc_plots.html"
LOCK = ".plots-template.lock"  # in the npm folder, git-ignored

# Load order matters: vega-lite's UMD build reads the global `vega`, vega-embed reads both.
LIBRARIES = {
    "vega": "build/vega.min.js",
    "vega-lite": "build/vega-lite.min.js",
    "vega-embed": "build/vega-embed.min.js",
}
PLACEHOLDER = "{plot_divs}"
# dvc-render replaces these anywhere in the page; inside a library they would corrupt its code.
RESERVED = ("{plot_divs}", "{scripts}", "{refresh_tag}")

PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>DVC Plot</title>
<!-- {versions}: inlined by `gvae plots-template`, so the page renders offline -->
{libraries}
<style>
table {{ border-spacing: 15px; }}
</style>
</head>
<body>
{plot_divs}
</body>
</html>
"""


class PlotsTemplateError(RuntimeError):
    """The template cannot be built; the message names the file or tool and the problem."""


@contextlib.contextmanager
def _as_template_error() -> Iterator[None]:
    try:
        yield
    except npm.NpmError as exc:
        raise PlotsTemplateError(str(exc)) from None


def pinned_versions(npm_dir: Path) -> dict[str, str]:
    """Return ``{package: version}`` of ``LIBRARIES`` as pinned in ``npm_dir/package.json``.

    Raises ``PlotsTemplateError`` when the manifest is missing, or a library is absent or not
    pinned to one exact version (a range would let ``npm install`` drift from the lock file).
    """
    with _as_template_error():
        return npm.pinned_versions(npm_dir, LIBRARIES)


installed_version = npm.installed_version


def npm_ci(npm_dir: Path) -> None:
    """``npm ci`` in ``npm_dir`` (:func:`common.npm.npm_ci`); errors as ``PlotsTemplateError``."""
    with _as_template_error():
        npm.npm_ci(npm_dir)


def _locked(npm_dir: Path) -> contextlib.AbstractContextManager[None]:
    """Hold the build lock of ``npm_dir`` (two builds at once would share one ``npm ci``)."""
    return npm.locked(npm_dir, LOCK)


def ensure_installed(npm_dir: Path) -> dict[str, str]:
    """Run ``npm ci`` unless the pinned versions are installed; return ``pinned_versions``."""
    with _as_template_error():
        return npm.ensure_installed(npm_dir, LIBRARIES)


def inline_script(source: str, name: str) -> str:
    """Return ``source`` as an inline ``<script>`` element, safe inside dvc-render's template.

    Drops the ``sourceMappingURL`` comment (the map is not shipped) and escapes ``</script`` as
    ``<\\/script`` (the same string in JavaScript; raw, it would end the element early). Raises
    ``PlotsTemplateError`` if the library contains a placeholder of ``RESERVED``.
    """
    for token in RESERVED:
        if token in source:
            raise PlotsTemplateError(
                f"{name}: contains {token!r}, which dvc-render would replace inside the code"
            )
    lines = [ln for ln in source.splitlines() if not ln.startswith("//# sourceMappingURL=")]
    body = "\n".join(lines).replace("</script", "<\\/script")
    return f"<script>\n{body}\n</script>"


def render_page(libraries: list[tuple[str, str, str]]) -> str:
    """Return the template page for ``[(name, version, minified source), ...]`` in load order.

    The page holds ``{plot_divs}`` and ``{refresh_tag}`` but not ``{scripts}`` (see the module
    docstring).
    """
    versions = ", ".join(f"{name} {version}" for name, version, _ in libraries)
    scripts = "\n".join(inline_script(src, name) for name, _, src in libraries)
    page = PAGE.format(
        versions=versions, libraries=scripts, refresh_tag="{refresh_tag}", plot_divs=PLACEHOLDER
    )
    assert page.count(PLACEHOLDER) == 1 and "{scripts}" not in page
    return page


def build(npm_dir: Path = NPM_DIR, out: Path = DEFAULT_OUT) -> Path:
    """Install the pinned libraries if needed and write the template page to ``out``; return it."""
    pinned = pinned_versions(npm_dir)
    libraries = []
    with _locked(npm_dir):
        ensure_installed(npm_dir)
        for name, rel in LIBRARIES.items():
            path = npm_dir / "node_modules" / name / rel
            try:
                source = path.read_text(encoding="utf-8")
            except OSError as exc:
                msg = f"{path}: cannot read the library ({exc.strerror})"
                raise PlotsTemplateError(msg) from exc
            libraries.append((name, pinned[name], source))
    with atomic_path(out) as tmp:
        tmp.write_text(render_page(libraries), encoding="utf-8")
    return out
