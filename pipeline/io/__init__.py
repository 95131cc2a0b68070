"""File formats: DICOM series, NIfTI volumes, IDX arrays, atomic writes."""
