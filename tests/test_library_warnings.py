"""``library_warnings`` turns what pydicom warns about a file into notes naming that file, and
nothing else: a ``ResourceWarning`` fired by the garbage collector finalizing an object that
some other code leaked (the clean-clone CI once saw "Implicitly cleaning up <TemporaryDirectory>"
land in a real patient's ingest warning) says nothing about the file and must not be noted.
"""

from __future__ import annotations

import gc
import tempfile
import warnings

from pipeline.io.dicom_file import library_warnings


def test_a_file_warning_is_noted_once_and_a_leaked_finalizer_is_not():
    notes: list[str] = []
    leaked = tempfile.TemporaryDirectory()
    with library_warnings(notes, "case/1-001.dcm"):
        warnings.warn("Expected explicit VR, but found implicit VR", UserWarning, stacklevel=1)
        warnings.warn("Expected explicit VR, but found implicit VR", UserWarning, stacklevel=1)
        del leaked
        gc.collect()  # the TemporaryDirectory's finalizer warns here, inside the block
        warnings.warn("Invalid value for VR DS: 'abc'", UserWarning, stacklevel=1)
    assert notes == ["case/1-001.dcm: Expected explicit VR, but found implicit VR"]


def test_the_leaked_finalizer_does_warn_inside_such_a_block():
    """The case above is real: without the filter the finalizer's warning is caught."""
    leaked = tempfile.TemporaryDirectory()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del leaked
        gc.collect()
    assert any(issubclass(item.category, ResourceWarning) for item in caught), caught
