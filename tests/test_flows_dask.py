"""The ``cohort_dask`` flow: ingest and slicing of the phantom cohort, one Prefect task per case
on a Dask LocalCluster (2 worker processes on loopback), write what ``gvae ingest`` and
``gvae slices`` write, byte for byte; and the ``flows.dask`` params that choose the cluster.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.cohort.phantom import write as phantom
from pipeline.cohort.phantom.write import IMAGES_DIR, LABELS_DIR
from pipeline.flows.cohort import LOOPBACK, cohort_dask, task_runner
from pipeline.params.cohort import PhantomParams
from pipeline.params.flows import DaskParams
from pipeline.params.loader import ParamsError, load_section

from .prefect_fixtures import QUIET

# Five small phantom patients (a 3/1/1 split) and one case folder without a label: an error row.
COHORT = PhantomParams(cases=5, seed=0, slices=16, matrix=64, slice_thickness_mm=5.0)
NO_LABEL = "PANCREAS_0099"
SLICES = {"fov_mm": 160.0, "size": 16, "negative_fraction": 0.5, "shard_size": 8}


@pytest.fixture(scope="module")
def harness():
    """A temporary Prefect API (SQLite in a temporary folder) for the module's flow runs."""
    from prefect.testing.utilities import prefect_test_harness

    with pytest.MonkeyPatch.context() as mp:
        for key, value in QUIET.items():
            mp.setenv(key, value)
        with prefect_test_harness(server_startup_timeout=180):
            yield


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, Path]:
    """``(root, params file)``: the phantom cohort under ``root/raw`` plus a label-less case.

    The params name the cohort by absolute paths, so the stages (run from any directory) and
    the flow (paths under ``root``) read the same files and name them alike in error rows.
    """
    root = tmp_path_factory.mktemp("cohort")
    phantom.run(COHORT, root / "raw")
    stray = root / "raw" / IMAGES_DIR / NO_LABEL
    stray.mkdir()
    (stray / "1-001.dcm").write_bytes(b"not a DICOM file")
    params = {
        "ingest": {
            "images": str(root / "raw" / IMAGES_DIR),
            "labels": str(root / "raw" / LABELS_DIR),
            "workers": 1,
        },
        "slices": SLICES,
        "flows": {"dask": {"address": None, "n_workers": 2, "threads_per_worker": 1}},
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return root, path


def tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` by its relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_dask_flow_writes_what_the_stages_write(cohort, harness, tmp_path):
    from prefect.client.orchestration import get_client

    root, params = cohort
    ref = tmp_path / "stages"
    assert main(["ingest", "--params", str(params), "--out", str(ref / "volumes")]) == 0
    argv = ["--params", str(params), "--input", str(ref / "volumes"), "--out", str(ref / "slices")]
    assert main(["slices", *argv]) == 0

    result = cohort_dask(root=str(root), volumes="dask/volumes", slices="dask/slices")

    rows = json.loads((ref / "volumes" / "manifest.json").read_text())
    assert [r["case_id"] for r in rows if r["status"] == "ok"] == [
        f"PANCREAS_{i:04d}" for i in range(1, COHORT.cases + 1)
    ]
    assert [r["case_id"] for r in rows if r["status"] == "error"] == [NO_LABEL]
    assert "label file not found" in rows[-1]["error"]
    assert result["failed"] == [NO_LABEL]
    assert result["slices"]["cases"] == {"train": 3, "val": 1, "test": 1}
    for name in ("volumes", "slices"):
        expected, written = tree(ref / name), tree(root / "dask" / name)
        assert sorted(written) == sorted(expected), name
        differ = sorted(f for f in expected if written[f] != expected[f])
        assert differ == [], f"{name}: files differ from the stage's: {differ}"
    assert any(f.endswith(".nii.gz") for f in tree(ref / "volumes"))

    # Every case was its own task: one ingest task per case folder, one slice task per volume.
    with get_client(sync_client=True) as client:
        names = {t.name for t in client.read_task_runs()}
    assert {f"ingest {r['case_id']}" for r in rows} <= names
    assert {f"slice {r['case_id']}" for r in rows if r["status"] == "ok"} <= names


def test_task_runner_local_cluster_or_scheduler_address():
    local = task_runner(DaskParams(n_workers=3, threads_per_worker=2))
    assert local.address is None
    assert local.cluster_kwargs["n_workers"] == 3
    assert local.cluster_kwargs["threads_per_worker"] == 2
    assert local.cluster_kwargs["processes"] is True
    assert local.cluster_kwargs["host"] == LOOPBACK
    remote = task_runner(DaskParams(address="tcp://scheduler.example:8786"))
    assert remote.address == "tcp://scheduler.example:8786"


@pytest.mark.parametrize(
    ("dask", "problem"),
    [
        ({"address": "tcp://sched uler:8786"}, "flows.dask.address: Value error, not a Dask"),
        ({"address": "tcp://scheduler:port"}, "flows.dask.address: Value error, not a Dask"),
        ({"n_workers": 0}, "flows.dask.n_workers: Input should be greater than or equal to 1"),
        ({"workers": 2}, "unknown key 'flows.dask.workers'"),
    ],
)
def test_bad_dask_params_name_the_file_and_key(tmp_path, dask, problem):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"flows": {"dask": dask}}))
    with pytest.raises(ParamsError) as err:
        load_section(path, "flows")
    assert str(path) in str(err.value)
    assert problem in str(err.value)


def test_dask_params_defaults_and_addresses():
    repo_params = Path(__file__).resolve().parents[1] / "params.yaml"
    assert load_section(repo_params, "flows").dask == DaskParams()
    for address in ("tcp://10.0.0.5:8786", "tls://[::1]:8786", "scheduler.example:8786"):
        assert DaskParams(address=address).address == address
