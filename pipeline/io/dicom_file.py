"""Open a DICOM file by content, the same way for the header pass and the pixel pass.

PS3.10 7.1: a DICOM file starts with a 128-byte preamble and "DICM", then the File Meta
Information (group 0002) that names the transfer syntax. Some archives write the data set
without the preamble, and some without group 0002 as well; pydicom reads those only with
``force=True``. Both passes of the series reader go through ``read_dicom``, so a file is read
the same way by both, or refused by both for one reason (the pixel pass once refused what the
header pass had accepted, "Use force=True").

pydicom reports what it cannot convert through Python's ``warnings`` ("Invalid value for VR
DS: 'abc'", pixel data longer than the header says). ``library_warnings`` captures them per
file: value warnings are dropped, because ``dicom_validate`` checks every value the reader
uses and names the file and the attribute itself; any other warning becomes a note naming the
file, which the caller turns into the case's warning. Nothing reaches stderr raw.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

_SIGNATURE_AT = 128  # PS3.10 7.1: "DICM" follows the 128-byte preamble
# pydicom's message for a value that does not match its VR (pydicom.valuerep.validate_value).
_VALUE_WARNING = re.compile(r"^(Invalid value for VR|The value length \(\d+\) exceeds)")


def has_signature(path: Path) -> bool:
    """Return whether ``path`` carries the PS3.10 "DICM" signature after its preamble: a file
    that claims to be DICOM, so one that does not parse is damaged, not something else."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SIGNATURE_AT + 4)
    except OSError:
        return False
    return head[_SIGNATURE_AT:] == b"DICM"


def _set_transfer_syntax(ds: Dataset) -> None:
    """Give a data set read without group 0002 the transfer syntax pydicom decoded it with,
    so that ``pixel_array`` decodes it as the header pass read it."""
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    if implicit:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def read_dicom(path: Path, *, stop_before_pixels: bool) -> Dataset:
    """Return the data set of ``path``: a PS3.10 file, or a bare data set without preamble
    (read with ``force=True`` and given the transfer syntax it was decoded with).

    Raises ``InvalidDicomError`` when the file is neither (nothing parses as a data element)
    and whatever pydicom raises for damaged content (truncated elements, bad lengths).
    """
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        pass
    ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
    if len(ds) == 0:
        raise InvalidDicomError(f"{path}: no DICOM data element")
    _set_transfer_syntax(ds)
    return ds


@contextmanager
def library_warnings(notes: list[str], source: Path | str) -> Iterator[None]:
    """Capture the ``warnings`` raised inside the block; append each one other than a value
    warning or a ``ResourceWarning`` to ``notes`` as "<source>: <message>" (once per message)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for item in caught:
        message = str(item.message)
        # A ResourceWarning is raised when the garbage collector finalizes an object some other
        # code leaked (a TemporaryDirectory, an open file): it can fire inside any block and says
        # nothing about the file being read.
        if issubclass(item.category, ResourceWarning) or _VALUE_WARNING.match(message):
            continue
        note = f"{source}: {message}"
        if note not in notes:
            notes.append(note)
