"""Stage ``mnist``: fetch MNIST or Fashion-MNIST, verify it, write ``data.npz`` + ``info.json``.

The sanity-check data sets of the paper. Files come from the publishers' servers, or from a
local folder laid out like them (``DIR/mnist/*.gz``, ``DIR/fashion_mnist/*.gz``) given by
``--mirror``, ``mnist.mirror`` in params or ``$GVAE_DATA_MIRROR``, in that order of precedence.

Every file is checked against the md5 of its *decompressed* content, not of the ``.gz``:
re-compressed copies (mirrors, caches) are byte-identical inside but differ outside.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from common.atomic import write_json, write_npz
from pipeline.io.idx import parse_idx

MIRROR_ENV = "GVAE_DATA_MIRROR"
FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
# md5 of the decompressed IDX bytes, per data set and file name.
MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}
# Publishers' servers, tried in order (yann.lecun.com is often unreachable, hence the S3 copy).
URLS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
DOWNLOAD_TIMEOUT_S = 60.0
IMAGE_SIZE = 28
PADDED_SIZE = 32  # powers of two keep the generators' down/up-sampling stacks exact


class ChecksumError(ValueError):
    """Decompressed content does not match the expected md5."""


def fetch_file(name: str, mirror: Path | None, urls: Sequence[str]) -> tuple[bytes, str]:
    """Return the raw (``.gz``) bytes of ``name`` and where they came from.

    With ``mirror`` the file is read from that folder only; otherwise each URL prefix is tried in
    turn. An ``OSError`` listing every failed source is raised when none works.
    """
    if mirror is not None:
        path = mirror / name
        try:
            return path.read_bytes(), str(path)
        except OSError as exc:
            raise OSError(f"{path}: cannot read mirror copy ({exc.strerror or exc})") from exc
    failures = []
    for prefix in urls:
        url = prefix + name
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                return resp.read(), url
        except (urllib.error.URLError, OSError) as exc:
            failures.append(f"{url}: {getattr(exc, 'reason', exc)}")
    raise OSError(f"{name}: download failed from every source:\n  " + "\n  ".join(failures))


def decompress_and_verify(raw: bytes, name: str, expected_md5: str) -> bytes:
    """Gunzip ``raw`` and check the md5 of the content; ``ChecksumError`` names both sums."""
    try:
        data = gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise ValueError(f"{name}: not a valid gzip file ({exc})") from exc
    got = hashlib.md5(data).hexdigest()
    if got != expected_md5:
        raise ChecksumError(
            f"{name}: md5 of decompressed content is {got}, expected {expected_md5} "
            "(corrupt or wrong file; delete it and fetch again)"
        )
    return data


def fetch_dataset(
    dataset: str,
    mirror: str | os.PathLike | None = None,
    *,
    urls: Sequence[str] | None = None,
    md5: Mapping[str, str] | None = None,
) -> tuple[dict[str, np.ndarray], dict]:
    """Fetch, verify and parse the four IDX files of ``dataset``.

    ``mirror`` is the root of a mirror folder (the data set's subfolder is appended). ``urls``
    replaces the publishers' servers and ``md5`` the published checksum table; both exist for
    serving a small fake data set in tests. There is no way to skip the check: a replacement
    table must still list every file. Returns the arrays (keys of ``FILES``) and provenance.
    """
    if dataset not in MD5:
        raise ValueError(f"unknown dataset '{dataset}' (valid: {', '.join(sorted(MD5))})")
    table = MD5[dataset] if md5 is None else dict(md5)
    folder = Path(mirror) / dataset if mirror is not None else None
    arrays: dict[str, np.ndarray] = {}
    info: dict = {"dataset": dataset, "files": {}}
    for key, name in FILES.items():
        if name not in table:
            raise ValueError(f"{name}: no md5 in the checksum table")
        raw, source = fetch_file(name, folder, URLS[dataset] if urls is None else urls)
        data = decompress_and_verify(raw, source, table[name])
        ndim = 3 if key.startswith("x") else 1
        arrays[key] = parse_idx(data, source, ndim=ndim, dtype_code=0x08)
        info["files"][name] = {"source": source, "md5": table[name]}
    _check_shapes(arrays, dataset)
    return arrays, info


def _check_shapes(arrays: dict[str, np.ndarray], dataset: str) -> None:
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{dataset}: {FILES[f'x_{split}']} has {x.shape[0]} images but "
                f"{FILES[f'y_{split}']} has {y.shape[0]} labels"
            )
        if x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(
                f"{dataset}: {FILES[f'x_{split}']} images are {x.shape[1:]}, not 28x28"
            )
        if y.size and y.max() > 9:
            raise ValueError(f"{dataset}: {FILES[f'y_{split}']} has label {y.max()} > 9")


def to_model_images(x: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 1, 32, 32) in [-1, 1], zero-padded (-1 after scaling)."""
    if x.dtype != np.uint8 or x.ndim != 3:
        raise ValueError(f"expected uint8 (N, H, W) images, got {x.dtype} {x.shape}")
    pad = (PADDED_SIZE - x.shape[1]) // 2
    scaled = x.astype(np.float32) / 127.5 - 1.0
    # Padding with -1 is padding with black, the background value of both data sets.
    out = np.pad(scaled, ((0, 0), (pad, pad), (pad, pad)), constant_values=-1.0)
    return out[:, None]


def load_mnist_split(
    data_dir: str | os.PathLike, split: str, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``split`` ('train'/'test') of ``data_dir/data.npz`` written by this stage.

    Returns images float32 (N, 1, 32, 32) in [-1, 1] and labels int64 (N,), the first ``limit``
    of the split when given. Beware: the MNIST test file is not shuffled; its first 5,000 digits
    come from other writers than the last 5,000 (FID between the halves is ~6x that between
    random halves), so draw a random subset when comparing distributions.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got '{split}'")
    path = Path(data_dir) / "data.npz"
    try:
        with np.load(path) as npz:
            x, y = npz[f"x_{split}"], npz[f"y_{split}"]
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: not found (run `gvae mnist` first)") from exc
    except KeyError as exc:
        raise ValueError(f"{path}: no array {exc} (not written by `gvae mnist`?)") from exc
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return to_model_images(x), y.astype(np.int64)


def resolve_mirror(cli_mirror: str | None, params_mirror: str | None) -> str | None:
    """``--mirror`` beats ``mnist.mirror`` in params, which beats ``$GVAE_DATA_MIRROR``."""
    return cli_mirror or params_mirror or os.environ.get(MIRROR_ENV) or None


def run(params, dataset: str, out_dir: str | os.PathLike, mirror: str | None = None) -> dict:
    """Fetch ``dataset`` and write ``out_dir/data.npz`` + ``out_dir/info.json``; return info."""
    out_dir = Path(out_dir)
    source = resolve_mirror(mirror, params.mirror)
    t0 = time.perf_counter()
    arrays, info = fetch_dataset(dataset, source)
    info["mirror"] = source
    info["shapes"] = {k: list(v.shape) for k, v in arrays.items()}
    info["fetch_seconds"] = round(time.perf_counter() - t0, 2)
    write_npz(out_dir / "data.npz", **arrays)
    write_json(out_dir / "info.json", info)
    return info
