"""Pixel encodings of the real patient's slices: signed and unsigned storage, per-slice rescale,
pixel padding and the outside-field-of-view fill, each re-encoded with pydicom from the mirror
and read back to the same HU (padding to air).

Data: Roth et al. 2016, doi:10.7937/K9/TCIA.2016.tNB1kqBU (CC BY 3.0).
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from pipeline.io.dicom_read import read_series
from tests.dicom_variants import real_series_files, rewrite, set_pixels

pytestmark = pytest.mark.real_data

SLICES = slice(100, 106)  # through the pancreas; 6 slices keep the test fast
AIR = -1000


@pytest.fixture(scope="module")
def plain(real_data_dir):
    """(source files, HU as read from the untouched slices, a corner mask outside the FOV)."""
    files = real_series_files(real_data_dir)[SLICES]
    stack = np.stack([pydicom.dcmread(f).pixel_array.astype(np.int32) for f in files])
    rows, cols = np.mgrid[:512, :512]
    corners = (rows - 255.5) ** 2 + (cols - 255.5) ** 2 > 256.0**2
    return files, stack, corners


def _read(folder, **kw) -> np.ndarray:
    hu, _, _ = read_series(folder, **kw)
    return hu.transpose(2, 1, 0).astype(np.int32)  # back to (k, row, col), instance order


def test_unsigned_storage_with_intercept(plain, tmp_path):
    files, hu, _ = plain

    def edit(ds, i):
        set_pixels(ds, hu[i] + 1024, signed=False)
        ds.RescaleIntercept = -1024

    rewrite(files, tmp_path, edit)
    np.testing.assert_array_equal(_read(tmp_path), hu)


def test_per_slice_rescale_slope_and_intercept(plain, tmp_path):
    files, hu, _ = plain

    def edit(ds, i):
        # Even slices: slope 0.5 (stored = 2 HU), odd: intercept -3024 (stored = HU + 3024).
        if i % 2 == 0:
            set_pixels(ds, hu[i] * 2, signed=True)
            ds.RescaleSlope, ds.RescaleIntercept = 0.5, 0
        else:
            set_pixels(ds, hu[i] + 3024, signed=False)
            ds.RescaleSlope, ds.RescaleIntercept = 1, -3024

    rewrite(files, tmp_path, edit)
    np.testing.assert_array_equal(_read(tmp_path), hu)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_pixel_padding_value_becomes_air(plain, tmp_path, signed):
    files, hu, corners = plain
    # Signed: padding -2000 stored, intercept 0; unsigned: padding 0 stored, intercept -3024.
    pad, offset = (-2000, 0) if signed else (0, 3024)

    def edit(ds, i):
        stored = hu[i] + offset
        stored[corners] = pad
        set_pixels(ds, stored, signed=signed)
        ds.RescaleIntercept = -offset
        ds.add_new(0x00280120, "SS" if signed else "US", pad)  # PixelPaddingValue

    rewrite(files, tmp_path, edit)
    # The threshold off: the padding is found by PixelPaddingValue alone.
    got = _read(tmp_path, outside_fov_below_hu=None)
    expected = np.where(corners, AIR, hu)
    np.testing.assert_array_equal(got, expected)
    assert (got[:, corners] == AIR).all() and got.min() >= -1024


def test_outside_fov_fill_without_padding_attribute(plain, tmp_path):
    files, hu, corners = plain

    def edit(ds, i):
        stored = hu[i].copy()
        stored[corners] = -2000
        set_pixels(ds, stored, signed=True)

    rewrite(files, tmp_path, edit)
    np.testing.assert_array_equal(_read(tmp_path), np.where(corners, AIR, hu))
    # Turned off, the fill stays what the file says: a window would show it as a value.
    assert (_read(tmp_path, outside_fov_below_hu=None)[:, corners] == -2000).all()
