"""``dvc plots show`` renders offline: the project's plot definitions and page, in Chromium.

The page is built by ``pipeline.report.plots_template`` (``npm ci`` of docs/plots when needed) into
a
scratch git + DVC repository that has the project's ``.dvc/config``, its vega-lite templates and
the top-level ``plots:`` of dvc.yaml, over tiny CSVs at the paths those plots name. Headless
Chromium runs with every network request refused, so a page that needs the CDN stays blank; the
same plots on DVC's default page are the control that proves it.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from dvc_render.html import PAGE_HTML
from PIL import Image

from common import npm
from pipeline.augment.segment.results import COLUMNS, results_csv
from pipeline.report import plots_template

REPO = Path(__file__).resolve().parents[1]
SEGMENT_RESULTS = "data/ct/segment/results.csv"
VIEWPORT = (1100, 1500)


def _run(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("headless Chromium is required (Debian: apt-get install chromium)")


def _render(page: Path, profile: Path, png: Path) -> str:
    """Screenshot ``page`` into ``png`` with no usable network; return the rendered DOM."""
    base = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={profile}",
        # Every request goes to a closed local port and no host name resolves: offline.
        "--proxy-server=127.0.0.1:9",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--hide-scrollbars",
        f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
        "--virtual-time-budget=10000",
    ]
    url = page.resolve().as_uri()
    subprocess.run(
        [*base, f"--screenshot={png}", url], capture_output=True, timeout=120, check=True
    )
    dom = subprocess.run(
        [*base, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    )
    return dom.stdout


def _pixels(png: Path) -> tuple[float, int]:
    """Return (share of non-white pixels, number of saturated 'line colour' pixels)."""
    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    non_white = (rgb < 235).any(axis=-1).mean()
    saturation = rgb.max(axis=-1) - rgb.min(axis=-1)
    return float(non_white), int((saturation > 80).sum())


def _top_plots() -> list[dict]:
    """The top-level ``plots:`` of the project's dvc.yaml, as ``[{id: props}, ...]``."""
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text()).get("plots")
    assert plots, "dvc.yaml has no top-level plots"
    return plots


def _loss_csv(fields: list[str], x: str) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([x, *fields])
    for step in range(10, 110, 10):
        writer.writerow([step, *(100 * (i + 1) / math.sqrt(step) for i in range(len(fields)))])
    return buf.getvalue()


def _segment_rows() -> list[dict]:
    rows = []
    for cond, base in (("real", 0.3), ("real+classical", 0.5)):
        for frac, n, gain in ((1.0, 6, 0.3), (0.34, 2, 0.0)):
            row = {k: 0.0 for k in COLUMNS}
            dice = base + gain
            row.update(condition=cond, fraction=frac, n_train_patients=n, n_patients=5)
            row.update(n_seeds=1, dice=dice, dice_lo=dice - 0.1, dice_hi=dice + 0.1)
            rows.append(row)
    return rows


def _write_plot_data(repo: Path, plots: list[dict]) -> None:
    """A tiny CSV at every file the plots name, with the fields they name."""
    for entry in plots:
        ((_, props),) = entry.items()
        for path, fields in props["y"].items():
            dest = repo / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            if path == SEGMENT_RESULTS:  # the segment stage's own writer, real columns
                dest.write_text(results_csv(_segment_rows()))
            else:
                fields = [fields] if isinstance(fields, str) else fields
                dest.write_text(_loss_csv(fields, props["x"]))


@pytest.fixture(scope="module")
def scratch_repo(tmp_path_factory) -> Path:
    """A git + DVC repo with the project's plots config, page, templates and tiny data."""
    repo = tmp_path_factory.mktemp("plots") / "repo"
    repo.mkdir()
    _run(["git", "init", "-q"], repo)
    _run(["dvc", "init", "-q"], repo)
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copytree(REPO / ".dvc" / "plots", repo / ".dvc" / "plots")
    plots = _top_plots()
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}, sort_keys=False))
    _write_plot_data(repo, plots)
    # Where plain `dvc plots show` looks: the configured path, relative to .dvc/ as DVC reads it.
    configured = _run(["dvc", "config", "plots.html_template"], repo).strip()
    assert configured, "the project's .dvc/config sets no plots.html_template"
    page = (repo / ".dvc" / configured).resolve()
    assert page == (repo / ".dvc" / ".." / plots_template.DEFAULT_OUT).resolve()
    plots_template.build(REPO / plots_template.NPM_DIR, page)  # npm ci if node_modules is missing
    return repo


def test_page_inlines_pinned_libraries(scratch_repo):
    page = (scratch_repo / plots_template.DEFAULT_OUT).read_text(encoding="utf-8")
    pinned = plots_template.pinned_versions(REPO / plots_template.NPM_DIR)
    for name, version in pinned.items():
        assert f"{name} {version}" in page
    assert page.count("{plot_divs}") == 1 and "{scripts}" not in page
    assert "<script src" not in page and "sourceMappingURL" not in page


def test_plots_show_renders_offline(scratch_repo, tmp_path):
    _run(["dvc", "plots", "show"], scratch_repo)
    index = scratch_repo / "dvc_plots" / "index.html"
    html = index.read_text(encoding="utf-8")
    assert "<script src" not in html and "cdn.jsdelivr" not in html
    plot_ids = [next(iter(entry)) for entry in _top_plots()]
    for plot_id in plot_ids:
        assert f'id = "{plot_id}"' in html

    png = tmp_path / "offline.png"
    dom = _render(index, tmp_path / "profile", png)
    # vega-embed replaced each plot's script with a rendered chart (canvas by default).
    assert dom.count('class="vega-embed') == len(plot_ids), dom[:2000]
    assert dom.count("<canvas") >= len(plot_ids)
    non_white, coloured = _pixels(png)
    assert non_white > 0.03, f"{png}: only {non_white:.1%} of the page is drawn"
    assert coloured > 2000, f"{png}: {coloured} coloured (line) pixels"

    # Control: DVC's own page loads the libraries from a CDN, so here nothing may render.
    default = tmp_path / "default_template.html"
    default.write_text(PAGE_HTML)
    _run(
        ["dvc", "plots", "show", "-o", "default_page", "--html-template", str(default)],
        scratch_repo,
    )
    cdn_png = tmp_path / "cdn.png"
    cdn_dom = _render(scratch_repo / "default_page" / "index.html", tmp_path / "profile2", cdn_png)
    assert "cdn.jsdelivr" in cdn_dom and 'class="vega-embed' not in cdn_dom
    assert "<canvas" not in cdn_dom
    assert _pixels(cdn_png)[1] < 50, "the network was reachable: the CDN page rendered"


def test_inline_script_escapes_and_rejects(tmp_path):
    script = plots_template.inline_script('a="</script>";\n//# sourceMappingURL=x.map', "lib")
    assert script.count("</script>") == 1 and "<\\/script>" in script
    assert "sourceMappingURL" not in script
    with pytest.raises(plots_template.PlotsTemplateError, match=r"lib: contains '\{scripts\}'"):
        plots_template.inline_script("x='{scripts}'", "lib")


def test_unpinned_manifest_is_refused(tmp_path):
    (tmp_path / "package.json").write_text(
        '{"dependencies": {"vega": "^5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}}'
    )
    with pytest.raises(plots_template.PlotsTemplateError, match="'vega' must be pinned"):
        plots_template.pinned_versions(tmp_path)
    with pytest.raises(plots_template.PlotsTemplateError, match="cannot read the npm manifest"):
        plots_template.pinned_versions(tmp_path / "missing")


@pytest.mark.parametrize("plot_id", ["mnist_training_loss", "ct_training_loss"])
def test_loss_plots_name_the_terms_the_trainer_writes(plot_id, tmp_path, request):
    """Each losses.csv field of dvc.yaml's loss plots is a column the trainer writes."""
    import torch

    from models.config import TrainConfig
    from models.registry import build_model
    from models.train.trainer import train

    ((props,),) = [list(e.values()) for e in _top_plots() if plot_id in e]
    channels = 2 if plot_id.startswith("ct") else 1  # CT generators learn (image, mask)
    cfg = TrainConfig(
        steps=1,
        batch_size=4,
        checkpoint_every=1,
        sample_every=1,
        log_every=1,
        grid=2,
        device="cpu",
    )
    data = torch.rand(8, channels, 16, 16) * 2 - 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny nets: thread start-up would cost more than the maths
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    for path, fields in props["y"].items():
        name = Path(path).parts[3]  # data/models/<dataset>/<model>/ or data/ct/models/<model>/
        torch.manual_seed(0)
        model = build_model(name, {"latent_dim": 4, "width": 4, "max_width": 8}, channels, 16)
        train(model, data, cfg, tmp_path / name, progress=False)
        with open(tmp_path / name / "losses.csv", newline="") as fh:
            header = next(csv.reader(fh))
        assert header[0] == props["x"]
        # dvc.yaml promises every term a run logs: none missing, none extra.
        assert sorted(fields) == sorted(header[1:]), f"{path}: {fields} vs the trainer's {header}"


def test_missing_npm_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(npm.shutil, "which", lambda name: None)
    with pytest.raises(plots_template.PlotsTemplateError, match="npm not found"):
        plots_template.npm_ci(tmp_path)
