"""``gvae report``: one self-contained HTML file with every section, built from a tiny run tree.

The browser test opens the report in headless Chromium and checks what a reader would see:
every image decoded at its real size, the tables' rows in the DOM, a screenshot that is not
blank.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from pipeline.cli import main as gvae
from pipeline.report.collect import latest_grid, table

from .report_fixtures import (
    CT_MODELS,
    FLAGGED_CASE,
    IMAGE_SIZES,
    LOCK_MD5,
    SANITY_MODELS,
    cli_args,
    make_run_tree,
    png,
)

SECTIONS = ["sanity-mnist", "sanity-fashion_mnist", "ct-quality", "memorization", "segmentation"]
# Tables the report renders, by container id -> a first-cell text that must be one of its rows.
TABLE_ROWS = {
    "table-sanity-mnist": SANITY_MODELS,
    "table-ct-quality": ["real test (target)", "real train (floor)", *CT_MODELS],
    "table-memorization": [*CT_MODELS, "real"],
    "table-memorization-fractions": CT_MODELS,  # the real floor has no fraction sets
    "table-segmentation": ["real", "real+syn:gvae"],
    "table-faithfulness": CT_MODELS,
    "table-usefulness": ["mask faithfulness (real-trained UNet Dice)", "FID (in-domain features)"],
    "table-checksums": ["tables@mnist"],
}
# Before the report's own end of body: records what the browser decoded into DOM attributes.
PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-img-total", imgs.length);
  document.body.setAttribute("data-img-decoded", ok.length);
  document.body.setAttribute("data-img-sizes",
    ok.map(function (i) { return i.naturalWidth + "x" + i.naturalHeight; }).sort().join(" "));
});
</script>
"""


class _Dom(HTMLParser):
    """Collects section attributes, ``<body>`` attributes and first cells of table rows."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, str] = {}
        self.body: dict[str, str] = {}
        self.rows: dict[str, list[str]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._first = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections[a.get("id", "")] = a.get("data-produced", "")
        elif tag == "body":
            self.body = {k: v or "" for k, v in a.items()}
        elif tag == "div" and (a.get("id") or "").startswith("table-"):
            self._table = a["id"]
            self.rows.setdefault(self._table, [])
        elif tag == "tr":
            self._first = True
        elif tag == "td" and self._table and self._first:
            self._cell, self._first = [], False

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[self._table].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _dom(html: str) -> _Dom:
    parser = _Dom()
    parser.feed(html)
    return parser


def _build(tmp_path: Path, monkeypatch, **kwargs) -> tuple[dict[str, Path], str]:
    # Git must not find a checkout above tmp_path (the fixture makes its own).
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    paths = make_run_tree(tmp_path / "run", **kwargs)
    assert gvae(cli_args(paths)) == 0
    return paths, paths["out"].read_text()


def test_report_is_self_contained_with_every_section(tmp_path, monkeypatch):
    paths, html = _build(tmp_path, monkeypatch)
    links = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]*)""", html)
    assert links and all(u.startswith(("data:", "#")) for u in links), sorted(set(links))
    assert "http://" not in html and "https://" not in html and "<link" not in html
    dom = _dom(html)
    assert dom.sections == {
        **dict.fromkeys(SECTIONS, "true"),
        "sanity-fashion_mnist": "false",
        "provenance": "true",
    }
    assert "not produced by this run (fashion_mnist is not in mnist.datasets)" in html
    for table_id, first_cells in TABLE_ROWS.items():
        assert set(first_cells) <= set(dom.rows.get(table_id, [])), (table_id, dom.rows)
    assert html.count("<img ") == len(IMAGE_SIZES) + 2  # + the forest and Dice plots
    newest = (paths["train_runs"] / "mnist/vae/s0/samples/step-10.png").read_bytes()
    assert "training samples at step 10" in html and "step-9.png" not in html
    assert base64.b64encode(newest).decode() in html  # the newest grid itself is inlined
    assert FLAGGED_CASE in html and 'download="results.csv"' in html
    assert 'download="metrics.json"' in html and 'download="table.csv"' in html
    assert 'download="near_copies.csv"' in html  # the per-fraction near-copy shares


def test_provenance_names_commit_params_hash_and_lock_checksums(tmp_path, monkeypatch):
    paths, html = _build(tmp_path, monkeypatch)
    commit = subprocess.run(
        ["git", "-C", str(paths["repo"]), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert f'<code id="prov-commit">{commit}</code>' in html
    assert re.search(r'<td id="prov-dirty">clean', html)
    digest = hashlib.sha256(paths["params"].read_bytes()).hexdigest()
    assert f'<code id="prov-params">{digest}</code>' in html
    assert LOCK_MD5["data/tables/mnist"] in html
    assert "ffffffffffffffffffffffffffffffff" not in html  # the report's own stale entry

    # The report itself is ignored by nothing here, so the next build sees a dirty tree.
    paths["params"].write_text(paths["params"].read_text() + "# edited\n")
    assert gvae(cli_args(paths)) == 0
    again = paths["out"].read_text()
    assert re.search(r'<td id="prov-dirty">dirty \(\d+ changed paths?\)', again)
    assert " M params.yaml" in again
    new_digest = hashlib.sha256(paths["params"].read_bytes()).hexdigest()
    assert new_digest != digest and f'<code id="prov-params">{new_digest}</code>' in again


def test_missing_inputs_are_listed_as_not_produced(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    (tmp_path / "params.yaml").write_text(
        "mnist: {datasets: [mnist, fashion_mnist], models: [vae]}\nmodels: {vae: {}}\n"
    )
    out = tmp_path / "out" / "index.html"
    args = ["report", "--params", str(tmp_path / "params.yaml"), "--out", str(out)]
    for flag in ("--tables", "--train-runs", "--ct-quality", "--ct-quality-report", "--segment"):
        args += [flag, str(tmp_path / "absent" / flag.strip("-"))]
    args += ["--lock", str(tmp_path / "dvc.lock"), "--repo", str(tmp_path)]
    assert gvae(args) == 0
    html = out.read_text()
    dom = _dom(html)
    assert dom.sections == {**dict.fromkeys(SECTIONS, "false"), "provenance": "true"}
    assert html.count("not produced by this run") >= len(SECTIONS)
    assert "dvc.lock: not found" in html and "not a git checkout" in html
    assert "<img " not in html


def test_unreadable_input_is_an_error_naming_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    paths = make_run_tree(tmp_path / "run")
    bad = paths["ct_quality"] / "vae" / "grid.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated mid-image
    assert gvae(cli_args(paths)) == 2
    assert str(bad) in capsys.readouterr().err
    assert not paths["out"].exists()  # nothing half-written

    png(bad, (8, 8), seed=1)
    (paths["ct_quality"] / "gvae" / "memorization.json").write_text("{not json")
    assert gvae(cli_args(paths)) == 2
    assert "gvae/memorization.json: not valid JSON" in capsys.readouterr().err


def test_newest_training_grid_and_csv_fallback(tmp_path):
    for name in ("step-9.png", "step-10.png", "step-000002.png", "notes.png"):
        png(tmp_path / "samples" / name, (4, 4), seed=0)
    assert latest_grid(tmp_path / "samples").name == "step-10.png"
    assert latest_grid(tmp_path / "none") is None
    (tmp_path / "t.csv").write_text("model,score\nvae,<b>1</b>\n")
    shown = table(tmp_path / "t.md", tmp_path / "t.csv")
    assert shown["html"] is None and shown["rows"] == [["vae", "<b>1</b>"]]
    (tmp_path / "t.md").write_text("| model | score |\n|---|---|\n| vae | <b>1</b> |\n")
    rendered = str(table(tmp_path / "t.md", tmp_path / "t.csv")["html"])
    assert "<td>vae</td>" in rendered and "<b>" not in rendered  # raw HTML is escaped


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.fail("headless Chromium is needed to check the report renders (.ci/system-deps)")


def _browse(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        *args,
        page.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_report_renders_in_headless_chromium(tmp_path, monkeypatch):
    paths, html = _build(tmp_path, monkeypatch)
    assert "</body>" in html
    probed = tmp_path / "probed.html"  # a test-only copy: the report itself carries no script
    probed.write_text(html.replace("</body>", PROBE + "</body>"))
    dom = _dom(_browse(probed, tmp_path / "chrome", "--dump-dom").stdout)
    expected = sorted(f"{w}x{h}" for w, h in IMAGE_SIZES.values())
    sizes = dom.body.get("data-img-sizes", "").split()
    assert dom.body.get("data-img-total") == str(len(IMAGE_SIZES) + 2), dom.body
    assert dom.body.get("data-img-decoded") == dom.body["data-img-total"], dom.body
    assert set(expected) <= set(sizes), sizes  # the fixture images, at their own sizes
    for table_id, first_cells in TABLE_ROWS.items():
        assert set(first_cells) <= set(dom.rows.get(table_id, [])), table_id

    shot = tmp_path / "report.png"
    _browse(paths["out"], tmp_path / "chrome", "--window-size=1200,2400", f"--screenshot={shot}")
    with Image.open(shot) as im:
        grey = im.convert("L")
        stat = ImageStat.Stat(grey)
        assert grey.size == (1200, 2400)
        assert stat.stddev[0] > 15, stat.stddev  # text, tables and noise images, not one colour
        assert len(grey.getcolors(256) or []) > 50


def test_what_dvc_repro_rewrites_does_not_make_the_tree_dirty(tmp_path, monkeypatch):
    from pipeline.report.provenance import git_state

    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    repo = tmp_path / "repo"
    (repo / "data/ct/segment").mkdir(parents=True)
    for name in ("params.yaml", "dvc.lock", "data/ct/segment/headline.json"):
        (repo / name).write_text("{}\n")
    user = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    for cmd in (["init", "-q"], ["add", "-A"], [*user, "commit", "-qm", "run"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True)
    # A rerun in a clean clone: DVC rewrites the lock and the stages their headline metrics.
    (repo / "dvc.lock").write_text("{stages: {}}\n")
    (repo / "data/ct/segment/headline.json").write_text('{"f1.0": {}}\n')
    state = git_state(repo)
    assert state["dirty"] is False and state["n_changes"] == 2, state
    (repo / "params.yaml").write_text("{a: 1}\n")
    assert git_state(repo)["dirty"] is True
