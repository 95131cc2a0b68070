"""dvc.yaml and params.yaml agree: one list of compared models, and the profile switch reruns
every stage whose settings it changes."""

from __future__ import annotations

import pytest
import yaml

from pipeline.params.loader import ParamsError
from pipeline.params.models import load_model_config, load_params_models

from .conftest import REPO


def _dvc() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def _params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_sanity_stages_expand_over_the_compared_models_of_params():
    # One list: dvc.yaml's model matrices read mnist.models, which every model block backs.
    for name in ("train", "sample", "evaluate"):
        assert _dvc()["stages"][name]["matrix"]["model"] == "${mnist.models}"
    assert load_params_models(REPO / "params.yaml") == _params()["mnist"]["models"]
    assert "vars" not in _dvc()


def test_compared_model_without_a_block_is_named(tmp_path):
    raw = _params()
    raw["mnist"]["models"] = ["vae", "no_such_block"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match="no_such_block"):
        load_params_models(path)


def test_profile_overrides_are_tracked_by_every_stage_that_reads_them():
    params = _params()
    missing = []
    for profile in ("full", "paper"):
        overridden = set(params[profile])  # sections this profile changes
        for name, stage in _dvc()["stages"].items():
            body = stage.get("do", stage)
            tracked = [str(p) for p in body.get("params", [])]
            for key in tracked:
                section = key.split(".")[0]
                if section not in overridden:
                    continue
                if "profile" not in tracked:
                    missing.append(f"{name}: reads {key} but not `profile`")
                block = f"{profile}.{section}" if section != "models" else f"{profile}.{key}"
                if block not in tracked:
                    missing.append(f"{name}: reads {key} but not {block}")
    assert not missing, "\n".join(missing)


def test_every_model_block_has_the_paper_block_dvc_tracks(tmp_path):
    """train and train_ct track `paper.models.<model>`, and DVC refuses to run a stage whose
    tracked key is missing: a model without that block stops `dvc repro` once it is listed
    (the `full` run stopped at alpha_gan). Each paper block must also validate and build."""
    import torch

    from models.registry import build_model, lookup

    stages = _dvc()["stages"]
    tracked = {"train": "paper.models.${item.model}", "train_ct": "paper.models.${item}"}
    for name, key in tracked.items():
        assert key in stages[name].get("do", stages[name])["params"], name
    raw = _params()
    missing = sorted(set(raw["models"]) - set(raw["paper"]["models"]))
    assert not missing, f"models without a paper.models block: {missing}"
    raw["profile"] = "paper"
    raw["mnist"]["datasets"] = ["mnist", "fashion_mnist"]  # the DAG list the profile requires
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    for name in raw["models"]:
        model_cfg, _ = load_model_config(path, name)
        with torch.device("meta"):  # paper-scale shapes without allocating the weights
            for channels, size in ((1, 32), (2, 128)):  # MNIST, and CT pairs at 128 px
                if channels == 1 and lookup(name)[0].conditional:
                    continue  # mask-conditioned: (image, mask) pairs only
                build_model(name, model_cfg, channels, size)


def test_code_folders_are_dvc_ignored_bytecode():
    ignored = (REPO / ".dvcignore").read_text().split()
    assert "__pycache__/" in ignored and "*.pyc" in ignored


def test_long_stages_resume_instead_of_restarting():
    """DVC deletes a stage's outs before running it unless they persist: the training and the
    segmentation grid keep theirs and resume, so an interrupted `full` run goes on."""
    stages = _dvc()["stages"]
    for name, out, flag in (
        (
            "train",
            "data/models/${item.dataset}/${item.model}/s${item.seed}",
            "--resume-if-compatible",
        ),
        ("train_ct", "data/ct/models/${item}", "--resume-if-compatible"),
        ("segment", "data/ct/segment/runs", "--resume"),
    ):
        stage = stages[name].get("do", stages[name])
        assert flag in stage["cmd"].split(), name
        persisted = [o for o in stage["outs"] if isinstance(o, dict) and out in o]
        assert persisted and persisted[0][out]["persist"] is True, name
