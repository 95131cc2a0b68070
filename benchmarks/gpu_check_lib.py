"""Plumbing of ``benchmarks/gpu_check.py``: timed steps, the JSON report, wheels, import traces.

Standard library only (plus ``common.atomic``, itself standard library only): the driver runs
before the carried wheels are installed, on a machine that has PyTorch and nothing of this
project. Not a benchmark itself.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import platform
import re
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from common.atomic import write_json

REPO = Path(__file__).resolve().parents[1]
RESERVE_S = 15.0  # kept back from every step for the report and the summary
MIN_STEP_S = 10.0  # a step that would get less time than this is skipped
TAIL_LINES = 20  # lines of a failed step's output kept in the report (all of it is in the log)


class Deadline:
    """The whole run's time budget, in seconds from construction."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self._start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def left(self) -> float:
        return self.budget_s - self.elapsed()


class Report:
    """The one JSON file of a run, rewritten atomically whenever a section changes, so a run
    that is killed still leaves every figure measured up to then."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {"meta": meta}

    def put(self, section: str, key: str | None, value: Any) -> None:
        """Set ``data[section][key]`` (or ``data[section]`` when ``key`` is None); save."""
        if key is None:
            self.data[section] = value
        else:
            self.data.setdefault(section, {})[key] = value
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)


def progress(deadline: Deadline, text: str) -> None:
    """One progress line on stdout, stamped with the seconds since the start."""
    print(f"[{deadline.elapsed():5.0f} s] {text}", flush=True)


def display(argv: Sequence[str], replace: dict[str, str]) -> str:
    """``argv`` as one shell-quoted line with long machine paths shortened (``replace``)."""
    line = shlex.join(str(a) for a in argv)
    for long, short in replace.items():
        line = line.replace(long, short)
    return line


def run_step(
    name: str,
    argv: Sequence[str],
    limit_s: float,
    deadline: Deadline,
    log: Path,
    env: dict[str, str],
) -> dict[str, Any]:
    """Run ``argv`` in the repository root with its output appended to ``log``.

    The step gets ``limit_s`` seconds or what the budget leaves, whichever is less; on time-out
    its whole process group is killed. Returns ``status`` (ok, failed, timeout or skipped when
    the budget has too little left), ``seconds``, ``limit_s``, ``rc`` and, unless ok, ``error``
    with the last lines of the step's output.
    """
    left = deadline.left() - RESERVE_S
    if left < MIN_STEP_S:
        return {"status": "skipped", "error": f"out of time: {max(left, 0):.0f} s left"}
    limit = min(limit_s, left)
    with open(log, "a") as out:
        out.write(f"\n===== {name} (limit {limit:.0f} s): {shlex.join(map(str, argv))}\n")
        out.flush()
        start_at = out.tell()
        t0 = time.monotonic()
        proc = subprocess.Popen(
            list(map(str, argv)),
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own group: a time-out kills the workers it started
        )
        try:
            rc = proc.wait(timeout=limit)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
            status = "timeout"
        seconds = time.monotonic() - t0
    result: dict[str, Any] = {"status": status, "seconds": seconds, "limit_s": limit, "rc": rc}
    if status != "ok":
        with open(log) as fh:
            fh.seek(start_at)
            lines = fh.read().splitlines()
        why = f"exit status {rc}" if status == "failed" else f"killed after {limit:.0f} s"
        result["error"] = "\n".join([why, *lines[-TAIL_LINES:]])
    return result


# ----------------------------------------------------------------------------- import traces
def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``PyYAML`` -> ``pyyaml``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_distributions() -> list[str]:
    """The installed distributions whose top-level modules this process has imported."""
    tops = {name.partition(".")[0] for name in list(sys.modules)}
    mapping = metadata.packages_distributions()
    return sorted({canonical(d) for top in tops for d in mapping.get(top, ())})


def run_traced(trace: Path, target: Sequence[str]) -> None:
    """Run ``target`` (``script.py args`` or ``-m module args``) as ``__main__`` in this
    process, then write the distributions it imported to ``trace`` (one per line), also when
    it exits with an error."""
    try:
        if target[0] == "-m":
            sys.argv = [target[1], *target[2:]]
            runpy.run_module(target[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(target)
            runpy.run_path(target[0], run_name="__main__")
    finally:
        trace.write_text("".join(f"{d}\n" for d in imported_distributions()))


def applies(requirement: str) -> bool:
    """Whether a ``Requires-Dist`` line applies here: never for an extra's; a marker is
    evaluated with ``packaging`` when it can be imported, else the line counts."""
    marker = requirement.partition(";")[2].strip()
    if not marker:
        return True
    if "extra" in marker:
        return False
    try:
        from packaging.markers import Marker
    except ImportError:
        return True
    return Marker(marker).evaluate()


def requirement_closure(names: Iterable[str]) -> set[str]:
    """``names`` and every installed distribution they require here, recursively (canonical
    names; see ``applies``). Requirements that are not installed are left out."""
    seen: set[str] = set()
    todo = [canonical(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for req in filter(applies, requires):
            todo.append(canonical(re.match(r"[A-Za-z0-9_.-]+", req).group(0)))
    return seen


# ----------------------------------------------------------------------------- wheels
def read_wheel_list(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file -> {canonical name: version}."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9_.-]*)==([A-Za-z0-9_.+!-]+)", line)
        if match is None:
            raise ValueError(f"{path}:{number}: expected NAME==VERSION, got {line!r}")
        pins[canonical(match.group(1))] = match.group(2)
    return pins


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name``, None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def unmet(pins: dict[str, str]) -> dict[str, str | None]:
    """The pinned distributions not installed at their pinned version: {name: installed}."""
    have = {name: installed_version(name) for name in pins}
    return {name: v for name, v in have.items() if v != pins[name]}


PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def fetch_commands(
    python: str, wheel_dir: Path, versions: Sequence[str], wheel_list: Path
) -> list[list[str]]:
    """One ``pip download`` per Python version: the binary wheels of ``wheel_list`` for Linux
    x86_64 CPython of that version, without their dependencies (the list names each)."""
    return [
        [
            python, "-m", "pip", "download", "--disable-pip-version-check", "--quiet",
            "--only-binary=:all:", "--no-deps", "--implementation", "cp",
            "--python-version", version,
            *(arg for p in PLATFORMS for arg in ("--platform", p)),
            "--dest", str(wheel_dir), "--requirement", str(wheel_list),
        ]
        for version in versions
    ]  # fmt: skip


def install_command(
    python: str, wheel_dir: Path, requirements: Sequence[str], target: Path | None = None
) -> list[str]:
    """``pip install`` of ``requirements`` from ``wheel_dir`` alone (no index); into
    ``target`` (``--target``, dependencies not resolved) when given, else the environment."""
    where = ["--target", str(target), "--no-deps"] if target is not None else []
    return [
        python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
        "--no-index", "--find-links", str(wheel_dir), *where, *requirements,
    ]  # fmt: skip


def folder_bytes(path: Path) -> int:
    """Total size of the files under ``path`` (0 when it does not exist)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


# ----------------------------------------------------------------------------- figures
def numbers(obj: Any) -> dict[str, float]:
    """The numeric (not bool) top-level values of a dict; {} for anything else."""
    if not isinstance(obj, dict):
        return {}
    return {k: v for k, v in obj.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def non_finite(obj: Any, path: str = "") -> list[str]:
    """Paths of the NaN / infinite numbers anywhere inside ``obj`` (nested dicts and lists)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return [path]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in non_finite(v, f"{path}.{k}")]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in non_finite(v, f"{path}[{i}]")]
    return []


def fetch_wheels(wheel_list: Path, wheel_dir: Path, versions: Sequence[str]) -> None:
    """Download the listed wheels for each Python version; print the folder's size."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    for cmd in fetch_commands(sys.executable, wheel_dir, versions, wheel_list):
        print("+", display(cmd, {}), flush=True)
        subprocess.run(cmd, check=True)
    count = len(list(wheel_dir.glob("*.whl")))
    size = folder_bytes(wheel_dir) / 2**20
    print(f"{wheel_dir}: {count} wheels, {size:.1f} MiB (Python {', '.join(versions)})")


# ----------------------------------------------------------------------------- probe
def help_text(script: str) -> str:
    """What ``python SCRIPT --help`` prints, run in this process (imports are shared)."""
    out, argv = io.StringIO(), sys.argv
    try:
        sys.argv = [script, "--help"]
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            runpy.run_path(str(REPO / script), run_name="__main__")
    finally:
        sys.argv = argv
    return out.getvalue()


def matmul_tflops(torch: Any, n: int = 8192, reps: int = 20) -> float:
    """bf16 TFLOP/s of ``reps`` n x n x n matrix products: the device's practical peak."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def probe(
    dest: Path, packages: Sequence[str], scripts: dict[str, str], flags: Sequence[str]
) -> None:
    """Write the environment to ``dest`` as JSON: Python, torch, the CUDA device (with a bf16
    matrix product's TFLOP/s), nvidia-smi, the versions of ``packages``, and which of ``flags``
    each benchmark script (``scripts``: name -> path) lists in its ``--help``."""
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__}
    info["cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info.update(
            device=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_mib=props.total_memory / 2**20,
            multiprocessors=props.multi_processor_count,
            bf16=torch.cuda.is_bf16_supported(),
            matmul_bf16_tflops=matmul_tflops(torch),
        )
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit"
        info["nvidia_smi"] = subprocess.run(
            [smi, query, "--format=csv"], capture_output=True, text=True, timeout=20
        ).stdout.strip()
    info["packages"] = {n: installed_version(n) for n in packages}
    info["flags"], info["help_errors"] = {}, {}
    for name, script in scripts.items():
        try:
            # "--compile, --no-compile" lists its flags with a comma
            words = help_text(script).replace(",", " ").split()
        except Exception as exc:  # noqa: BLE001 - recorded; that benchmark then runs plain
            info["help_errors"][name] = f"{type(exc).__name__}: {exc}"
            words = []
        info["flags"][name] = [f for f in flags if f in words]
    write_json(dest, info)
