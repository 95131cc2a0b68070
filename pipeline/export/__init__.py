"""DICOM export of synthetic CT sets: image + SEG datasets, the privacy gate, PACS delivery.

``dicom_set`` builds the datasets (pure: arrays and identities in, pydicom datasets out),
``privacy`` decides which synthetic slices may leave (the near-copy gate), ``pacs`` sends files
with C-STORE and records each outcome, ``receipt`` assembles and reads the JSON receipt. The
stage ``pipeline.export.run`` does the file I/O. The design choices are in docs/export.md.
"""
