"""Single mutations of the fuzz base case: pixel and identity families (see ``fuzz_mutations``)."""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from tests.fuzz_case import Case, edit, edit_all, set_raw
from tests.fuzz_mutations import mutation, raw


def stored_as(path, stored: np.ndarray, **changes) -> None:
    """Replace the stored values of one slice (and the attributes that describe them)."""
    ds = pydicom.dcmread(path)
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


def offset_storage(c: Case) -> None:
    """Store every slice unsigned with RescaleIntercept -1024 (stored = HU + 1024), as most
    scanners do: the same HU."""
    for path in c.files:
        hu = pydicom.dcmread(path).pixel_array.astype(np.int32)
        stored_as(path, (hu + 1024).astype(np.uint16), PixelRepresentation=0,
                  RescaleIntercept=-1024)  # fmt: skip


# ----------------------------------------------------------------------------- pixel
@mutation("pixel", "refused")
def slope_nan(c):
    return raw(c, 2, "RescaleSlope", "nan")


@mutation("pixel", "refused")
def slope_infinite(c):
    return raw(c, 5, "RescaleSlope", "inf")


@mutation("pixel", "refused")
def slope_zero(c):
    return raw(c, 0, "RescaleSlope", "0")


@mutation("pixel", "refused")
def slope_text(c):
    return raw(c, 7, "RescaleSlope", "abc")


@mutation("pixel", "warned")
def slope_missing_on_one_slice(c):
    edit(c.files[3], RescaleSlope=None)
    return [f"{c.files[3]}: RescaleSlope missing in 1 of 8", "read as 1"]


@mutation("pixel", "warned")
def intercept_missing_on_one_slice(c):
    # The real patient stores signed HU with intercept 0: 0 is right, but it is a default.
    edit(c.files[3], RescaleIntercept=None)
    return [f"{c.files[3]}: RescaleIntercept missing in 1 of 8", "read as 0"]


@mutation("pixel", "refused")
def intercept_nan(c):
    return raw(c, 4, "RescaleIntercept", "nan")


@mutation("pixel", "same")
def unsigned_storage_with_offset(c):
    offset_storage(c)
    return []


@mutation("pixel", "refused")
def offset_storage_one_intercept_missing(c):
    offset_storage(c)
    edit(c.files[2], RescaleIntercept=None)
    return [f"{c.files[2]}: RescaleIntercept ''", "-1024"]


@mutation("pixel", "refused")
def offset_storage_every_intercept_missing(c):
    offset_storage(c)
    edit_all(c, RescaleIntercept=None)
    return [f"{c.files[0]}: RescaleIntercept ''", "no stored value is below 0"]


@mutation("pixel", "same")
def slope_half_with_doubled_values(c):
    for path in c.files:
        hu = pydicom.dcmread(path).pixel_array.astype(np.int16)
        stored_as(path, hu * 2, RescaleSlope=0.5)
    return []


@mutation("pixel", "refused")
def slope_huge(c):
    set_raw(c.files[1], "RescaleSlope", "1000000")
    return [str(c.files[1]), "exceeds int16", "RescaleSlope '1000000'"]


@mutation("pixel", "refused")
def signed_data_read_unsigned(c):
    edit(c.files[6], PixelRepresentation=0)
    return [str(c.files[6]), "exceeds int16", "PixelRepresentation '0'"]


@mutation("pixel", "warned")
def pixel_data_with_excess_padding(c):
    # pydicom drops the 4 bytes with a UserWarning: it becomes the case's warning, not stderr.
    ds = pydicom.dcmread(c.files[4])
    ds.PixelData += b"\0\0\0\0"
    ds.save_as(c.files[4])
    return [f"{c.files[4]}: The pixel data is", "excess padding"]


@mutation("pixel", "refused")
def bits_allocated_8(c):
    edit(c.files[2], BitsAllocated=8, BitsStored=8, HighBit=7)
    return [str(c.files[2]), "BitsAllocated 8"]


@mutation("pixel", "refused")
def bits_stored_above_allocated(c):
    edit(c.files[2], BitsStored=17, HighBit=16)
    return [f"{c.files[2]}: BitsStored '17'"]


@mutation("pixel", "refused")
def high_bit_wrong(c):
    edit(c.files[4], HighBit=3)
    return [f"{c.files[4]}: HighBit '3'"]


@mutation("pixel", "refused")
def rows_differ_on_one_slice(c):
    edit(c.files[5], Rows=64)
    return [str(c.files[5]), "Rows 64"]


@mutation("pixel", "refused")
def rows_halved_everywhere(c):
    edit_all(c, Rows=64)
    return [str(c.files[0]), "Rows 64"]


@mutation("pixel", "refused")
def columns_doubled_everywhere(c):
    edit_all(c, Columns=384)
    return [str(c.files[0]), "truncated pixel data", "Columns 384"]


@mutation("pixel", "refused")
def three_samples_per_pixel(c):
    edit(c.files[1], SamplesPerPixel=3)
    return [f"{c.files[1]}: SamplesPerPixel '3'"]


@mutation("pixel", "refused")
def pixel_data_removed(c):
    edit(c.files[7], PixelData=None)
    return [str(c.files[7]), "PixelData"]


@mutation("pixel", "refused")
def jpeg_syntax_on_native_data(c):
    ds = pydicom.dcmread(c.files[3])
    ds.PixelData = encapsulate([ds.PixelData])  # native values in a JPEG fragment
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(c.files[3], implicit_vr=False, little_endian=True)
    return [str(c.files[3]), f"TransferSyntaxUID '{JPEGBaseline8Bit}'"]


@mutation("pixel", "same")
def one_slice_explicit_vr(c):
    ds = pydicom.dcmread(c.files[2])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(c.files[2], implicit_vr=False, little_endian=True)
    return []


@mutation("pixel", "same")
def one_slice_deflated(c):
    ds = pydicom.dcmread(c.files[4])
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(c.files[4], implicit_vr=False, little_endian=True)
    return []


@mutation("pixel", "same")
def one_slice_rle(c):
    ds = pydicom.dcmread(c.files[5])
    ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.save_as(c.files[5])
    return []


@mutation("pixel", "same")
def monochrome1(c):
    edit(c.files[0], PhotometricInterpretation="MONOCHROME1")
    return []


@mutation("pixel", "same")
def padding_value_not_in_the_data(c):
    for path in c.files:
        ds = pydicom.dcmread(path)
        ds.add_new(0x00280120, "SS", -2000)  # PixelPaddingValue, signed like the data
        ds.save_as(path)
    return []


# ----------------------------------------------------------------------------- identity
@mutation("identity", "refused")
def series_uid_rewritten_on_a_middle_slice(c):
    edit(c.files[3], SeriesInstanceUID=generate_uid())
    return [c.files[3].name, "missing slice"]


@mutation("identity", "refused")
def series_uid_rewritten_on_the_first_slice(c):
    uid = generate_uid()
    edit(c.files[0], SeriesInstanceUID=uid)
    return [f"{c.files[0]}: SeriesInstanceUID '{uid}'", "continues the stack"]


@mutation("identity", "refused")
def series_split_in_halves(c):
    uid = "1.2.826.0.1.3680043.2.1125.9.9"  # sorts after the real UID: the first half is chosen
    for path in c.files[4:]:
        edit(path, SeriesInstanceUID=uid)
    return [f"{c.files[4]}: SeriesInstanceUID '{uid}'", "continues the stack"]


@mutation("identity", "refused")
def series_uid_removed_from_one_slice(c):
    edit(c.files[2], SeriesInstanceUID=None)
    return [str(c.files[2]), "SeriesInstanceUID"]


@mutation("identity", "refused")
def series_uid_removed_everywhere(c):
    edit_all(c, SeriesInstanceUID=None)
    return [str(c.files[0]), "SeriesInstanceUID"]


@mutation("identity", "refused")
def modality_mr_on_one_slice(c):
    edit(c.files[1], Modality="MR")
    return [str(c.files[1]), "Modality is 'MR'"]


@mutation("identity", "refused")
def modality_mr_everywhere(c):
    edit_all(c, Modality="MR")
    return [str(c.folder), "Modality MR, not CT"]


@mutation("identity", "refused")
def instance_number_text(c):
    return raw(c, 5, "InstanceNumber", "x1")


@mutation("identity", "refused")
def instance_number_missing(c):
    edit(c.files[5], InstanceNumber=None)
    return [str(c.files[5]), "InstanceNumber"]


@mutation("identity", "same")
def instance_number_duplicated(c):
    edit(c.files[5], InstanceNumber=125)
    return []


@mutation("identity", "same")
def instance_numbers_reversed(c):
    for i, path in enumerate(c.files):
        edit(path, InstanceNumber=128 - i)
    return []


@mutation("identity", "refused", label_geometry="instance")
def instance_rule_duplicate_instance_number(c):
    edit(c.files[5], InstanceNumber=125)
    return [str(c.label), "InstanceNumbers are not one contiguous run"]


@mutation("identity", "refused")
def patient_id_differs_on_one_slice(c):
    edit(c.files[6], PatientID="PANCREAS_0002")
    return [f"{c.files[6]}: PatientID 'PANCREAS_0002'"]


@mutation("identity", "refused")
def study_uid_differs_on_one_slice(c):
    uid = generate_uid()
    edit(c.files[2], StudyInstanceUID=uid)
    return [f"{c.files[2]}: StudyInstanceUID '{uid}'"]


@mutation("identity", "refused")
def frame_of_reference_differs_on_one_slice(c):
    uid = generate_uid()
    edit(c.files[4], FrameOfReferenceUID=uid)
    return [f"{c.files[4]}: FrameOfReferenceUID '{uid}'"]


@mutation("identity", "refused")
def sop_instance_uid_twice(c):
    uid = pydicom.dcmread(c.files[4]).SOPInstanceUID
    edit(c.files[5], SOPInstanceUID=uid)
    return [f"{c.files[5]}: SOPInstanceUID '{uid}'"]


@mutation("identity", "refused")
def one_slice_marked_localizer(c):
    edit(c.files[2], ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    return [c.files[2].name, "LOCALIZER"]


@mutation("identity", "same")
def patient_name_changed_everywhere(c):
    edit_all(c, PatientName="Anonymous^Patient")
    return []


@mutation("identity", "same")
def series_description_differs_on_one_slice(c):
    edit(c.files[5], SeriesDescription="Pancreas (copy)")
    return []


@mutation("identity", "same")
def series_number_text(c):
    set_raw(c.files[0], "SeriesNumber", "x")
    return []


@mutation("identity", "same")
def sagittal_image_of_another_series_beside(c):
    ds = pydicom.dcmread(c.files[0])
    ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.save_as(c.series / "1-900.dcm")
    return []
