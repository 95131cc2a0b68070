"""Helpers shared by the throughput scripts: timed windows, GPU sampling, tables, JSON.

Not a benchmark itself. The scripts put the repository root on ``sys.path`` (they run as
``python benchmarks/<name>.py``) and import this module as ``from benchmarks import common``:
a bare ``import common`` finds the repository's ``common`` package instead.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from common.atomic import write_json
from models.train.trainer import resolve_device
from pipeline.io.tables import markdown


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so a wall-clock stamp covers what was launched before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _nvidia_smi_id(index: int) -> str:
    # nvidia-smi numbers every GPU of the machine; torch numbers the visible ones
    # (CUDA_VISIBLE_DEVICES). The UUID names the same device in both.
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    return f"GPU-{uuid}" if uuid else str(index)


class GpuSampler:
    """Samples the GPU's utilisation (%) every ``interval`` s in a background thread.

    Reads ``pynvml`` when it is installed, else ``nvidia-smi --query-gpu=utilization.gpu``.
    The driver averages utilisation over its own period (1/6 s to 1 s), so windows shorter than
    about a second give few, coarse samples. ``stop`` returns the mean, or None without samples.
    """

    def __init__(self, device: torch.device, interval: float = 0.2) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read = self._reader(device.index if device.index is not None else 0)

    def _reader(self, index: int) -> Callable[[], float] | None:
        try:
            import pynvml

            pynvml.nvmlInit()
            uuid = _nvidia_smi_id(index)
            handle = (
                pynvml.nvmlDeviceGetHandleByUUID(uuid)
                if uuid.startswith("GPU-")
                else pynvml.nvmlDeviceGetHandleByIndex(index)
            )
            return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:  # noqa: BLE001 - no pynvml or no NVML: fall back to nvidia-smi
            pass
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return None
        cmd = [exe, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        by_id = [*cmd, f"--id={_nvidia_smi_id(index)}"]
        try:
            subprocess.run(by_id, capture_output=True, timeout=5, check=True)
        except (OSError, subprocess.SubprocessError):
            by_id = None  # e.g. a MIG slice: read the index-th line of every GPU instead

        def read() -> float:
            out = subprocess.run(by_id or cmd, capture_output=True, text=True, timeout=5).stdout
            lines = out.strip().splitlines()
            return float(lines[0] if by_id else lines[index])

        return read

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self._read())
            except Exception:  # noqa: BLE001 - a failed sample is missing, not fatal
                pass
            self._stop.wait(self.interval)

    def start(self) -> GpuSampler:
        """Start sampling; returns self."""
        if self._read is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> float | None:
        """Stop sampling; return the mean utilisation in %, None without a sample."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return sum(self.samples) / len(self.samples) if self.samples else None


class Window:
    """One timed window: CUDA is synchronised at both ends, GPU utilisation sampled within.

    ``begin()`` and ``end()`` may be called from inside someone else's loop (the trainer's
    progress-bar iterator); afterwards ``seconds`` and ``gpu_util`` (mean %, None on CPU) hold
    the result and ``ended_at`` the ``perf_counter`` stamp of the end.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: float | None = None
        self.gpu_util: float | None = None
        self.ended_at: float | None = None
        self.began_at: float | None = None
        self._t0 = 0.0
        self._sampler: GpuSampler | None = None

    def begin(self) -> None:
        """Start the clock (after the queued work of the warm-up has finished)."""
        sync(self.device)
        if self.device.type == "cuda":
            self._sampler = GpuSampler(self.device).start()
        self._t0 = self.began_at = time.perf_counter()

    def end(self) -> None:
        """Stop the clock once the queued work of the timed steps has finished."""
        sync(self.device)
        self.ended_at = time.perf_counter()
        self.seconds = self.ended_at - self._t0
        if self._sampler is not None:
            self.gpu_util = self._sampler.stop()


def peak_memory_reset(device: torch.device) -> None:
    """Reset CUDA's peak-allocation counter (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak CUDA memory allocated by tensors since the last reset, in MiB; None on CPU."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def release(device: torch.device) -> None:
    """Return cached CUDA blocks, so one run's peak memory does not include the last run's."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    """What the figures were measured on: torch version, device name, CPU threads."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"torch": torch.__version__, "device": name, "threads": threads}


def fmt(value: Any, spec: str) -> str:
    """``value`` formatted with ``spec``; None (not measured here) becomes ``-``."""
    return "-" if value is None else format(value, spec)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A markdown table of ``rows``; ``columns`` are (header, row key, format spec) triples.

    Columns whose values are None in every row (CUDA-only figures on a CPU run) are left out.
    The table's text ends with a newline.
    """
    shown = [c for c in columns if any(r.get(c[1]) is not None for r in rows)]
    body = [[fmt(r.get(k), spec) for _, k, spec in shown] for r in rows]
    return markdown([h for h, _, _ in shown], body)


def save_json(path: str | Path | None, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Write ``{"meta": meta, "rows": rows}`` atomically to ``path`` (nothing when None)."""
    if path is not None:
        write_json(path, {"meta": meta, "rows": rows})


def add_device_options(
    parser: argparse.ArgumentParser,
    device: str,
    threads_help: str = "torch CPU threads (default: torch's)",
) -> None:
    """``--threads``, ``--device`` (``device`` by default) and ``--seed``: where and how to run."""
    parser.add_argument("--threads", type=int, help=threads_help)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=device)
    parser.add_argument("--seed", type=int, default=0)


_ON_OFF = {"action": argparse.BooleanOptionalAction, "default": None}
SWITCH_FLAGS: dict[str, dict[str, Any]] = {
    "precision": {"choices": ("auto", "fp32", "bf16"), "help": "bf16 needs native bf16"},
    "compile": {**_ON_OFF, "help": "torch.compile"},
    "channels-last": {**_ON_OFF, "help": "NHWC tensors"},
    "augment-backend": {"choices": ("monai", "batched"), "help": "classical augmentation"},
}


def add_switch_options(
    parser: argparse.ArgumentParser, *switches: str, compare: bool = True
) -> None:
    """``--compare`` (per row, today's code path with the switches off and the switched one, in
    one run, and their ratio; left out with ``compare=False``) and an override per switch
    (``SWITCH_FLAGS``: ``--precision``, ``--compile``/``--no-compile``,
    ``--channels-last``/``--no-channels-last``, ``--augment-backend``); an override left out
    means the params' value."""
    if compare:
        parser.add_argument(
            "--compare",
            action="store_true",
            help="per row, today's code path (switches off) and the switched one, and the ratio",
        )
    for name in switches:
        spec = dict(SWITCH_FLAGS[name])
        spec["help"] = f"the switched run's setting: {spec['help']} (default: the params')"
        parser.add_argument(f"--{name}", **spec)


def device_of(args: argparse.Namespace) -> torch.device:
    """Set torch's CPU threads to ``args.threads`` (when given); return ``args.device`` resolved."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return resolve_device(args.device)


def check_steps(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with a usage error unless ``--steps`` >= 1 and ``--warmup`` >= 0."""
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"need --steps >= 1 and --warmup >= 0, got {args.steps}, {args.warmup}")


def parser(doc: str | None, repo: Path) -> argparse.ArgumentParser:
    """The argument parser every benchmark starts from: its docstring as help, ``--params``
    (default ``repo/params.yaml``) and ``--json``."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--params", type=Path, default=repo / "params.yaml")
    p.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    return p


def publish(
    rows: list[dict[str, Any]], columns: Sequence[tuple[str, str, str]], meta: dict, json_path
) -> None:
    """Print the rows as a markdown table (after the caller's title line) and save the JSON."""
    print()
    print(markdown_table(rows, columns), end="")
    save_json(json_path, meta, rows)
