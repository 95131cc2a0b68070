"""Compressed transfer syntaxes (PS3.5 Section 8 and 10): slices of the real patient encoded
with dcmtk (JPEG Lossless, JPEG-LS, RLE, Deflated) and pydicom (JPEG 2000 lossless) read back
to exactly the HU of the uncompressed files.

dcmtk is a test requirement (.ci/run installs it): a missing tool FAILS the test, never skips
it, so a decoder can never silently go untested. Data: Roth et al. 2016,
doi:10.7937/K9/TCIA.2016.tNB1kqBU (CC BY 3.0).
"""

from __future__ import annotations

import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from pipeline.io.dicom_read import read_series
from tests.dicom_variants import link_files, real_series_files, require_tool

pytestmark = pytest.mark.real_data

SLICES = slice(100, 104)  # through the pancreas; 4 slices keep the test fast

# name -> (command line before <in> <out>, transfer syntax it writes)
DCMTK = {
    "jpeg-lossless-sv1": (["dcmcjpeg", "+e1"], JPEGLosslessSV1),
    "jpeg-lossless": (["dcmcjpeg", "+el"], "1.2.840.10008.1.2.4.57"),
    "jpeg-ls-lossless": (["dcmcjpls", "+el"], JPEGLSLossless),
    "rle": (["dcmcrle"], RLELossless),
    "deflated": (["dcmconv", "+td"], DeflatedExplicitVRLittleEndian),
}


@pytest.fixture(scope="module")
def plain(real_data_dir, tmp_path_factory):
    """(the 4 source files, their HU volume read uncompressed)."""
    files = real_series_files(real_data_dir)[SLICES]
    folder = tmp_path_factory.mktemp("plain")
    link_files(files, folder)
    hu, affine, _ = read_series(folder)
    return files, hu, affine


@pytest.mark.parametrize("name", sorted(DCMTK))
def test_dcmtk_encoded_reads_identical_hu(plain, tmp_path, name):
    files, hu, affine = plain
    (tool, *args), syntax = DCMTK[name]
    exe = require_tool(tool)
    for src in files:
        subprocess.run([exe, *args, str(src), str(tmp_path / src.name)], check=True)
    written = pydicom.dcmread(tmp_path / files[0].name, stop_before_pixels=True)
    assert written.file_meta.TransferSyntaxUID == syntax
    got, got_affine, _ = read_series(tmp_path)
    np.testing.assert_array_equal(got, hu)
    np.testing.assert_array_equal(got_affine, affine)


def test_jpeg2000_lossless_reads_identical_hu(plain, tmp_path):
    files, hu, _ = plain
    for src in files:
        ds = pydicom.dcmread(src)
        ds.compress(JPEG2000Lossless)  # pylibjpeg-openjpeg's encoder
        ds.save_as(tmp_path / src.name)
    assert pydicom.dcmread(tmp_path / files[0].name).file_meta.TransferSyntaxUID.is_compressed
    got, _, _ = read_series(tmp_path)
    np.testing.assert_array_equal(got, hu)
