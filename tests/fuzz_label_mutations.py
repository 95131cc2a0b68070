"""Single mutations of the fuzz base case: the label family (see ``fuzz_mutations``)."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from tests.fuzz_case import label_data, save_label, set_label_dims
from tests.fuzz_mutations import mutation


def _values(c, value: int) -> None:
    data, affine = label_data(c)
    save_label(c, (data * value).astype(np.uint8), affine)


@mutation("label", "refused")
def values_0_2(c):
    _values(c, 2)
    return [str(c.label), "label values [0, 2]"]


@mutation("label", "refused")
def values_0_1_255(c):
    data, affine = label_data(c)
    data = data.astype(np.uint8)
    data[data.shape[0] // 2 :][data[data.shape[0] // 2 :] > 0] = 255
    save_label(c, data, affine)
    return [str(c.label), "label values [0, 1, 255]"]


@mutation("label", "warned", label_values="nonzero")
def values_0_2_read_as_nonzero(c):
    _values(c, 2)
    return [str(c.label), "label values [0, 2] read as pancreas", "ingest.label_values: nonzero"]


@mutation("label", "refused")
def values_scaled_by_scl_slope(c):
    data, affine = label_data(c)
    save_label(c, data.astype(np.uint8), affine, scl_slope=2.0, scl_inter=0.0)
    return [str(c.label), "label values [0, 2]"]


@mutation("label", "same")
def stored_as_int16(c):
    data, affine = label_data(c)
    save_label(c, data.astype(np.int16), affine)
    return []


@mutation("label", "same")
def stored_as_float32(c):
    data, affine = label_data(c)
    save_label(c, data.astype(np.float32), affine)
    return []


@mutation("label", "refused")
def header_claims_huge_dims(c):
    set_label_dims(c, (4000, 4000, 150))
    return [str(c.label), "claims shape (4000, 4000, 150)"]


@mutation("label", "refused")
def gzip_cut_in_half(c):
    raw = c.label.read_bytes()
    c.label.write_bytes(raw[: len(raw) // 2])
    return [str(c.label)]


@mutation("label", "refused")
def float_label_with_nan(c):
    data, affine = label_data(c)
    data = data.astype(np.float32)
    data[0, 0, 0] = np.nan
    save_label(c, data, affine)
    return [str(c.label), "non-integer"]


@mutation("label", "refused")
def negative_values(c):
    data, affine = label_data(c)
    data = data.astype(np.int16)
    data[0, 0, 0] = -1
    save_label(c, data, affine)
    return [str(c.label), "outside 0..255"]


@mutation("label", "warned")
def last_slice_missing(c):
    img = nib.load(c.label)
    nib.save(img.slicer[:, :, :-1], c.label)
    return [str(c.label), "label grid ends at CT k = 6.5"]


@mutation("label", "warned")
def first_slice_missing(c):
    img = nib.load(c.label)
    nib.save(img.slicer[:, :, 1:], c.label)
    return [str(c.label), "label grid ends at CT k = 0.5"]


@mutation("label", "same")
def cropped_in_plane_around_the_organ(c):
    img = nib.load(c.label)
    nib.save(img.slicer[5:180, 10:100, :], c.label)
    return []


@mutation("label", "warned")
def cropped_through_the_organ(c):
    img = nib.load(c.label)
    nib.save(img.slicer[:100, :, :], c.label)
    return [str(c.label), "label grid ends at CT i = 99.5"]


@mutation("label", "warned")
def moved_one_slice(c):
    data, affine = label_data(c)
    affine = affine.copy()
    affine[:3, 3] += affine[:3, 2]  # one slice further along k
    save_label(c, data.astype(np.uint8), affine)
    return [str(c.label), "lie outside the CT grid"]


@mutation("label", "refused")
def voxels_twice_as_large(c):
    data, affine = label_data(c)
    affine = affine.copy()
    affine[:3, :3] *= 2
    save_label(c, data.astype(np.uint8), affine)
    return [str(c.label), "beyond the CT volume"]


@mutation("label", "refused")
def four_dimensional(c):
    data, affine = label_data(c)
    save_label(c, np.stack([data, data], axis=-1).astype(np.uint8), affine)
    return [str(c.label), "must be 3D"]


@mutation("label", "refused")
def empty(c):
    data, affine = label_data(c)
    save_label(c, np.zeros_like(data, dtype=np.uint8), affine)
    return [str(c.label), "no non-zero voxels"]


@mutation("label", "warned")
def flipped_with_its_affine_kept(c):
    data, affine = label_data(c)
    save_label(c, np.ascontiguousarray(data[::-1]).astype(np.uint8), affine)
    return [str(c.label), "not soft tissue"]


@mutation("label", "refused")
def missing(c):
    c.label.unlink()
    return [str(c.label), "label file not found"]


@mutation("label", "same")
def reoriented_to_ras(c):
    img = nib.load(c.label)
    nib.save(nib.as_closest_canonical(img), c.label)
    return []


@mutation("label", "refused", label_geometry="instance")
def instance_rule_label_one_slice_short(c):
    img = nib.load(c.label)
    nib.save(img.slicer[:, :, :-1], c.label)
    return [str(c.label), "does not match image shape"]
