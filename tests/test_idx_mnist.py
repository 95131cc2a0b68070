"""IDX parsing, md5 verification, download/mirror paths and the ``gvae mnist`` stage."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import struct
import threading

import numpy as np
import pytest

from pipeline.cli import main as cli_main
from pipeline.io.idx import encode_idx, parse_idx, read_idx
from pipeline.params import loader as config
from pipeline.params.sanity import MnistParams
from pipeline.sanity import data as mnist
from pipeline.sanity.data import (
    FILES,
    ChecksumError,
    decompress_and_verify,
    fetch_dataset,
    load_mnist_split,
)


# ----------------------------------------------------------------------------- IDX parser
@pytest.mark.parametrize(
    "arr",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([3, 1, 4, 1, 5], dtype=np.uint8),
        np.array([[-1.5, 2.25]], dtype=np.float32),
        np.array([-300, 7, 65000], dtype=np.int32),
    ],
)
def test_idx_round_trip(arr):
    out = parse_idx(encode_idx(arr), "x.idx")
    assert out.dtype == arr.dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


def test_idx_header_is_big_endian():
    data = bytes([0, 0, 8, 3]) + struct.pack(">3I", 1, 2, 2) + bytes([0, 1, 2, 255])
    out = parse_idx(data, "img.idx", ndim=3, dtype_code=0x08)
    assert out.shape == (1, 2, 2)
    assert out[0, 1, 1] == 255


GOOD = encode_idx(np.zeros((2, 2, 2), dtype=np.uint8))
BAD_HEADERS = {
    "bad magic": (b"\x1f\x8b" + GOOD[2:], {}, "bad IDX magic"),
    "unknown dtype code": (GOOD[:2] + b"\x07" + GOOD[3:], {}, "unknown IDX dtype code 0x07"),
    "wrong dtype code": (
        encode_idx(np.zeros((2, 2, 2), np.int32)),
        {"dtype_code": 0x08},
        "dtype code 0x0c, expected 0x08",
    ),
    "wrong ndim": (GOOD, {"ndim": 1}, "3 dimension"),
    "truncated header": (GOOD[:9], {}, "truncated IDX header"),
    "truncated payload": (GOOD[:-1], {}, "truncated IDX payload"),
    "trailing bytes": (GOOD + b"\x00", {}, "trailing bytes"),
    "empty": (b"", {}, "too short"),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_bad_idx_names_file_and_problem(tmp_path, case):
    data, expect, message = BAD_HEADERS[case]
    path = tmp_path / "broken-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(data))
    with pytest.raises(ValueError, match=message) as exc:
        read_idx(path, **expect)
    assert str(path) in str(exc.value)


def test_read_idx_rejects_corrupt_gzip(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(GOOD)[:-8])
    with pytest.raises(ValueError, match="gzip") as exc:
        read_idx(path)
    assert str(path) in str(exc.value)


# ----------------------------------------------------------------------------- fake data set
def _fake_dataset(root, n_train=20, n_test=10, n_test_labels=None, name="mnist"):
    """Write a tiny data set in the mirror layout; return its md5 table (decompressed)."""
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(n_test_labels or n_test) % 10).astype(np.uint8),
    }
    folder = root / name
    folder.mkdir(parents=True)
    table = {}
    for key, fname in FILES.items():
        raw = encode_idx(arrays[key])
        (folder / fname).write_bytes(gzip.compress(raw))
        table[fname] = hashlib.md5(raw).hexdigest()
    return arrays, table


def test_md5_mismatch_names_file_and_both_sums():
    raw = b"not the official bytes"
    got = hashlib.md5(raw).hexdigest()
    with pytest.raises(ChecksumError) as exc:
        decompress_and_verify(gzip.compress(raw), "mirror/train-images-idx3-ubyte.gz", "0" * 32)
    msg = str(exc.value)
    assert "train-images-idx3-ubyte.gz" in msg and got in msg and "0" * 32 in msg


def test_mirror_fetch_with_explicit_table(tmp_path):
    arrays, table = _fake_dataset(tmp_path)
    out, info = fetch_dataset("mnist", tmp_path, md5=table)
    for key in FILES:
        np.testing.assert_array_equal(out[key], arrays[key])
    assert all(v["md5"] == table[k] for k, v in info["files"].items())


def test_official_table_rejects_fake_mirror(tmp_path):
    _fake_dataset(tmp_path)
    with pytest.raises(ChecksumError, match="train-images-idx3-ubyte.gz.*6bbc9ace898e44ae"):
        fetch_dataset("mnist", tmp_path)


def test_replacement_table_must_list_every_file(tmp_path):
    _, table = _fake_dataset(tmp_path)
    table.pop("t10k-labels-idx1-ubyte.gz")
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz: no md5"):
        fetch_dataset("mnist", tmp_path, md5=table)


def test_label_count_mismatch_is_an_error(tmp_path):
    _, table = _fake_dataset(tmp_path, n_test=10, n_test_labels=9)
    with pytest.raises(ValueError, match="t10k-images.*10 images.*9 labels"):
        fetch_dataset("mnist", tmp_path, md5=table)


def test_missing_mirror_file_names_path(tmp_path):
    _, table = _fake_dataset(tmp_path)
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(OSError, match="t10k-images-idx3-ubyte.gz"):
        fetch_dataset("mnist", tmp_path, md5=table)


@pytest.fixture
def http_root(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path``; shut down in teardown."""
    handler = functools.partial(
        type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}),
        directory=str(tmp_path),
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_download_falls_back_to_next_server(http_root, monkeypatch):
    root, base = http_root
    arrays, table = _fake_dataset(root, name="fashion_mnist")
    monkeypatch.setattr(mnist, "DOWNLOAD_TIMEOUT_S", 5.0)
    urls = [f"{base}/missing/", f"{base}/fashion_mnist/"]
    out, info = fetch_dataset("fashion_mnist", urls=urls, md5=table)
    np.testing.assert_array_equal(out["x_train"], arrays["x_train"])
    assert info["files"]["t10k-labels-idx1-ubyte.gz"]["source"].startswith(f"{base}/fashion_mnist/")
    # Same server, published md5 table: the fake content is refused, not silently accepted.
    with pytest.raises(ChecksumError, match="f4a8712d7a061bf5bd6d2ca38dc4d50a"):
        fetch_dataset("fashion_mnist", urls=urls)
    with pytest.raises(OSError, match="download failed from every source"):
        fetch_dataset("fashion_mnist", urls=[f"{base}/missing/"], md5=table)


# ----------------------------------------------------------------------------- stage + loader
def _register(monkeypatch, tmp_path, mirror=None):
    monkeypatch.setitem(config.SECTIONS, "mnist", MnistParams)
    p = tmp_path / "params.yaml"
    p.write_text(f"mnist: {{mirror: {json.dumps(str(mirror)) if mirror else 'null'}}}\n")
    return p


def test_stage_reports_md5_failure_through_cli(tmp_path, monkeypatch, capsys):
    _fake_dataset(tmp_path / "mirror")
    params = _register(monkeypatch, tmp_path)
    monkeypatch.setenv(mnist.MIRROR_ENV, str(tmp_path / "mirror"))
    rc = cli_main(["mnist", "--params", str(params), "--dataset", "mnist", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "train-images-idx3-ubyte.gz" in err and "6bbc9ace898e44ae57da46a324031adb" in err
    assert not (tmp_path / "data.npz").exists()


def test_mirror_precedence(monkeypatch):
    monkeypatch.setenv(mnist.MIRROR_ENV, "env")
    assert mnist.resolve_mirror("cli", "params") == "cli"
    assert mnist.resolve_mirror(None, "params") == "params"
    assert mnist.resolve_mirror(None, None) == "env"
    monkeypatch.delenv(mnist.MIRROR_ENV)
    assert mnist.resolve_mirror(None, None) is None


def test_load_split_pads_and_scales(tmp_path):
    x = np.full((3, 28, 28), 255, np.uint8)
    x[:, 0, 0] = 0
    np.savez(tmp_path / "data.npz", x_train=x, y_train=np.array([1, 2, 3], np.uint8))
    images, labels = load_mnist_split(tmp_path, "train", limit=2)
    assert images.shape == (2, 1, 32, 32) and images.dtype == np.float32
    assert labels.dtype == np.int64 and labels.tolist() == [1, 2]
    assert (images[:, :, :2] == -1).all() and (images[:, :, :, -2:] == -1).all()
    assert images[0, 0, 2, 2] == -1.0 and images[0, 0, 2, 3] == 1.0
    with pytest.raises(ValueError, match="split"):
        load_mnist_split(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="data.npz"):
        load_mnist_split(tmp_path / "nowhere", "train")


MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.mark.real_data
@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_real_data_through_cli(real_data_dir, tmp_path, monkeypatch, dataset):
    params = _register(monkeypatch, tmp_path)
    out = tmp_path / "out"
    argv = ["mnist", "--params", str(params), "--dataset", dataset, "--out", str(out)]
    assert cli_main([*argv, "--mirror", str(real_data_dir)]) == 0
    info = json.loads((out / "info.json").read_text())
    assert info["shapes"]["x_train"] == [60000, 28, 28]
    assert info["shapes"]["x_test"] == [10000, 28, 28]
    assert {v["md5"] for v in info["files"].values()} == set(mnist.MD5[dataset].values())
    x, y = load_mnist_split(out, "train")
    xt, yt = load_mnist_split(out, "test")
    assert x.shape == (60000, 1, 32, 32) and xt.shape == (10000, 1, 32, 32)
    assert x.min() == -1.0 and x.max() == 1.0
    counts = np.bincount(y, minlength=10).tolist()
    assert len(counts) == 10 and min(counts) > 5000
    assert np.bincount(yt).sum() == 10000 and len(np.bincount(yt)) == 10
    if dataset == "mnist":
        assert counts == MNIST_TRAIN_COUNTS
    else:
        assert counts == [6000] * 10 and np.bincount(yt).tolist() == [1000] * 10
