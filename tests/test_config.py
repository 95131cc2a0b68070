"""params.yaml is validated once, strictly: unknown keys name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from models.registry import available
from pipeline.cli import main
from pipeline.errors import ParamsError
from pipeline.params.cohort import SlicesParams, SplitParams
from pipeline.params.loader import load_params, load_section
from pipeline.params.models import configured_models, load_model_config, load_params_models

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_validate():
    params = load_params(REPO / "params.yaml")
    assert params["slices"].window.level == 40
    assert params["slices"].window.width == 400


def test_unknown_top_level_key_names_key_and_file(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text((REPO / "params.yaml").read_text() + "\nslcies: {size: 32}\n")
    with pytest.raises(ParamsError, match=r"params\.yaml.*'slcies'"):
        load_params(p)


def test_unknown_nested_key_names_dotted_path(tmp_path):
    p = tmp_path / "custom.yaml"
    p.write_text("slices:\n  window: {level: 40, widht: 400}\n")
    with pytest.raises(ParamsError) as exc:
        load_section(p, "slices")
    assert "custom.yaml" in str(exc.value)
    assert "slices.window.widht" in str(exc.value)


def test_bad_value_is_rejected(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("slices:\n  size: 48\n")
    with pytest.raises(ParamsError, match="power of two"):
        load_section(p, "slices")


def test_params_are_frozen():
    s = SlicesParams()
    with pytest.raises(ValidationError, match="frozen"):
        s.size = 128  # type: ignore[misc]


def test_split_fractions_and_overlap():
    with pytest.raises(ValueError, match="sum to 1"):
        SplitParams(train=0.5, val=0.2, test=0.2)
    with pytest.raises(ValueError, match="both train and test"):
        SplitParams(cases={"train": ["A", "B"], "test": ["B"]})


def test_cli_reports_params_error(tmp_path, capsys):
    p = tmp_path / "params.yaml"
    p.write_text("ingest:\n  wrokers: 3\n")
    code = main(
        [
            "ingest",
            "--params",
            str(p),
            "--images",
            str(tmp_path),
            "--labels",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code != 0
    err = capsys.readouterr().err
    assert "ingest.wrokers" in err and str(p) in err


def test_every_configured_model_config_validates():
    compared = load_params_models(REPO / "params.yaml")
    assert compared == ["vae", "beta_vae", "wgan_gp", "vae_gan", "gvae"]
    names = configured_models(REPO / "params.yaml")
    assert set(available()) <= set(names)  # every registry entry has its params block
    for name in names:
        model_cfg, train_cfg = load_model_config(REPO / "params.yaml", name)
        assert train_cfg.steps > 0 and model_cfg.model_dump()  # validated, not empty
    _, wgan_train = load_model_config(REPO / "params.yaml", "wgan_gp")
    assert wgan_train.adam_betas == (0.0, 0.9)  # per-model override of the shared section


def test_misspelled_model_key_is_named(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["models"]["gvae"]["model"]["latnt_dim"] = 8
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"models\.gvae\.model\.latnt_dim"):
        load_model_config(p, "gvae")


def test_model_missing_from_params_lists_present_ones(tmp_path):
    with pytest.raises(ParamsError, match="no 'models.dcgan' entry.*gvae"):
        load_model_config(REPO / "params.yaml", "dcgan")


def test_paper_profile_is_one_switch(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profile"] = "paper"
    raw["mnist"]["datasets"] = ["mnist", "fashion_mnist"]  # the DAG list (not a profile block)
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    model_cfg, train_cfg = load_model_config(p, "gvae")
    assert model_cfg.latent_dim == 1000 and model_cfg.n_critic == 5
    assert train_cfg.batch_size == 32 and train_cfg.lr == 1e-4
    assert load_section(p, "slices").size == 128
    cpu_model, _ = load_model_config(REPO / "params.yaml", "gvae")
    assert cpu_model.latent_dim == 32


def test_unknown_profile_and_override_rejected(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profile"] = "gpu"
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match="profile must be one of"):
        load_section(p, "slices")
    raw["profile"] = "paper"
    raw["paper"]["slcies"] = {"size": 64}
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match="slcies"):
        load_section(p, "slices")


@pytest.mark.parametrize("profile", ["full", "paper"])
def test_large_profiles_require_both_sanity_datasets(tmp_path, profile):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert raw["mnist"]["datasets"] == ["mnist"]  # the 2-core default
    raw["profile"] = profile
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(
        ParamsError, match=r"both sanity datasets.*mnist.datasets=\[mnist,fashion_mnist\]"
    ):
        load_section(p, "train")
    raw["mnist"]["datasets"] = ["fashion_mnist", "mnist"]
    raw["mnist"]["seeds"] = [0, 1, 2]
    p.write_text(yaml.safe_dump(raw))
    assert load_section(p, "mnist").datasets == ["fashion_mnist", "mnist"]


def test_full_profile_requires_three_seeds(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert raw["mnist"]["seeds"] == [0]  # the 2-core default: one run per model
    raw["profile"] = "full"
    raw["mnist"]["datasets"] = ["mnist", "fashion_mnist"]
    p = tmp_path / "params.yaml"
    for seeds in ([0], [3, 4]):
        raw["mnist"]["seeds"] = seeds
        p.write_text(yaml.safe_dump(raw))
        with pytest.raises(ParamsError, match=r"at least 3 seeds.*mnist.seeds=\[0,1,2\]"):
            load_section(p, "train")
    raw["mnist"]["seeds"] = [5, 1, 9]
    p.write_text(yaml.safe_dump(raw))
    assert load_section(p, "mnist").seeds == [5, 1, 9]
    for bad, message in (([1, 1, 2], "must not repeat"), ([-1, 0, 1], "seeds must be >= 0")):
        raw["mnist"]["seeds"] = bad
        p.write_text(yaml.safe_dump(raw))
        with pytest.raises(ParamsError, match=message):
            load_section(p, "mnist")


@pytest.mark.parametrize("profile", ["cpu", "full"])
def test_grid_generators_must_be_trained_by_ct_models(tmp_path, profile):
    # The segment stage would otherwise find a generator's synthetic set missing only after
    # every other generator had trained; the check refuses it at the first stage's params.
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profile"] = profile
    raw["mnist"]["datasets"] = ["mnist", "fashion_mnist"]
    raw["mnist"]["seeds"] = [0, 1, 2]
    p = tmp_path / "params.yaml"
    if profile == "cpu":  # default: the grid reads exactly the default generators
        raw["ct"]["models"] = ["gvae", "vae", "wgan_gp", "cgvae"]  # vae_gan dropped
        missing, fix = r"\['vae_gan'\]", r"ct.models=\[gvae,vae,wgan_gp,cgvae,vae_gan\]"
    else:  # a profile block that adds the diffusion reference to the grid
        raw["full"]["segment"]["models"] = ["gvae", "vae", "wgan_gp", "vae_gan", "ddpm"]
        missing, fix = r"\['ddpm'\]", r"ct.models=\[gvae,vae,wgan_gp,vae_gan,cgvae,ddpm\]"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=rf"grid.*reads synthetic slices of {missing}.*{fix}"):
        load_section(p, "slices")  # any stage's section
    raw["ct"]["models"] = ["gvae", "vae", "wgan_gp", "vae_gan", "cgvae", "ddpm"]
    p.write_text(yaml.safe_dump(raw))
    assert ("ddpm" in load_section(p, "segment").models) == (profile == "full")
    # An explicit ":model" condition counts too, whatever segment.models says.
    raw["ct"]["models"] = ["gvae"]
    raw["segment"]["conditions"] = ["real", "syn:vae"]
    raw["segment"]["models"] = ["gvae"]
    raw["full"]["segment"]["conditions"] = ["syn:vae"]
    raw["full"]["segment"]["models"] = ["gvae"]
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"reads synthetic slices of \['vae'\]"):
        load_section(p, "ct")


@pytest.mark.parametrize(
    ("section", "key"),
    [("ct", "models"), ("mnist", "datasets"), ("mnist", "models"), ("mnist", "seeds")],
)
def test_profile_block_cannot_change_the_dag_lists(tmp_path, section, key):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["full"].setdefault(section, {})[key] = ["vae"]
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=rf"'full.{section}.{key}' is not allowed"):
        load_section(p, "slices")


def test_sanity_datasets_are_validated(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    p = tmp_path / "params.yaml"
    for bad, message in ((["mnist", "mnist"], "must not repeat"), (["cifar10"], "mnist.datasets")):
        raw["mnist"]["datasets"] = bad
        p.write_text(yaml.safe_dump(raw))
        with pytest.raises(ParamsError, match=message):
            load_section(p, "mnist")
