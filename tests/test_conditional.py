"""Mask-conditioned generation (issue: synthetic data that can pay off): the cGVAE and the SPADE
GAN draw an image FOR a given mask, masks come from the generator's own patients (real or
deformed) or a joint model's set, and bad combinations are refused before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.config import TrainConfig
from models.registry import build_model
from models.train.trainer import train
from models.zoo.cgvae import drawn_region
from pipeline.augment.masks import body_mask, deform_masks, real_masks
from pipeline.io.shards import load_slices
from pipeline.params.ct import DeformParams

from .ct_fixtures import toy_pairs, write_toy_slices
from .test_generate import SPLITS, _generate, _params, _train


def _dice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    inter = (a & b).sum((1, 2)).float()
    return 2 * inter / (a.sum((1, 2)) + b.sum((1, 2))).clamp(min=1).float()


# Per conditional model: (tiny config, trainer overrides) that overfit 8 pairs in ~120 steps.
OVERFIT = {
    "cgvae": (
        {"latent_dim": 4, "width": 8, "max_width": 16, "dropout": 0.0, "n_critic": 1,
         "adv_weight": 0.1},
        {},
    ),
    # GauGAN's Adam betas (0, 0.9), as params.yaml trains it: with (0.9, 0.999) the same 120
    # steps reach a Dice of only ~0.55 on its own masks.
    "spade_gan": (
        {"latent_dim": 4, "num_channels": [8, 16], "spade_hidden": 8, "disc_channels": 8,
         "disc_layers": 1},
        {"adam_betas": (0.0, 0.9)},
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(OVERFIT))
def test_conditional_model_draws_the_image_for_its_mask(tmp_path, name):
    """Overfit on 8 pairs whose organ is bright exactly under its mask: the drawn images, put
    through a fixed segmenter (a threshold), match their OWN masks far better than shuffled
    ones. A model that ignored the mask would score the same against both."""
    torch.manual_seed(0)
    size, n = 16, 8
    masks, images = -torch.ones(n, 1, size, size), torch.full((n, 1, size, size), -0.6)
    for k in range(n):
        r, c = 2 + (k % 4) * 3, 2 + (k // 4) * 6
        masks[k, 0, r : r + 5, c : c + 5] = 1.0
        images[k, 0, r : r + 5, c : c + 5] = 0.8
    data = torch.cat([images, masks], dim=1)
    config, train_over = OVERFIT[name]
    model = build_model(name, config, 2, size)
    cfg = TrainConfig(
        steps=120, batch_size=8, lr=3e-3, log_every=60, sample_every=120,
        checkpoint_every=120, device="cpu", grid=2, **train_over,
    )  # fmt: skip
    train(model, data, cfg, tmp_path, progress=False)
    drawn = model.sample(n, generator=torch.Generator().manual_seed(1), condition=data)
    assert torch.equal(drawn[:, 1:], masks)  # the label is the conditioning mask
    segmented, own = drawn[:, 0] > 0.1, masks[:, 0] > 0
    shuffled = own[torch.roll(torch.arange(n), 1)]
    assert _dice(segmented, own).mean() > 0.8
    assert _dice(segmented, own).mean() > _dice(segmented, shuffled).mean() + 0.5


@pytest.mark.parametrize("name", sorted(OVERFIT))
def test_background_context_keeps_the_real_slice_outside_the_drawn_region(name):
    """``context: background``: the pixels outside the dilated mask are the source slice's own,
    exactly; inside, the generator draws. ``context: none`` draws the whole slice."""
    size, n, margin = 16, 6, 2
    pairs = torch.rand(n, 2, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pairs[:, 1] = -1.0
    for k in range(n):
        pairs[k, 1, 2 + k : 7 + k, 8 - k : 13 - k] = 1.0
    outside = drawn_region(pairs[:, 1:], margin) == 0  # (B, 1, H, W)
    for context in ("background", "none"):
        torch.manual_seed(0)
        over = {"context": context, "context_margin_px": margin}
        model = build_model(name, {**OVERFIT[name][0], **over}, 2, size)
        drawn = model.sample(n, generator=torch.Generator().manual_seed(0), condition=pairs)
        assert torch.equal(drawn[:, 1:], pairs[:, 1:])
        kept = torch.equal(drawn[:, :1][outside], pairs[:, :1][outside])
        assert kept == (context == "background")
        assert not torch.equal(drawn[:, :1][~outside], pairs[:, :1][~outside])


def test_deformed_masks_stay_binary_inside_the_body_and_within_the_area_bound():
    image, mask = toy_pairs(6, 32, seed=3)
    params = DeformParams(draws_per_mask=5, magnitude=(0.5, 2.0))
    got = deform_masks(image, mask, params, seed=0)
    assert got.mask.dtype == np.uint8 and set(np.unique(got.mask)) <= {0, 1}
    assert len(got.mask) + sum(got.rejected.values()) == 6 * 5
    changed = 0
    for m, src, img in zip(got.mask, got.source, got.image, strict=True):
        area, before = int(m.sum()), int(mask[src].sum())
        assert 0.8 * before <= area <= 1.25 * before
        assert not np.any(m[0].astype(bool) & ~body_mask(image[src, 0], params.body_threshold))
        assert np.array_equal(img, image[src])  # the context is the mask's own slice
        changed += not np.array_equal(m, mask[src])
    assert changed == len(got.mask)  # every kept mask was really deformed
    again = deform_masks(image, mask, params, seed=0)
    assert np.array_equal(again.mask, got.mask)  # seeded


def test_a_deformation_that_refuses_every_mask_names_the_setting():
    image, mask = toy_pairs(3, 32, seed=1)
    params = DeformParams(magnitude=(3.0, 4.0), min_area_ratio=1.0, max_area_ratio=1.0)
    with pytest.raises(ValueError, match=r"generate.deform refused every deformed mask"):
        deform_masks(image, mask, params, seed=0)


def test_real_masks_keep_only_labelled_slices():
    image, mask = toy_pairs(4, 32, seed=2)
    mask[1] = 0
    got = real_masks(image, mask)
    assert got.source.tolist() == [0, 2, 3] and np.array_equal(got.mask, mask[[0, 2, 3]])


@pytest.mark.parametrize("masks", ["deformed", "real"])
def test_generate_draws_for_the_runs_own_patients_masks(tmp_path, masks):
    slices = write_toy_slices(tmp_path / "slices", SPLITS)
    params = _params(tmp_path, masks=masks, batch_size=8)
    run = tmp_path / "run"
    assert _train(params, slices, run, "cgvae", "--fraction", "0.5") == 0
    own = json.loads((run / "data.json").read_text())["cases"]
    assert 0 < len(own) < len(SPLITS["train"])
    assert _generate(params, run, tmp_path / "syn", 12) == 0
    _, got_mask, meta = load_slices(tmp_path / "syn", "synthetic")
    summary = json.loads((tmp_path / "syn" / "summary.json").read_text())
    assert summary["masks"]["source"] == masks and summary["masks"]["masks"] > 0
    assert set(summary["masks"]["rejected"]) == {"empty", "area", "outside_body"}
    assert len(got_mask) == 12 and set(np.unique(got_mask)) <= {0, 1}
    _, train_mask, train_meta = load_slices(slices, "train")
    mine = train_mask[np.isin(train_meta["case_id"], own)]
    others = train_mask[~np.isin(train_meta["case_id"], own)]
    if masks == "real":  # every label is one of the run's own patients' masks, none of others'
        for m in got_mask:
            assert any(np.array_equal(m, t) for t in mine)
            assert not any(np.array_equal(m, t) for t in others)
    index = json.loads((tmp_path / "syn" / "index.json").read_text())
    assert index["source"]["conditional"] is True and set(meta["case_id"]) == {"syn-cgvae"}
    assert (tmp_path / "syn" / "draws.png").stat().st_size > 0  # several draws per mask


def test_draw_panels_repeat_one_mask_per_row_and_show_its_deformations():
    """Each row: the condition, then draws for exactly that mask (different z, so different
    images); the deformed row: one real mask, then deformations of that same slice's mask."""
    from models.registry import build_model
    from pipeline.augment.draw_grid import draw_panels

    image, mask = toy_pairs(6, 16, seed=2)
    conditions = deform_masks(image, mask, DeformParams(draws_per_mask=3), seed=0)
    model = build_model("cgvae", {"latent_dim": 4, "width": 8, "max_width": 16}, 2, 16)
    panels = draw_panels(model, conditions, seed=0, rows=2, draws=3, originals=(image, mask))
    rows = [panels[k : k + 4] for k in range(0, 8, 4)]
    for row in rows:
        assert [p.title for p in row] == ["condition", "draw 1", "draw 2", "draw 3"]
        assert all(np.array_equal(p.mask, row[0].mask) for p in row)
        assert not np.allclose(row[1].image, row[2].image)
    assert not np.array_equal(rows[0][0].mask, rows[1][0].mask)  # different source slices
    deformed = panels[8:]
    assert deformed[0].title == "real mask" and len(deformed) >= 2
    source = next(i for i in range(6) if np.array_equal(image[i, 0], deformed[0].image))
    assert np.array_equal(deformed[0].mask, mask[source, 0])
    for p in deformed[1:]:
        assert p.title.startswith("deformed") and np.array_equal(p.image, image[source, 0])
        assert not np.array_equal(p.mask, mask[source, 0])


def test_conditional_generate_bad_input_is_named_and_writes_nothing(tmp_path, capsys):
    slices = write_toy_slices(tmp_path / "slices", SPLITS)
    params = _params(tmp_path, masks="generated", batch_size=8)
    cond, joint = tmp_path / "cond", tmp_path / "joint"
    assert _train(params, slices, cond, "cgvae") == 0
    assert _train(params, slices, joint, "vae") == 0
    capsys.readouterr()
    assert _generate(params, cond, tmp_path / "a", 4) == 2  # generated masks without a set
    assert "generate.masks is 'generated'" in capsys.readouterr().err
    assert _generate(params, joint, tmp_path / "b", 4, "--masks-from", str(tmp_path)) == 2
    assert "draws its own masks" in capsys.readouterr().err
    assert _generate(params, joint, tmp_path / "joint_set", 6) == 0  # a joint model's set...
    assert (
        _generate(params, cond, tmp_path / "c", 4, "--masks-from", str(tmp_path / "joint_set")) == 0
    )
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["masks"]["source"] == "generated"  # ...is what "generated" draws for
    assert _generate(params, cond, tmp_path / "d", 4, "--masks-from", str(tmp_path / "c")) == 2
    assert "mask-conditioned model" in capsys.readouterr().err  # not a conditional model's set
    assert not any((tmp_path / name).exists() for name in ("a", "b", "d"))
