"""IDX files, the format MNIST and Fashion-MNIST are published in.

Format (LeCun et al., "The MNIST database", file-format section): a 4-byte magic number
``0x00 0x00 TT NN`` where ``TT`` is the element type code and ``NN`` the number of dimensions,
then ``NN`` big-endian uint32 sizes, then the elements in C order, big-endian. MNIST images are
``0x00000803`` (uint8, 3 dims), labels ``0x00000801`` (uint8, 1 dim).

Every error names the file, because a corrupt download is the usual cause and the user has to
know which file to fetch again.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

# Type code -> big-endian numpy dtype, as listed by the format description.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(
    data: bytes,
    name: str,
    *,
    ndim: int | None = None,
    dtype_code: int | None = None,
) -> np.ndarray:
    """Decode the bytes of one (decompressed) IDX file into a native-endian array.

    ``name`` is only used in error messages. ``ndim``/``dtype_code`` pin what the caller
    expects (MNIST images: 3 and 0x08); a mismatch is a ``ValueError``, as are a bad magic
    number, an unknown type code and a payload shorter or longer than the header promises.
    """
    if len(data) < 4:
        raise ValueError(f"{name}: too short for an IDX header ({len(data)} bytes)")
    zero, code, nd = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise ValueError(
            f"{name}: bad IDX magic number 0x{int.from_bytes(data[:4], 'big'):08x} "
            "(the first two bytes must be zero; is the file still gzip-compressed?)"
        )
    if code not in IDX_DTYPES:
        raise ValueError(f"{name}: unknown IDX dtype code 0x{code:02x}")
    if dtype_code is not None and code != dtype_code:
        raise ValueError(f"{name}: IDX dtype code 0x{code:02x}, expected 0x{dtype_code:02x}")
    if ndim is not None and nd != ndim:
        raise ValueError(f"{name}: IDX file has {nd} dimension(s), expected {ndim}")
    header = 4 + 4 * nd
    if len(data) < header:
        raise ValueError(f"{name}: truncated IDX header ({len(data)} of {header} bytes)")
    dims = struct.unpack(f">{nd}I", data[4:header])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    payload = len(data) - header
    if payload < expected:
        raise ValueError(
            f"{name}: truncated IDX payload: {payload} bytes, header {tuple(dims)} needs {expected}"
        )
    if payload > expected:
        raise ValueError(
            f"{name}: {payload - expected} trailing bytes after the IDX payload {tuple(dims)}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    # Native byte order and an owned, writable copy: frombuffer views are read-only.
    return arr.astype(dtype.newbyteorder("="))


def encode_idx(arr: np.ndarray) -> bytes:
    """Encode ``arr`` as IDX bytes (the inverse of :func:`parse_idx`); used to write fixtures."""
    arr = np.asarray(arr)
    for code, dtype in IDX_DTYPES.items():
        if arr.dtype.newbyteorder(">") == dtype:
            dims = struct.pack(f">{arr.ndim}I", *arr.shape)
            return struct.pack(">HBB", 0, code, arr.ndim) + dims + arr.astype(dtype).tobytes()
    raise ValueError(f"dtype {arr.dtype} has no IDX type code")


def read_idx(path: str | os.PathLike, **expect: int | None) -> np.ndarray:
    """Read an IDX file (``.gz`` is decompressed) and parse it; errors name ``path``."""
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: not a valid gzip file ({exc})") from exc
    return parse_idx(raw, str(path), **expect)
