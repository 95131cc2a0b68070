"""The DICOM datasets of one synthetic export set: HU images and their pancreas segmentations.

One study per set. Series 1 holds the synthetic slices as CT images (stored value + rescale =
HU, Rescale Type HU) with abdominal VOI window presets, marked synthetic (Synthetic Data YES,
Image Type DERIVED\\SECONDARY, synthesizing equipment) and claiming no acquisition (empty KVP,
Acquisition Number, Patient Position); each image's pancreas mask is one DICOM Segmentation
(highdicom, BINARY) in a series of its own. CT and not Secondary Capture: the SC IOD gained the
Image Plane module only recently, and validators and readers of the older IOD (dicom3tools of
Debian bookworm) reject an SC image's plane.

Geometry without a volume: every image has a full plane (Image Plane module: position,
orientation, pixel spacing, slice thickness), which SEG readers need (dcmqi and OHIF refuse a
SEG without one), but in a Frame of Reference of its own, and every image sits at the same
position. A Frame of Reference is one patient coordinate system, so images in different ones
are not spatially related; and a viewer that stacks by position alone finds no extent between
the slices to reconstruct. So no viewer can build a volume or an MPR across the samples, which
are independent 2D draws. A SEG lives in one Frame of Reference, hence one SEG per image; OHIF
loads one SEG per series, hence one series per SEG. The full reasoning is in docs/export.md.

Everything here is pure: arrays and identities in, pydicom datasets out. Nothing is read from
any real patient's file, so nothing of one can be copied: every identifier is new or fixed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from pipeline.params.export import ExportParams

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
# Stored value = HU + 1024 in 12 unsigned bits, as most CT scanners store HU: every viewer
# handles this pixel format, and the rescale intercept brings the HU back.
HU_OFFSET = 1024
BITS_STORED = 12
IMAGE_SERIES_NUMBER = 1
# The SEG of image k is series SEG_SERIES_BASE + k: viewers list it after the images.
SEG_SERIES_BASE = 100
# The SEG's Recommended Display CIELab Value, given as sRGB: 3D Slicer's colour for the pancreas
# (GenericAnatomyColors). Without one, viewers pick their own (OHIF says so in a warning).
PANCREAS_RGB = (249, 180, 111)
# Every image's plane in its own Frame of Reference: rows run to the patient's left (+x),
# columns posterior (+y), the usual axial display; the slice centre is the origin.
ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# Descriptions and names of VR LO: 64 characters at most (PS3.5 6.2).
LO_MAX = 64
DEIDENTIFICATION_METHOD = "No patient: pixels synthesized by a generative model"


@dataclass(frozen=True)
class Provenance:
    """Who made the pixels: the project and its version, the model and its version."""

    project: str
    project_version: str
    model: str
    model_version: str


@dataclass(frozen=True)
class SetIdentity:
    """The new identifiers shared by every instance of one export set."""

    study_uid: str
    image_series_uid: str
    patient_name: str
    patient_id: str
    study_id: str
    created: dt.datetime


@dataclass(frozen=True)
class Instance:
    """One DICOM instance of the set and the synthetic sample it shows."""

    kind: str  # "image" or "segmentation"
    file: str  # path relative to the export folder
    dataset: Dataset
    draw: int  # the sample's draw number in the synthetic set (its slice_index)
    number: int  # Instance Number, 1-based; an image and its SEG share it


def new_identity(params: ExportParams, created: dt.datetime) -> SetIdentity:
    """Fresh UIDs for a set, with a patient ID and study ID derived from the new Study UID."""
    study_uid = generate_uid()
    tag = hashlib.sha256(study_uid.encode()).hexdigest()[:10].upper()
    return SetIdentity(
        study_uid=study_uid,
        image_series_uid=generate_uid(),
        patient_name=params.patient_name,
        patient_id=f"{params.patient_id_prefix}{tag}",
        study_id=f"SYN{tag}",  # SH: 16 characters at most
        created=created,
    )


def unwindow_hu(x: np.ndarray, level: float, width: float) -> np.ndarray:
    """Hounsfield units of windowed values: the inverse of ``pipeline.cohort.slicing.window_hu``.

    ``window_hu`` maps ``level - width / 2`` to -1 and ``level + width / 2`` to +1 linearly
    (PS3.3 C.11.2.1.2 linear VOI LUT), clipping outside; this maps ``[-1, 1]`` back, so values
    of the training window are exact and clipped ones stay at the window's edges. Returns a new
    float64 array.
    """
    if not (np.isfinite(level) and np.isfinite(width)) or width <= 0:
        raise ValueError(f"window width must be a finite number > 0, got {level=}, {width=}")
    y = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
    return (level - width / 2.0) + (y + 1.0) / 2.0 * width


def hu_to_stored(hu: np.ndarray) -> np.ndarray:
    """Rounded HU as unsigned 12-bit stored values (``HU + HU_OFFSET``), uint16."""
    stored = np.rint(np.asarray(hu, dtype=np.float64)) + HU_OFFSET
    if stored.size and (stored.min() < 0 or stored.max() >= 2**BITS_STORED):
        raise ValueError(
            f"HU {stored.min() - HU_OFFSET:.0f}..{stored.max() - HU_OFFSET:.0f} do not fit "
            f"{BITS_STORED} bits with offset {HU_OFFSET}"
        )
    return stored.astype(np.uint16)


def _da(t: dt.datetime) -> str:
    return t.strftime("%Y%m%d")


def _tm(t: dt.datetime) -> str:
    return t.strftime("%H%M%S")


def synthesizing_equipment(prov: Provenance, created: dt.datetime) -> Dataset:
    """Contributing Equipment item, purpose (109100, DCM, "Synthesizing Equipment")."""
    from highdicom import ContributingEquipment

    return ContributingEquipment(
        manufacturer=prov.project,
        purpose_of_reference=codes.DCM.SynthesizingEquipment,
        manufacturer_model_name=prov.model,
        software_versions=[f"{prov.project} {prov.project_version}", prov.model_version],
        contribution_datetime=created.strftime("%Y%m%d%H%M%S"),
        contribution_description=f"Pixels and mask synthesized by the model {prov.model}",
    )


def _common(ds: Dataset, ident: SetIdentity, prov: Provenance) -> None:
    """Attributes every instance of the set carries, whatever its IOD."""
    ds.SyntheticData = "YES"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    ds.ContributingEquipmentSequence = [synthesizing_equipment(prov, ident.created)]
    ds.ImageComments = "SYNTHETIC: not an image of any real patient; not for diagnosis"
    ds.BodyPartExamined = "ABDOMEN"


def image_plane(ds: Dataset, shape: tuple[int, int], pixel_mm: float) -> None:
    """Set the Frame of Reference and Image Plane modules of one synthetic slice on ``ds``.

    A new Frame of Reference UID (no Position Reference Indicator: no anatomical landmark),
    ``ORIENTATION``, the slice centre at the origin (every slice of a set at the same place),
    Pixel Spacing ``pixel_mm`` and Slice Thickness ``pixel_mm``: a sample has no thickness of
    its own, a cubic voxel is the neutral choice, and SEG readers need a value > 0 to give the
    segmentation a third spacing (dcmqi refuses it otherwise).
    """
    rows, cols = shape
    spacing = format_number_as_ds(float(pixel_mm))
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [format_number_as_ds(v) for v in ORIENTATION]
    # Position = centre of the first pixel: half the field to the right (-x) and anterior (-y).
    ds.ImagePositionPatient = [
        format_number_as_ds(-(cols - 1) / 2 * pixel_mm),
        format_number_as_ds(-(rows - 1) / 2 * pixel_mm),
        "0",
    ]
    ds.PixelSpacing = [spacing, spacing]
    ds.SliceThickness = spacing


def image_dataset(
    hu: np.ndarray,
    number: int,
    ident: SetIdentity,
    prov: Provenance,
    params: ExportParams,
    pixel_mm: float,
) -> FileDataset:
    """One CT image of the 2D HU slice ``hu`` (S, S), rows anterior first.

    Its plane (``image_plane``) lies in a new Frame of Reference of its own, so that no two
    samples share a patient coordinate system (see the module docstring). Patient Orientation
    L\\P labels the image as the plane's orientation does. Pixel Spacing is the training
    slices' spacing.
    """
    if hu.ndim != 2:
        raise ValueError(f"expected one 2D slice, got shape {hu.shape}")
    stored = hu_to_stored(hu)
    t = ident.created
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.InstanceCreationDate, ds.InstanceCreationTime = _da(t), _tm(t)
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, sop_uid
    ds.StudyDate, ds.SeriesDate, ds.ContentDate = _da(t), _da(t), _da(t)
    ds.StudyTime, ds.SeriesTime, ds.ContentTime = _tm(t), _tm(t), _tm(t)
    ds.AccessionNumber = ""
    # CT: the modality the pixels imitate, so viewers offer HU tools and CT presets; Synthetic
    # Data YES, Image Type DERIVED\SECONDARY and the synthesizing equipment say the slices were
    # not acquired, and no acquisition value is given (KVP and Acquisition Number are empty).
    ds.Modality = "CT"
    ds.Manufacturer = prov.project
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = params.study_description
    ds.SeriesDescription = params.series_description
    ds.ManufacturerModelName = prov.model
    ds.DerivationDescription = (
        f"Synthesized by {prov.model} ({prov.model_version}); HU = inverse of the training "
        "window applied to the model output"
    )
    ds.PatientName = ident.patient_name
    ds.PatientID = ident.patient_id
    ds.PatientBirthDate, ds.PatientSex = "", ""  # type 2: a synthetic image has neither
    ds.SoftwareVersions = [f"{prov.project} {prov.project_version}", prov.model_version]
    ds.KVP, ds.AcquisitionNumber = "", ""  # CT Image module, type 2: nothing was acquired
    ds.PatientPosition = ""  # General Series, type 2C: no patient lay on a table
    ds.StudyInstanceUID = ident.study_uid
    ds.SeriesInstanceUID = ident.image_series_uid
    ds.StudyID = ident.study_id
    ds.SeriesNumber = IMAGE_SERIES_NUMBER
    ds.InstanceNumber = number
    ds.PatientOrientation = ["L", "P"]  # rows run to the patient's left, columns posterior
    image_plane(ds, stored.shape, pixel_mm)
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, BITS_STORED, BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = str(-HU_OFFSET)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = [format_number_as_ds(w.level) for w in params.windows]
    ds.WindowWidth = [format_number_as_ds(w.width) for w in params.windows]
    ds.WindowCenterWidthExplanation = [w.name for w in params.windows]
    _common(ds, ident, prov)
    ds.PixelData = stored.tobytes()
    return ds


def seg_series_description(description: str, number: int) -> str:
    """``description`` of the SEG series of image ``number``, numbered, at most 64 characters
    (LO), the word SYNTHETIC kept."""
    tail = f" (image {number})"
    text = description[: LO_MAX - len(tail)] + tail
    return text if "SYNTHETIC" in text.upper() else "SYNTHETIC" + tail


def segmentation_dataset(
    image: Dataset, mask: np.ndarray, ident: SetIdentity, prov: Provenance, params: ExportParams
) -> Dataset:
    """The BINARY DICOM Segmentation (highdicom) of one image's pancreas mask ``(S, S)``.

    The SEG takes the image's Frame of Reference, its plane (Plane Orientation and Plane
    Position functional groups, Pixel Measures with the slice thickness) and references it by
    SOP Instance UID (Derivation Image and Referenced Series Sequences): what dcmqi, highdicom
    and OHIF read. A SEG has one Frame of Reference and each image has its own, hence one SEG
    per image, in a series of its own (series ``SEG_SERIES_BASE`` + Instance Number) because
    OHIF loads one SEG per series. An empty mask (a negative sample) is kept as an empty frame,
    so every image has its SEG.
    """
    import highdicom as hd

    algorithm = hd.AlgorithmIdentificationSequence(
        name=prov.model,
        version=prov.model_version,
        family=codes.cid7162.ArtificialIntelligence,
        source=prov.project,
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Pancreas",
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.Pancreas,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(*PANCREAS_RGB),
    )
    seg = hd.seg.Segmentation(
        source_images=[image],
        pixel_array=np.asarray(mask, dtype=bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=generate_uid(),
        series_number=SEG_SERIES_BASE + int(image.InstanceNumber),
        sop_instance_uid=generate_uid(),
        instance_number=int(image.InstanceNumber),
        manufacturer=prov.project,
        manufacturer_model_name=prov.model,
        software_versions=f"{prov.project} {prov.project_version}",
        device_serial_number=prov.model_version,
        content_description="SYNTHETIC pancreas mask, drawn with the image",
        content_label="PANCREAS",
        series_description=seg_series_description(
            params.seg_series_description, int(image.InstanceNumber)
        ),
        omit_empty_frames=False,
    )
    # highdicom would list the source image's equipment as "Acquisition Equipment"; nothing
    # was acquired, so only the synthesizing item and highdicom's own processing item stay.
    acquisition = codes.DCM.AcquisitionEquipment.value
    processing = [
        item
        for item in seg.ContributingEquipmentSequence
        if item.PurposeOfReferenceCodeSequence[0].CodeValue != acquisition
    ]
    _common(seg, ident, prov)  # sets the sequence to the synthesizing item alone
    seg.ContributingEquipmentSequence = [*seg.ContributingEquipmentSequence, *processing]
    seg.StudyDescription = params.study_description
    seg.PatientOrientation = image.PatientOrientation  # General Image 2C: may be present
    seg.ContentCreatorName = ""  # type 2 (Content Identification): an algorithm, no person
    # highdicom writes a Spacing Between Slices of 1 mm for a single plane, and dcmqi takes it
    # as the third spacing of the label image it writes: the image's thickness instead.
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    measures.SpacingBetweenSlices = image.SliceThickness
    return seg


def build_set(
    images: np.ndarray,
    masks: np.ndarray,
    draws: np.ndarray,
    window: dict,
    pixel_mm: float,
    params: ExportParams,
    prov: Provenance,
    created: dt.datetime,
) -> tuple[SetIdentity, list[Instance]]:
    """Every instance of one set: image ``i`` and its SEG for each ``(N, 1, S, S)`` sample.

    ``images`` are windowed to ``[-1, 1]`` with ``window`` {level, width} (the slices'
    training window), ``masks`` are {0, 1}; ``draws`` are the samples' draw numbers. Returns
    the set's identity and the instances, images first (a PACS then has every referenced image
    before the SEG that points at it).
    """
    images, masks = np.asarray(images), np.asarray(masks)
    if images.ndim != 4 or images.shape[1] != 1 or masks.shape != images.shape:
        raise ValueError(
            f"expected images and masks (N, 1, S, S), got {images.shape}, {masks.shape}"
        )
    if len(draws) != len(images) or len(images) == 0:
        raise ValueError(
            f"need >= 1 sample and one draw number each, got {len(images)}, {len(draws)}"
        )
    if not pixel_mm > 0:
        raise ValueError(f"pixel spacing must be > 0 mm, got {pixel_mm}")
    ident = new_identity(params, created)
    level, width = float(window["level"]), float(window["width"])
    image_instances, seg_instances = [], []
    for i in range(len(images)):
        number = i + 1
        hu = unwindow_hu(images[i, 0], level, width)
        img = image_dataset(hu, number, ident, prov, params, pixel_mm)
        seg = segmentation_dataset(img, masks[i, 0] > 0, ident, prov, params)
        draw = int(draws[i])
        image_instances.append(
            Instance("image", f"dicom/image_{number:04d}.dcm", img, draw, number)
        )
        seg_instances.append(
            Instance("segmentation", f"dicom/seg_{number:04d}.dcm", seg, draw, number)
        )
    return ident, image_instances + seg_instances
