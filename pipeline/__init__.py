"""Data flow of the GVAE augmentation pipeline: config, I/O, stages and the CLI.

Data moves forward only: raw DICOM -> HU volumes -> windowed slices -> models -> ...
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
