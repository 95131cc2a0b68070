"""The folder tree is the architecture: imports point down it, never round in a circle, and
every stage's DVC ``deps`` cover every module (and package file) the stage can run.

Each rule is checked on the real tree and, to show that the check can fail, on a small planted
tree with exactly one violation.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from tests.layout import closure, cycles, import_graph, layer_violations, module_files

ROOT = Path(__file__).resolve().parents[1]


def test_no_import_circle() -> None:
    assert cycles(import_graph(ROOT)) == []


def test_imports_point_down_the_layers() -> None:
    assert layer_violations(import_graph(ROOT)) == []


def test_every_module_is_in_a_layer() -> None:
    # layer_violations raises for a module outside LAYERS; a new top folder must be placed.
    graph = import_graph(ROOT)
    assert len(graph) > 100 and "models.zoo.gvae" in graph and "pipeline.cli" in graph


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for package in ("common", "models", "pipeline"):
        (tmp_path / package).mkdir(exist_ok=True)
        (tmp_path / package / "__init__.py").touch()
    return tmp_path


def test_planted_circle_is_found(tmp_path: Path) -> None:
    root = _plant(
        tmp_path,
        {
            "pipeline/io/__init__.py": "",
            "pipeline/io/a.py": "from pipeline.io.b import f\n",
            # a lazy import inside a function closes the circle: still a circle
            "pipeline/io/b.py": "def f():\n    from pipeline.io import a\n",
        },
    )
    assert cycles(import_graph(root)) == [["pipeline.io.a", "pipeline.io.b"]]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (  # models/ reaching into pipeline/
            {
                "models/trainer.py": "from pipeline.io.atomic import atomic_path\n",
                "pipeline/io/__init__.py": "",
                "pipeline/io/atomic.py": "atomic_path = 1\n",
            },
            "models.trainer imports pipeline.io.atomic, a higher layer",
        ),
        (  # io/ importing the CLI
            {
                "pipeline/io/__init__.py": "",
                "pipeline/cli.py": "",
                "pipeline/io/plots.py": "def f():\n    from pipeline.cli import main\n",
            },
            "pipeline.io.plots imports pipeline.cli, a higher layer",
        ),
        (  # a stage importing another stage for a file name
            {
                "pipeline/stages/__init__.py": "",
                "pipeline/stages/train.py": "DATA = 'x'\n",
                "pipeline/stages/generate.py": "from pipeline.stages.train import DATA\n",
            },
            "pipeline.stages.generate imports pipeline.stages.train: a stage never imports "
            "another stage",
        ),
    ],
)
def test_planted_upward_import_is_found(tmp_path: Path, files: dict, expected: str) -> None:
    assert layer_violations(import_graph(_plant(tmp_path, files))) == [expected]


# ----------------------------------------------------------------------------- DVC deps
def _stages(dvc_yaml: Path) -> dict[str, dict]:
    """``{stage: {"cmd", "deps"}}``; a foreach stage's ``do`` block stands for all its items."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def _code_files(root: Path, modules: set[str]) -> set[str]:
    """Files a stage runs: its modules, plus package data beside them (report templates)."""
    files = module_files(root)
    out: set[str] = set()
    for module in modules:
        path = files[module]
        if path.name == "__init__.py" and not _has_code(path):
            continue  # an empty package marker cannot change what a stage computes
        out.add(path.relative_to(root).as_posix())
        for data in path.parent.iterdir():
            if data.is_file() and data.suffix in {".j2", ".json", ".html"}:
                out.add(data.relative_to(root).as_posix())
    return out


def _has_code(path: Path) -> bool:
    import ast

    body = ast.parse(path.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def uncovered_deps(root: Path) -> dict[str, list[str]]:
    """``{stage: [code files it can import that no dep covers]}`` for every ``gvae`` stage."""
    from pipeline.cli import COMMANDS

    graph = import_graph(root)
    missing: dict[str, list[str]] = {}
    for name, stage in _stages(root / "dvc.yaml").items():
        words = stage["cmd"].split()
        if words[0] != "gvae":
            continue
        entry = COMMANDS[words[1]][0]
        modules = closure(graph, entry) | closure(graph, "pipeline.cli")
        deps = [d.rstrip("/") for d in stage.get("deps", []) if "$" not in d]
        lost = sorted(
            f
            for f in _code_files(root, modules)
            if not any(f == d or f.startswith(d + "/") for d in deps)
        )
        if lost:
            missing[name] = lost
    return missing


def test_dvc_deps_cover_every_imported_module() -> None:
    assert uncovered_deps(ROOT) == {}


def test_planted_stale_dep_is_found(tmp_path: Path) -> None:
    # A copy of the tree whose ingest stage lost one folder from its deps.
    import shutil

    for package in ("common", "models", "pipeline"):
        shutil.copytree(ROOT / package, tmp_path / package)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stages["stages"]["ingest"]["deps"].remove("pipeline/io")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(stages))
    missing = uncovered_deps(tmp_path)
    assert list(missing) == ["ingest"]
    assert "pipeline/io/dicom_read.py" in missing["ingest"]


# ----------------------------------------------------------------------------- README recipes
PLANTED_SOURCE = '''
"""``ingest.source: npz_volumes``: one ``<case>.npz`` (hu, affine) per case, labels alike."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.cohort.label_checks import place_by_affine
from pipeline.cohort.sources.base import CaseVolume, Located
from pipeline.params.ingest import IngestParams


@dataclass(frozen=True)
class NpzCase:
    case_id: str
    image: Path


@dataclass(frozen=True)
class NpzVolumes:
    params: IngestParams
    images: Path
    labels: Path
    name = "npz_volumes"

    def cases(self):
        return [NpzCase(p.stem, p) for p in sorted(Path(self.images).glob("*.npz"))]

    def locate(self, case):
        label = Path(self.labels) / case.image.name
        if not label.is_file():
            raise ValueError(f"{label}: label file not found for case {case.case_id}")
        return Located(case.image.parent, [case.image], label)

    def read(self, case, label):
        image, lab = np.load(case.image), np.load(label)
        hu, affine = image["hu"].astype(np.int16), image["affine"]
        mask, placement = place_by_affine(
            lab["label"], lab["affine"], hu.shape, affine, self.params, label
        )
        spacing = [round(float(s), 6) for s in np.linalg.norm(affine[:3, :3], axis=0)]
        return CaseVolume(hu, affine, mask, placement, spacing=spacing)


SOURCE = NpzVolumes
'''


def test_adding_a_cohort_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README "Adding a cohort source", followed once: ONE file, then `gvae ingest --source`."""
    import json

    import nibabel as nib
    import numpy as np

    import pipeline.cohort.sources as sources_package
    from pipeline.cli import main
    from pipeline.cohort.sources.registry import sources

    extra = tmp_path / "extra_sources"
    extra.mkdir()
    (extra / "npz_volumes.py").write_text(PLANTED_SOURCE)  # the one file the recipe adds
    monkeypatch.setattr(sources_package, "__path__", [*sources_package.__path__, str(extra)])
    assert "npz_volumes" in sources()

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    for k, case in enumerate(("case_a", "case_b")):
        hu = np.full((16, 16, 4), -1000, np.int16)
        label = np.zeros((16, 16, 4), np.uint8)
        label[4 + k : 9 + k, 5:10, 1:3] = 1
        hu[label == 1] = 90 + 10 * k  # soft tissue under the label: no HU warning
        np.savez(images / f"{case}.npz", hu=hu, affine=affine)
        np.savez(labels / f"{case}.npz", label=label, affine=affine)
    params = tmp_path / "params.yaml"
    params.write_text("ingest:\n  source: npz_volumes\n  workers: 1\n")
    out = tmp_path / "volumes"
    code = main(
        [
            "ingest",
            "--params",
            str(params),
            "--images",
            str(images),
            "--labels",
            str(labels),
            "--out",
            str(out),
            "--strict",
        ]
    )
    assert code == 0
    rows = json.loads((out / "manifest.json").read_text())
    assert [(r["case_id"], r["status"], r["label_voxels"]) for r in rows] == [
        ("case_a", "ok", 50),
        ("case_b", "ok", 50),
    ]
    assert rows[1]["label_hu_mean"] == 100.0 and len(rows[0]["source_sha256"]) == 64
    written = nib.load(out / "case_b" / "label.nii.gz")
    assert np.array_equal(np.asarray(written.dataobj), np.load(labels / "case_b.npz")["label"])
    assert np.allclose(written.affine, affine)


def test_unknown_cohort_source_names_the_setting(tmp_path: Path) -> None:
    from pipeline.cohort.ingest import run
    from pipeline.errors import ParamsError
    from pipeline.params.ingest import IngestParams

    with pytest.raises(ParamsError, match=r"ingest.source: unknown cohort source 'nrrd'.*tcia"):
        run(IngestParams(source="nrrd"), tmp_path, tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything was written


PLANTED_MODEL = '''
"""VAE with an extra L1 reconstruction term: the README's "Adding a model", followed once."""

from pydantic import Field

from models.zoo import register
from models.zoo.vae import VAE, VAEConfig


class L1VAEConfig(VAEConfig):
    l1_weight: float = Field(1.0, ge=0.0)


@register("planted_l1_vae", L1VAEConfig)
class L1VAE(VAE):
    def losses(self, x):
        out, rec, kl = self.vae_terms(x)
        l1 = (out.recon - x).abs().mean()
        total = rec + self.config.beta * kl + self.config.l1_weight * l1
        return {"rec": rec, "kl": kl, "l1": l1, "total": total}
'''


def test_adding_a_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README "Adding a model", followed once: ONE zoo file and its params blocks, then the
    registry, the params validation and the one trainer take it with nothing else edited."""
    import sys

    import torch

    import models.zoo as zoo
    from models import registry
    from models.train.trainer import train
    from pipeline.params.models import load_model_config

    extra = tmp_path / "extra_zoo"
    extra.mkdir()
    (extra / "planted_l1_vae.py").write_text(PLANTED_MODEL)  # step 1: the model file
    params = tmp_path / "params.yaml"  # step 2: its params blocks
    params.write_text(
        "train: {steps: 2, batch_size: 4, log_every: 1, sample_every: 2, checkpoint_every: 2}\n"
        "models:\n"
        "  planted_l1_vae: {model: {latent_dim: 4, width: 4, max_width: 8, l1_weight: 0.5}}\n"
        "paper:\n  models:\n    planted_l1_vae: {model: {latent_dim: 8}}\n"
    )
    monkeypatch.setattr(zoo, "__path__", [*zoo.__path__, str(extra)])
    registry._load_all.cache_clear()
    try:
        assert "planted_l1_vae" in registry.available()
        model_cfg, train_cfg = load_model_config(params, "planted_l1_vae")
        assert model_cfg.l1_weight == 0.5 and train_cfg.steps == 2
        model = registry.build_model("planted_l1_vae", model_cfg, channels=1, size=16)
        data = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
        summary = train(model, data, train_cfg, tmp_path / "run", progress=False)
        assert summary["steps_run"] == 2 and {"l1", "total"} <= set(summary["final_losses"])
        assert (tmp_path / "run" / "checkpoint.pt").is_file()
    finally:  # the rest of the session sees the registry as it was
        monkeypatch.undo()
        zoo._REGISTRY.pop("planted_l1_vae", None)
        sys.modules.pop("models.zoo.planted_l1_vae", None)
        registry._load_all.cache_clear()
    assert "planted_l1_vae" not in registry.available()
