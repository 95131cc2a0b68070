"""The network units match MONAI's ``Convolution`` exactly, and the model path stays monai-free."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from monai.networks.blocks import Convolution

from models.blocks import ConvUnit

MONAI_NORMS = {
    "batch": "batch",
    "instance": ("instance", {"affine": True}),
    "layer": ("group", {"num_groups": 1}),
    "none": None,
}


@pytest.mark.parametrize(
    ("kernel", "act", "norm", "dropout"),
    [
        (3, "leakyrelu", "layer", 0.3),
        (3, None, "batch", None),
        (3, None, "instance", None),
        (1, None, "none", None),
        (3, "leakyrelu", "none", None),
    ],
)
def test_conv_unit_equals_monai_convolution(kernel, act, norm, dropout):
    torch.manual_seed(0)
    monai_act = ("leakyrelu", {"negative_slope": 0.2}) if act else None
    ref = Convolution(
        2,
        4,
        8,
        kernel_size=kernel,
        act=monai_act,
        norm=MONAI_NORMS[norm],
        dropout=dropout,
        conv_only=act is None and norm == "none",
    )
    mine = ConvUnit(4, 8, kernel, act=act, norm=norm, dropout=dropout)
    # Same module names: MONAI's weights load strictly (this fails on any renamed key).
    mine.load_state_dict(ref.state_dict(), strict=True)
    ref.eval(), mine.eval()
    x = torch.randn(2, 4, 16, 16)
    torch.testing.assert_close(mine(x), ref(x), rtol=0, atol=0)
    # Same layers in the same order (dropout included, which eval mode does not exercise).
    leaves = [(n, type(m)) for n, m in mine.named_modules() if not list(m.children())]
    assert leaves == [(n, type(m)) for n, m in ref.named_modules() if not list(m.children())]


def test_building_a_model_does_not_import_monai():
    code = (
        "import sys; from models.registry import build_model; "
        "build_model('gvae', {'latent_dim': 8, 'width': 4, 'max_width': 8}, channels=2, size=32); "
        "print('monai' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
