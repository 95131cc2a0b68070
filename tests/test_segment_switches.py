"""The segmentation speed switches: augmentation backend, channels_last, compile, precision.

Every switch keeps the training contract (shapes, finite loss, seeded reproducibility, the
mixing controls before the augmentation); the ones that change a run's numbers enter the grid's
fingerprint once set off their old value, the others (workers) never do.
"""

from __future__ import annotations

import argparse
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

import pipeline.augment.segment.train as train
from pipeline.augment.segment.grid import SWITCHES, fingerprint
from pipeline.augment.segment.mixing import build_mixer
from pipeline.augment.segment.train import Phase, predict, train_phases
from pipeline.params.segment import MixingParams, SegmentParams, parse_condition
from pipeline.stages import segment as stage
from tests.test_segment import TINY, fake_slices

SETTINGS = [
    {},
    {"augment_backend": "batched"},
    {"channels_last": True},
    {"precision": "fp32"},
    {"augment_backend": "batched", "channels_last": True},
]


@pytest.mark.parametrize("switches", SETTINGS, ids=lambda s: "+".join(s) or "defaults")
def test_switches_keep_shapes_finite_loss_and_seeding(switches):
    image, mask = fake_slices(8, np.random.default_rng(0))
    params = SegmentParams(**{**TINY, **switches})
    flags = np.ones(8, bool)
    runs = [train.train_segmenter(image, mask, flags, params, seed) for seed in (0, 0)]
    assert np.isfinite(runs[0].final_loss) and runs[0].final_loss == runs[1].final_loss
    w = [torch.cat([p.flatten() for p in r.model.parameters()]) for r in runs]
    assert torch.equal(w[0], w[1])
    pred = predict(runs[0].model, image)
    assert pred.shape == mask.shape and pred.dtype == np.uint8


def test_foreach_adam_is_the_loop_adam_bit_for_bit(monkeypatch):
    """``train.ADAM_FOREACH`` is a pure speed change: Adam's multi-tensor update gives the
    weights of its per-tensor loop exactly (so no fingerprint and no switch)."""
    image, mask = fake_slices(8, np.random.default_rng(0))
    params = SegmentParams(**{**TINY, "weight_decay": 1e-4})
    runs = []
    for foreach in (True, False):
        monkeypatch.setattr(train, "ADAM_FOREACH", foreach)
        runs.append(train.train_segmenter(image, mask, np.ones(8, bool), params, 0).model)
    w = [torch.cat([p.flatten() for p in m.parameters()]) for m in runs]
    assert torch.equal(w[0], w[1])


def test_compile_wraps_the_training_forward_only(monkeypatch):
    """``compile`` trains through ``torch.compile(model)`` (here its eager backend: the graph
    capture without C++ code generation) and returns the plain, trained module."""
    seen, real_compile = [], torch.compile

    def eager_compile(model, **kwargs):
        seen.append(model)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(train.torch, "compile", eager_compile)
    image, mask = fake_slices(8, np.random.default_rng(0))
    params = SegmentParams(**{**TINY, "compile": True})
    result = train.train_segmenter(image, mask, np.ones(8, bool), params, 0)
    monkeypatch.undo()
    plain = train.train_segmenter(image, mask, np.ones(8, bool), params.model_copy(
        update={"compile": False}), 0)  # fmt: skip
    assert seen == [result.model] and np.isfinite(result.final_loss)
    assert not isinstance(result.model, torch._dynamo.eval_frame.OptimizedModule)
    # The same computation: the eager graph replays the module's own ops.
    assert result.final_loss == pytest.approx(plain.final_loss, rel=1e-5)


@pytest.mark.parametrize("backend", ["monai", "batched"])
def test_mixing_controls_paste_before_either_backend(backend):
    image, mask = fake_slices(8, np.random.default_rng(0))
    case = np.array(["P01", "P02"] * 4)
    mixer = build_mixer("carvemix", image, mask, case, MixingParams(prob=1.0), 0)
    params = SegmentParams(**{**TINY, "augment_backend": backend})
    result = train_phases([Phase("train", image, mask, np.ones(8, bool), 3, mixer)], params, 0)
    assert mixer.pasted == 3 * params.batch_size and np.isfinite(result.final_loss)


def test_bf16_without_native_bf16_warns_naming_the_setting_and_trains_fp32(monkeypatch):
    """``segment.precision: bf16`` on a CPU without native bf16 trains in fp32 (the same
    weights as ``fp32``) after a warning naming the setting (models.train.speed)."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    image, mask = fake_slices(8, np.random.default_rng(0))
    runs = {}
    for precision in ("bf16", "fp32"):
        params = SegmentParams(**{**TINY, "precision": precision, "device": "cpu"})
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            runs[precision] = train.train_segmenter(image, mask, np.ones(8, bool), params, 0)
        said = [str(w.message) for w in seen if "precision" in str(w.message)]
        assert (precision == "bf16") == any("segment.precision" in m and "fp32" in m
                                            for m in said), said  # fmt: skip
    w = [torch.cat([p.flatten() for p in r.model.parameters()]) for r in runs.values()]
    assert torch.equal(w[0], w[1])


def test_fingerprint_counts_result_changing_switches_off_their_old_value():
    data = SimpleNamespace(index={"size": 64})
    base = SegmentParams(**SWITCHES)  # the code path before the switches
    classical, real = parse_condition("real+classical"), parse_condition("real")

    def fp(params, condition):
        return fingerprint(params, data, None, condition)

    # Today's defaults (batched, channels_last) are new runs for every classical condition.
    assert fp(SegmentParams(), classical) != fp(base, classical)
    batched = base.model_copy(update={"augment_backend": "batched"})
    assert fp(batched, classical) != fp(base, classical)
    assert fp(batched, real) == fp(base, real)  # nothing to augment: same run
    for key, value in (("channels_last", True), ("compile", True), ("precision", "fp32")):
        changed = base.model_copy(update={key: value})
        assert fp(changed, real) != fp(base, real), key
    assert fp(base.model_copy(update={"workers": 4}), classical) == fp(base, classical)


def test_fingerprint_of_old_values_is_the_hash_before_the_switches():
    """Recomputed by hand: the fields hashed for a default run are the pre-switch ones."""
    import hashlib
    import json

    data = SimpleNamespace(index={"size": 64})
    params = SegmentParams(**SWITCHES)
    grid_lists = {"conditions", "models", "fractions", "seeds", "seeds_by_fraction", "n_boot",
                  "alpha", "boot_seed", "eval_batch_size", "workers"}  # fmt: skip
    unused = {"mixing", "pretrain", "filter"}  # the real condition reads none of them
    keep = params.model_dump(mode="json", exclude=grid_lists | unused | set(SWITCHES))
    blob = {"params": keep, "real": data.index, "synthetic": None}
    old = hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]
    assert fingerprint(params, data, None, parse_condition("real")) == old


def test_stage_reads_the_switches_from_params_yaml(tmp_path, monkeypatch):
    """``gvae segment`` trains with the switches params.yaml sets (no CLI option needed)."""
    from tests.test_segment import SPLITS, write_folder

    real = write_folder(tmp_path / "slices", SPLITS)
    seg = {**TINY, "conditions": ["real+classical"], "fractions": [1.0],
           "augment_backend": "batched", "channels_last": True, "precision": "fp32"}  # fmt: skip
    seg = {k: list(v) if isinstance(v, tuple) else v for k, v in seg.items()}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"segment": seg}))
    used = []
    real_train = train.train_phases
    monkeypatch.setattr(train, "train_phases", lambda ph, p, s: used.append(p) or real_train(
        ph, p, s))  # fmt: skip
    args = argparse.Namespace(params=str(tmp_path / "params.yaml"), slices=real,
                              out=tmp_path / "out", synthetic=[], synthetic_root=None,
                              resume=False)  # fmt: skip
    assert stage.main(args) == 0
    assert [(p.augment_backend, p.channels_last, p.precision) for p in used] == [
        ("batched", True, "fp32")
    ]
