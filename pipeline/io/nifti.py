"""NIfTI-1 label loading, label-to-image alignment and deterministic NIfTI writing.

TCIA's Pancreas-CT labels (Roth et al., doi:10.7937/K9/TCIA.2016.tNB1kqBU) are indexed
``label[x, y, k]`` = mask of ``pixel_array[row=y, col=x]`` of the slice whose InstanceNumber is
k + 1. ``align_label`` maps label slices onto the position-sorted image through the instance
numbers, which stays right whether the instance order runs with or against the slice normal.
Ingest uses it only with ``label_geometry: instance``; by default labels are placed by their
affine (``label_geometry.py``), which for TCIA's labels gives the same voxels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
from isal import igzip

from common.atomic import atomic_path

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_CHUNK = 1 << 24


def _why(exc: BaseException) -> str:
    """The exception's message, or its type where it has none (a MemoryError has none)."""
    return str(exc) or type(exc).__name__


@contextmanager
def unreadable_as(path: Path, what: str) -> Iterator[None]:
    """Within it, any exception becomes ``ValueError("<path>: unreadable <what> (why)")``,
    except a ``ValueError`` whose message already starts with ``path``, which passes as it is."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, ValueError) and str(exc).startswith(f"{path}: "):
            raise
        raise ValueError(f"{path}: unreadable {what} ({_why(exc)})") from exc


def _stored_bytes(path: Path, limit: int) -> int:
    """Return how many bytes ``path`` holds once decompressed, counting no further than
    ``limit``: the gzip stream is read in chunks and never held whole."""
    if not path.name.endswith(".gz"):
        return path.stat().st_size
    total = 0
    with igzip.open(path, "rb") as stream:
        while total < limit and (chunk := stream.read(min(_CHUNK, limit - total))):
            total += len(chunk)
    return total


def check_claimed_size(path: Path, img: nib.Nifti1Image, kind: str) -> None:
    """Raise ``ValueError`` naming ``path`` when its header claims more voxel bytes than the
    file holds. Checked before the data are read: nibabel allocates what the header's dim
    field claims, so a damaged dim made ingest allocate 2.2 GB for a 7.9 MB file."""
    header = img.header
    shape = tuple(int(n) for n in header.get_data_shape())
    itemsize = header.get_data_dtype().itemsize
    claimed = int(header.get_data_offset()) + math.prod(shape) * itemsize
    held = _stored_bytes(path, claimed)
    if held < claimed:
        raise ValueError(
            f"{path}: NIfTI {kind} header claims shape {shape} of "
            f"{header.get_data_dtype()} ({claimed} bytes with the header), but the file holds "
            f"{held}: truncated, or a damaged dim field"
        )


def read_volume(path: str | Path, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D NIfTI ``kind`` ("label", "image"); return ``(array in file index order, 4x4
    affine)``, NIfTI scaling applied. A trailing singleton 4th axis is dropped. Raises
    ``ValueError`` naming the file if it is unreadable, holds fewer bytes than its header
    claims (``check_claimed_size``, before anything is allocated) or is not 3D."""
    path = Path(path)
    with unreadable_as(path, f"NIfTI {kind}"):
        img = nib.load(path)
        check_claimed_size(path, img, kind)
        data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: {kind} must be 3D, got shape {data.shape}")
    return data, np.asarray(img.affine, dtype=np.float64)


def load_label(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load a label volume; return ``(uint8 array in file index order, 4x4 affine)``.

    Raises ``ValueError`` naming the file if it is missing, unreadable, not 3D, or holds values
    that are not integers in 0..255.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: label file not found")
    data, affine = read_volume(path, "label")
    return uint8_label(data, path), affine


def uint8_label(data: np.ndarray, path: Path) -> np.ndarray:
    """Return a label image as uint8 (``data`` itself when it is uint8 already); raise
    ``ValueError`` naming ``path`` when it holds values that are not integers in 0..255."""
    if data.dtype == np.uint8:
        return data
    if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
        raise ValueError(f"{path}: label holds non-integer values")
    if data.min() < 0 or data.max() > 255:
        raise ValueError(f"{path}: label values {data.min()}..{data.max()} outside 0..255")
    return data.astype(np.uint8)


def align_label(
    label: np.ndarray, instance_numbers: Sequence[int], shape: Sequence[int]
) -> np.ndarray:
    """Reorder TCIA-convention label slices to the image's k order; return a new uint8 array.

    ``instance_numbers[k]`` is the InstanceNumber of image slice k; label slice j belongs to the
    instance ``min(instance_numbers) + j``. Raises ``ValueError`` if the label shape differs
    from ``shape`` (columns, rows, slices) or the instance numbers are not one contiguous run.
    """
    label = np.asarray(label)
    shape = tuple(int(s) for s in shape)
    if label.shape != shape:
        raise ValueError(
            f"label shape {label.shape} does not match image shape {shape} (columns, rows, slices)"
        )
    inst = np.asarray(instance_numbers, dtype=np.int64)
    if inst.shape != (shape[2],):
        raise ValueError(f"{inst.size} instance numbers for {shape[2]} slices")
    first = int(inst.min())
    if not np.array_equal(np.sort(inst), np.arange(first, first + inst.size)):
        missing = sorted(set(range(first, int(inst.max()) + 1)) - set(inst.tolist()))
        dup = sorted({int(v) for v in inst if np.count_nonzero(inst == v) > 1})
        raise ValueError(
            "InstanceNumbers are not one contiguous run, so label slices cannot be matched "
            f"(missing {missing[:10]}, duplicated {dup[:10]})"
        )
    # Fancy indexing copies, so the caller's array is never a view into ours.
    return np.asfortranarray(label[:, :, inst - first].astype(np.uint8, copy=False))


def write_nifti(dest: str | Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``array`` with ``affine`` (RAS, mm) to ``dest`` atomically; return ``dest``.

    Both qform and sform carry the affine with code 1 (scanner), units mm. A ``.nii.gz`` is
    gzipped with mtime 0 and no embedded name, so equal inputs give byte-identical files (and
    stable DVC hashes), by ISA-L (python-isal's ``igzip``: a standard gzip stream that any
    reader opens).
    """
    dest = Path(dest)
    if not dest.name.endswith(NIFTI_SUFFIXES):
        raise ValueError(f"{dest}: NIfTI file name must end in .nii or .nii.gz")
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    with atomic_path(dest) as tmp:
        if dest.name.endswith(".gz"):
            # Writing dominated ingest (45% of a case). On the real 512x512x240 CT: zlib
            # level 1 took 1.87 s for a 2.09x ratio, zlib 6 8.4 s for 2.12x, ISA-L level 2
            # 0.46 s for 2.02x (benchmarks/ingest.py reports the stage's rate).
            with (
                open(tmp, "wb") as raw,
                igzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=2, mtime=0) as gz,
            ):
                img.to_stream(gz)
        else:
            with open(tmp, "wb") as raw:
                img.to_stream(raw)
    return dest
