"""Ingest fuzzing: single mutations of a real case, each with its asserted outcome.

120 mutations of 8 slices of the real patient (``fuzz_case``) in five families (file,
geometry, pixel, identity, label; ``fuzz_*mutations``) are ingested, one case folder each, in
one run per params setting beside the unmutated case. Each has one expected outcome:

- "same": written byte-identical to the unmutated case, no warning;
- "refused": an error row whose message (or one of its problem lines) names the file, the
  attribute and the value the mutation touched, and no case folder;
- "warned": written, with a warning naming what was read with a default or passed over.

Whatever the outcome, no case is written with status ok and no warning unless it is identical
to the unmutated case, no message is a traceback or a bare library exception, no Python warning
escapes, and stderr (the CLI, run as a process with every warning shown) holds the project's
lines only. With ``--strict`` every case that is not "same" fails, and the exit code says so.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest

import tests.fuzz_label_mutations  # noqa: F401 - registers the label mutations
import tests.fuzz_pixel_mutations  # noqa: F401 - registers the pixel and identity mutations
from pipeline import cli
from pipeline.cohort import ingest
from pipeline.params.loader import IngestParams
from tests.fuzz_case import build_template, copy_case
from tests.fuzz_mutations import MUTATIONS, Mutation

pytestmark = pytest.mark.real_data

BASE = 1000  # the unmutated case of every group is PANCREAS_1000
REPO = Path(__file__).resolve().parents[1]


def case_id(number: int) -> str:
    return f"PANCREAS_{number:04d}"


def group_key(m: Mutation) -> tuple:
    return tuple(sorted(m.params.items()))


def run_quiet(fn, *args) -> tuple[object, str, list]:
    """Run ``fn(*args)``; return (result, stderr text, Python warnings that escaped)."""
    err = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(err):
        warnings.simplefilter("always")
        result = fn(*args)
    return result, err.getvalue(), list(caught)


@pytest.fixture(scope="module")
def fuzz(real_data_dir, tmp_path_factory) -> dict:
    """Every mutation ingested: {"rows", "strict_rows", "codes", "stderr", "escaped", "out",
    "expected", "named"}, keyed by mutation name where per case."""
    root = tmp_path_factory.mktemp("fuzz")
    template = root / "template"
    build_template(real_data_dir, template)
    groups: dict[tuple, list[Mutation]] = {}
    for m in MUTATIONS:
        groups.setdefault(group_key(m), []).append(m)
    result = {"rows": {}, "strict_rows": {}, "codes": {}, "stderr": "", "escaped": [],
              "out": {}, "named": {}, "groups": {}}  # fmt: skip
    for g, (key, members) in enumerate(sorted(groups.items())):
        images, labels = root / f"g{g}" / "images", root / f"g{g}" / "labels"
        copy_case(template, images, labels, BASE)
        numbers = {}
        for number, m in enumerate(members, start=BASE + 1):
            result["named"][m.name] = m.mutate(copy_case(template, images, labels, number))
            numbers[m.name] = number
        params = IngestParams(workers=1, **dict(key))
        out = root / f"g{g}" / "out"
        rows, err, escaped = run_quiet(ingest.run, params, images, labels, out)
        by_id = {r["case_id"]: r for r in rows}
        result["stderr"] += err
        result["escaped"] += escaped
        result["groups"][key] = {"out": out, "base": by_id[case_id(BASE)], "images": images,
                                 "labels": labels, "numbers": numbers}  # fmt: skip
        for m in members:
            result["rows"][m.name] = by_id[case_id(numbers[m.name])]
            result["out"][m.name] = out / case_id(numbers[m.name])
        strict_rows = strict_run(root / f"g{g}", key, images, labels, result)
        for m in members:
            result["strict_rows"][m.name] = strict_rows[case_id(numbers[m.name])]
    result["base_out"] = result["groups"][()]["out"] / case_id(BASE)
    return result


def strict_run(folder: Path, key: tuple, images: Path, labels: Path, result: dict) -> dict:
    """``gvae ingest --strict`` in-process on one group; return its rows by case id."""
    params = folder / "params.yaml"
    params.write_text("ingest:\n  workers: 1\n" + "".join(f"  {k}: {v}\n" for k, v in key))
    out = folder / "strict"
    argv = ["ingest", "--params", str(params), "--images", str(images), "--labels", str(labels)]
    code, err, escaped = run_quiet(cli.main, [*argv, "--out", str(out), "--strict"])
    result["codes"][key] = code
    result["stderr"] += err
    result["escaped"] += escaped
    return {r["case_id"]: r for r in json.loads((out / "manifest.json").read_text())}


def written_bytes(folder: Path) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in (ingest.IMAGE_FILE, ingest.LABEL_FILE)}


def message(row: dict) -> str:
    return "\n".join([row["error"] or "", *(row.get("problems") or [])])


def test_enough_mutations_in_every_family():
    counts = Counter(m.family for m in MUTATIONS)
    assert len(MUTATIONS) >= 60 and len({m.name for m in MUTATIONS}) == len(MUTATIONS)
    assert set(counts) == {"file", "geometry", "pixel", "identity", "label"}
    assert min(counts.values()) >= 8, counts
    assert {m.expect for m in MUTATIONS} == {"same", "refused", "warned"}


def test_unmutated_case_is_ok_in_every_group(fuzz):
    base = written_bytes(fuzz["base_out"])
    for key, group in fuzz["groups"].items():
        row = group["base"]
        assert row["status"] == "ok" and row["warning"] is None, (key, row)
        assert row["label_placement"] in ("exact", "instance") and "label_coverage" not in row
        assert 70 <= row["label_hu_mean"] <= 130 and row["label_hu_sd"] < 45, row
        assert written_bytes(group["out"] / case_id(BASE)) == base, key


@pytest.mark.parametrize("m", MUTATIONS, ids=lambda m: f"{m.family}-{m.name}")
def test_mutation_outcome(fuzz, m):
    row, named = fuzz["rows"][m.name], fuzz["named"][m.name]
    if m.expect == "same":
        assert row["status"] == "ok" and row["warning"] is None, row
        assert written_bytes(fuzz["out"][m.name]) == written_bytes(fuzz["base_out"])
    elif m.expect == "warned":
        assert row["status"] == "ok" and row["warning"], row
        for text in named:
            assert text in row["warning"], (text, row["warning"])
    else:
        assert row["status"] == "error", row
        assert not fuzz["out"][m.name].exists()
        for text in named:
            assert text in message(row), (text, message(row))
    assert_no_raw_exception(row)


def assert_no_raw_exception(row: dict) -> None:
    """No traceback, no bare exception repr (``KeyError('x')``), no message without a file."""
    text = message(row) + (row["warning"] or "")
    assert "Traceback" not in text and not re.match(r"^\w+(Error|Exception)\(", text), text
    if row["status"] == "error":
        assert "/" in row["error"], row["error"]  # every error names a file or folder


@pytest.mark.parametrize("m", MUTATIONS, ids=lambda m: f"{m.family}-{m.name}")
def test_strict_fails_every_case_not_written_identical(fuzz, m):
    row = fuzz["strict_rows"][m.name]
    if m.expect == "same":
        assert row["status"] == "ok" and row["warning"] is None, row
    else:
        assert row["status"] == "error", row
        assert fuzz["codes"][group_key(m)] == 1


def test_nothing_written_wrong_with_status_ok(fuzz):
    base = written_bytes(fuzz["base_out"])
    for name, row in fuzz["rows"].items():
        if row["status"] == "ok" and not row["warning"]:
            assert written_bytes(fuzz["out"][name]) == base, name


def test_partial_label_grid_is_recorded(fuzz):
    # The CT voxels inside the cropped label's grid; it holds the whole organ, so no warning.
    row = fuzz["rows"]["cropped_in_plane_around_the_organ"]
    fraction = round(175 * 90 / (192 * 128), 6)
    assert row["label_coverage"] == {
        "i": [5, 179],
        "j": [10, 99],
        "k": [0, 7],
        "fraction": fraction,
    }
    assert fuzz["rows"]["last_slice_missing"]["label_coverage"]["k"] == [0, 6]


def test_every_problem_line_is_on_stderr(fuzz):
    problems = [line for row in fuzz["rows"].values() for line in row.get("problems") or []]
    assert len(problems) >= 30
    lines = fuzz["stderr"].splitlines()
    missing = [p for p in problems if not any(line.endswith(p) for line in lines)]
    assert not missing, missing[:3]


def test_no_python_warning_escapes(fuzz):
    assert fuzz["escaped"] == [], [str(w.message) for w in fuzz["escaped"]][:5]


def test_stderr_holds_only_project_lines(fuzz):
    assert_project_lines(fuzz["stderr"])


def assert_project_lines(text: str) -> None:
    """Every stderr line is the progress bar or an "ingest: ..." line; no raw warning."""
    lines = [part.strip() for line in text.splitlines() for part in line.split("\r")]
    stray = [line for line in lines if line and not line.startswith("ingest")]
    assert not stray, stray[:5]
    assert not re.search(r"\w+Warning: |Traceback", text), text[:2000]


def test_cli_process_stderr_with_every_warning_shown(fuzz):
    """The default group through ``gvae ingest`` as a process, 2 workers, warnings "always"."""
    group = fuzz["groups"][()]
    out = group["out"].parent / "process"
    params = group["out"].parent / "process.yaml"
    params.write_text("ingest:\n  workers: 2\n")
    env = {**os.environ, "PYTHONWARNINGS": "always"}
    argv = [sys.executable, "-m", "pipeline.cli", "ingest", "--params", str(params), "--images",
            str(group["images"]), "--labels", str(group["labels"]), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_project_lines(proc.stderr)
    rows = {r["case_id"]: r for r in json.loads((out / "manifest.json").read_text())}
    for name, number in group["numbers"].items():
        assert rows[case_id(number)]["status"] == fuzz["rows"][name]["status"], name
