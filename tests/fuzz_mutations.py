"""Single mutations of the fuzz base case (``fuzz_case``): the file and geometry families.

Each mutation edits one copy of the base case and returns the texts its outcome must name: for
"refused" the error (or one of its problem lines) holds them all, for "warned" the warning. A
text is usually "<file>: <Attribute> '<value as written>'", the file, the attribute and the
value on one line. "same" means written byte-identical to the unmutated case, no warning. The
pixel and identity families are in ``fuzz_pixel_mutations``, the label family in
``fuzz_label_mutations``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pydicom

from tests.fuzz_case import (
    Case,
    bare_dataset,
    edit,
    set_raw,
    truncate,
    without_preamble,
)

EXPECTS = ("same", "warned", "refused")


@dataclass(frozen=True)
class Mutation:
    """One mutation: what it does to a case, what must follow, under which params."""

    name: str
    family: str
    expect: str
    mutate: Callable[[Case], list[str]]
    params: dict = field(default_factory=dict)


MUTATIONS: list[Mutation] = []


def mutation(family: str, expect: str, **params) -> Callable:
    """Register the decorated function as a mutation named after it."""
    assert expect in EXPECTS

    def register(fn: Callable[[Case], list[str]]) -> Callable[[Case], list[str]]:
        MUTATIONS.append(Mutation(fn.__name__, family, expect, fn, params))
        return fn

    return register


def raw(case: Case, index: int, keyword: str, text: str) -> list[str]:
    """Write ``text`` as ``keyword`` of slice ``index``; the line that must name it."""
    set_raw(case.files[index], keyword, text)
    return [f"{case.files[index]}: {keyword} '{text}'"]


def raw_all(case: Case, keyword: str, text: str) -> list[str]:
    for path in case.files:
        set_raw(path, keyword, text)
    return [f"{case.files[0]}: {keyword} '{text}'"]


# ----------------------------------------------------------------------------- file
@mutation("file", "refused")
def first_slice_cut_inside_header(c):
    truncate(c.files[0], 700)
    return [str(c.files[0])]


@mutation("file", "refused")
def last_slice_cut_inside_header(c):
    truncate(c.files[-1], 1100)
    return [str(c.files[-1])]


@mutation("file", "refused")
def middle_slice_cut_inside_header(c):
    truncate(c.files[3], 900)
    return [str(c.files[3]), "missing slice"]


@mutation("file", "refused")
def first_slice_cut_inside_its_series_uid(c):
    # The header parses up to the cut: a CT image of a series of its own, without geometry.
    uid = pydicom.dcmread(c.files[0], stop_before_pixels=True).SeriesInstanceUID
    truncate(c.files[0], c.files[0].read_bytes().index(uid.encode()) + 20)
    return [f"{c.files[0]}: CT header without ImagePositionPatient", "cut short"]


@mutation("file", "refused")
def first_slice_cut_inside_preamble(c):
    truncate(c.files[0], 100)
    return [f"{c.files[0]}: not a DICOM file"]


@mutation("file", "refused")
def last_slice_emptied(c):
    truncate(c.files[-1], 0)
    return [str(c.files[-1])]


@mutation("file", "warned", damaged_members="warn")
def first_slice_cut_with_damaged_members_warn(c):
    truncate(c.files[0], 700)
    return [str(c.files[0]), "ingest.damaged_members: warn"]


@mutation("file", "refused")
def pixel_data_cut(c):
    truncate(c.files[2], c.files[2].stat().st_size - 5000)
    return [f"{c.files[2]}: truncated pixel data"]


@mutation("file", "same")
def text_file_beside_the_slices(c):
    (c.series / "notes.txt").write_text("scanner log: nothing to see here\n")
    return []


@mutation("file", "same")
def binary_junk_beside_the_slices(c):
    (c.series / "Thumbs.db").write_bytes(np.random.default_rng(0).bytes(3000))
    return []


@mutation("file", "same")
def hidden_file_beside_the_slices(c):
    (c.series / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" * 50)
    return []


@mutation("file", "same")
def dangling_symlink_and_loop(c):
    os.symlink(c.series / "gone.dcm", c.series / "1-999.dcm")
    os.symlink(c.series, c.series / "loop")
    return []


@mutation("file", "same")
def one_slice_without_preamble(c):
    without_preamble(c.files[1])
    return []


@mutation("file", "same")
def every_slice_without_preamble(c):
    for path in c.files:
        without_preamble(path)
    return []


@mutation("file", "same")
def one_slice_as_bare_data_set(c):
    bare_dataset(c.files[2])
    return []


@mutation("file", "same")
def one_slice_in_a_subfolder(c):
    (c.series / "more").mkdir()
    shutil.move(c.files[4], c.series / "more" / c.files[4].name)
    return []


@mutation("file", "refused")
def one_slice_stored_twice(c):
    shutil.copyfile(c.files[3], c.series / "1-999.dcm")
    return [
        f"{c.series / '1-999.dcm'}: SOPInstanceUID",
        f"also the SOPInstanceUID of {c.files[3].name}",
    ]


@mutation("file", "warned")
def first_slice_deleted(c):
    c.files[0].unlink()
    return ["lie outside the CT grid"]


@mutation("file", "refused")
def middle_slice_deleted(c):
    c.files[4].unlink()
    return ["missing slice", f"{c.files[3]} and {c.files[5]}"]


# ----------------------------------------------------------------------------- geometry
@mutation("geometry", "refused")
def orientation_not_unit_on_one_slice(c):
    return raw(c, 2, "ImageOrientationPatient", "2\\0\\0\\0\\-1\\0") + ["length 2"]


@mutation("geometry", "refused")
def orientation_not_unit_everywhere(c):
    return raw_all(c, "ImageOrientationPatient", "1\\0\\0\\0\\-2\\0") + ["length 2"]


@mutation("geometry", "refused")
def orientation_sheared_everywhere(c):
    return raw_all(c, "ImageOrientationPatient", "1\\0\\0\\0.5\\-0.866025\\0") + [
        "not perpendicular"
    ]


@mutation("geometry", "refused")
def orientation_parallel_everywhere(c):
    return raw_all(c, "ImageOrientationPatient", "1\\0\\0\\1\\0\\0")


@mutation("geometry", "refused")
def orientation_nan_on_one_slice(c):
    return raw(c, 0, "ImageOrientationPatient", "nan\\0\\0\\0\\-1\\0")


@mutation("geometry", "refused")
def orientation_five_values(c):
    return raw(c, 1, "ImageOrientationPatient", "1\\0\\0\\0\\-1") + ["5 value(s)"]


@mutation("geometry", "refused")
def orientation_text(c):
    return raw(c, 1, "ImageOrientationPatient", "a\\b\\c\\d\\e\\f")


@mutation("geometry", "refused")
def spacing_zero_everywhere(c):
    return raw_all(c, "PixelSpacing", "0\\0")


@mutation("geometry", "refused")
def spacing_negative_everywhere(c):
    return raw_all(c, "PixelSpacing", "-0.859375\\-0.859375")


@mutation("geometry", "refused")
def spacing_nan_everywhere(c):
    return raw_all(c, "PixelSpacing", "nan\\nan")


@mutation("geometry", "refused")
def spacing_three_values_on_one_slice(c):
    return raw(c, 3, "PixelSpacing", "0.859375\\0.859375\\1")


@mutation("geometry", "refused")
def spacing_one_value_everywhere(c):
    return raw_all(c, "PixelSpacing", "0.859375")


@mutation("geometry", "refused")
def spacing_text_on_one_slice(c):
    return raw(c, 5, "PixelSpacing", "abc\\0.859375")


@mutation("geometry", "refused")
def spacing_infinite_on_one_slice(c):
    return raw(c, 6, "PixelSpacing", "inf\\0.859375")


@mutation("geometry", "refused")
def position_nan_on_one_slice(c):
    return raw(c, 3, "ImagePositionPatient", "nan\\-171.875\\-123")


@mutation("geometry", "refused")
def position_two_values(c):
    return raw(c, 3, "ImagePositionPatient", "154.6875\\-171.875")


@mutation("geometry", "refused")
def position_text(c):
    return raw(c, 4, "ImagePositionPatient", "abc\\-171.875\\-124")


@mutation("geometry", "refused")
def position_infinite(c):
    return raw(c, 0, "ImagePositionPatient", "154.6875\\-171.875\\-inf")


@mutation("geometry", "refused")
def position_off_the_step(c):
    raw(c, 3, "ImagePositionPatient", "154.6875\\-171.875\\-123.5")
    return [str(c.files[3]), "step 1.5 mm, expected 1 mm"]


@mutation("geometry", "refused")
def position_drifts_sideways(c):
    raw(c, 4, "ImagePositionPatient", "157.6875\\-171.875\\-124")
    return [str(c.files[4]), "gantry tilt"]


@mutation("geometry", "refused")
def two_slices_at_one_position(c):
    raw(c, 4, "ImagePositionPatient", "154.6875\\-171.875\\-123")
    return [str(c.files[3]), str(c.files[4]), "same position"]


@mutation("geometry", "refused")
def every_position_moved_30_mm(c):
    for path in c.files:
        x, y, z = pydicom.dcmread(path).ImagePositionPatient
        edit(path, ImagePositionPatient=[x + 30, y, z])
    return [str(c.label), "beyond the CT volume"]


@mutation("geometry", "same")
def orientation_written_with_decimals(c):
    raw_all(c, "ImageOrientationPatient", "1.000000\\0.000000\\0\\0\\-1.0000\\0")
    return []


@mutation("geometry", "same")
def spacing_written_with_decimals(c):
    raw_all(c, "PixelSpacing", "0.8593750\\0.85937500")
    return []


_IOP = "ImageOrientationPatient"
for _name, _keyword, _text, _where in (
    ("instance_rule_orientation_not_unit", _IOP, "1\\0\\0\\0\\-2\\0", None),
    ("instance_rule_orientation_sheared", _IOP, "1\\0\\0\\0.5\\-0.866025\\0", None),
    ("instance_rule_spacing_negative", "PixelSpacing", "-0.859375\\-0.859375", None),
    ("instance_rule_spacing_zero", "PixelSpacing", "0\\0", None),
    ("instance_rule_position_nan", "ImagePositionPatient", "nan\\-171.875\\-123", 3),
):  # fmt: skip
    # The same checks guard label_geometry: instance, which never looks at the label's affine.
    def _instance(c, keyword=_keyword, text=_text, where=_where):
        return raw_all(c, keyword, text) if where is None else raw(c, where, keyword, text)

    _instance.__name__ = _name
    mutation("geometry", "refused", label_geometry="instance")(_instance)


@mutation("geometry", "same", label_geometry="instance")
def instance_rule_unmutated(c):
    return []
