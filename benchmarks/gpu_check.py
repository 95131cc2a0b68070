"""One short GPU run, prepared on CPU: the 128-px benchmarks and the paper profile's CT stages.

    bash benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--budget SECONDS] [--work DIR]
    bash benchmarks/gpu_check.sh --prepare [--python-version 3.12 ...]  # here, with PyPI

``benchmarks/gpu_check.sh`` only picks the interpreter and runs this file; its header and
docs/performance.md (section ``gpu_check.sh``) say what travels and how to run it. One call:

1. installs the wheels of ``benchmarks/gpu_wheels.txt`` from the carried wheel folder, offline,
   unless every one is installed at its pinned version already;
2. probes the machine (torch, CUDA device, a bf16 matrix product's TFLOP/s, nvidia-smi, the
   versions of what the code imports) and each benchmark's ``--help`` for the optional flags;
3. runs ``BENCHMARKS`` (train, generate, segment throughput at 128 px, ``--device cuda``, with
   ``--compare`` where a script has it) on a params file of the ``paper`` profile;
4. runs the CT stages of ``dvc.yaml`` without DVC, in an order it allows (slices -> train_ct ->
   generate -> segment -> ct_features -> ct_quality), with ``PARAMS`` merged over that profile
   (paper widths, few steps), on the 2D Pancreas-CT slices prepared here (``--prepare``);
5. writes every figure to ``$OUT/gpu_check.json`` (``$OUT`` unset: ``gpu_check_out``), the
   raw output of every step to ``$OUT/gpu_check.log``, and prints a summary.

Every step has a time limit and the whole run a budget (``--budget``): a step that fails or
times out records its error and the run goes on. ``--dry-run``: the same on the CPU at 32 px with
a few steps and the default profile's widths, on slices of 12 patients (``--prepare-data
--dry-run``, else made from the data mirror on the spot).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if sys.path[0] == str(Path(__file__).parent):  # run as a script: the root, not benchmarks/,
    sys.path[0] = str(REPO)  # whose common.py would shadow the repository's common package

from benchmarks import gpu_check_lib as lib  # noqa: E402
from benchmarks.gpu_check_stages import (  # noqa: E402
    pairs_source,
    prepare_data,
    slices_figures,
    stage_plan,
    subset_pairs,
    write_params,
)

WHEEL_LIST = REPO / "benchmarks" / "gpu_wheels.txt"
# Imported by the checked code too, but the GPU image has them (scipy alone is a 35 MB wheel):
# checked and recorded by the probe, not carried. Anything else beyond torch and numpy is listed.
FROM_IMAGE = ("scipy", "matplotlib", "pillow")
ENTRY = "benchmarks/gpu_check.py"
# Passed on the GPU to the scripts whose --help lists them: before = today's path, after = the
# switches with torch.compile on (bf16 autocast is already what `auto` gives on CUDA).
OPTIONAL_FLAGS = ("--compare", "--compile")
PEAK_TFLOPS = "989"  # H100 SXM, dense bf16: the reference of train_throughput's MFU
BUDGET_S = {"gpu": 450.0, "dry": 400.0}  # the GPU call must end within 8 minutes
LIMIT_SCALE = {"gpu": 1.0, "dry": 2.0}  # the step limits are the GPU's; a busy CPU gets more
DRY_PAIRS = 12  # dry run: the slices of this many patients of the mirror's pancreas_ct_slices

# (name, script, GPU arguments, dry-run arguments, time limit s): the invocations, in order.
# Every one also gets --device, --params (the run's params file) and --json; on the GPU also
# OPTIONAL_FLAGS as far as the script's --help lists them. One train run per model, so a model
# whose compile or run outlasts its limit costs only its own row.
TRAIN, GENERATE, SEGMENT = (
    f"benchmarks/{n}_throughput.py" for n in ("train", "generate", "segment")
)
TRAIN_GPU = ["--geometries", "128x2", "--batch-size", "0", "--peak-tflops", PEAK_TFLOPS]
TRAIN_DRY = ["--geometries", "32x2", "--batch-size", "4", "--warmup", "1", "--steps", "2"]
BENCHMARKS = (
    ("train:gvae", TRAIN, ["--models", "gvae", *TRAIN_GPU, "--warmup", "3", "--steps", "20"],
     ["--models", "gvae", *TRAIN_DRY], 150),
    ("train:vae", TRAIN, ["--models", "vae", *TRAIN_GPU, "--warmup", "5", "--steps", "50"],
     ["--models", "vae", *TRAIN_DRY], 75),
    ("generate", GENERATE, ["--models", "gvae", "vae", "--sizes", "128", "--n", "256"],
     ["--models", "vae", "--sizes", "32", "--n", "8", "--batch-size", "8"], 60),
    ("segment", SEGMENT, ["--sizes", "128", "--warmup", "3", "--steps", "30"],
     ["--sizes", "32", "--augment", "none", "--warmup", "1", "--steps", "2", "--batch-size", "4"],
     75),
)  # fmt: skip
# The figure of each script's rows that the progress lines show (the JSON holds every column).
RATE_KEYS = {TRAIN: "trainer_img_s", GENERATE: "drawn_s", SEGMENT: "img_s"}


# ----------------------------------------------------------------------------- phases
class Run:
    """One run's settings, report, log, clock and child environment."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.mode = "dry" if args.dry_run else "gpu"
        self.device = "cpu" if args.dry_run else "cuda"
        self.out = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = self.out / "gpu_check.log"
        self.log.write_text("")
        self.work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.deadline = lib.Deadline(args.budget or BUDGET_S[self.mode])
        meta = {"mode": self.mode, "device": self.device, "budget_s": self.deadline.budget_s}
        meta["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.report = lib.Report(self.out / "gpu_check.json", meta)
        self.python = sys.executable
        self.site: Path | None = None  # --target folder when the install fell back to one
        self.traces: dict[str, Path] = {}
        self.short = {str(self.work): "<work>", str(REPO) + "/": "", self.python: "python"}

    def env(self) -> dict[str, str]:
        paths = [str(REPO), *([str(self.site)] if self.site else [])]
        paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), MPLBACKEND="Agg")

    def step(self, name: str, argv: list[str], limit_s: float, trace: bool = True) -> dict:
        """Run one step (through the import trace when ``trace``); print its outcome."""
        if trace:
            self.traces[name] = self.work / "traces" / name.replace(":", "_")
            self.traces[name].parent.mkdir(exist_ok=True)
            argv = [self.python, ENTRY, "--trace", str(self.traces[name]), "--", *argv]
        lib.progress(self.deadline, f"{name} ...")
        limit_s *= LIMIT_SCALE[self.mode]
        result = lib.run_step(name, argv, limit_s, self.deadline, self.log, self.env())
        result["command"] = lib.display(argv, self.short)
        seconds = f" in {result['seconds']:.1f} s" if "seconds" in result else ""
        lib.progress(self.deadline, f"{name}: {result['status']}{seconds}")
        if result["status"] != "ok":
            print(result["error"], flush=True)
        return result


def install(run: Run) -> None:
    """Install the listed wheels that are not installed at their pinned version."""
    pins = lib.read_wheel_list(WHEEL_LIST)
    need = lib.unmet(pins)
    missing = [n for n, v in need.items() if v is None]
    result: dict = {"wheel_list": {n: pins[n] for n in pins}, "unmet": need}
    if not need or (run.args.dry_run and not missing):
        # A dry run uses the local environment as it is (versions that differ are shown).
        result["status"] = "skipped"
    elif not run.args.wheels.is_dir():
        result["status"] = "failed"
        result["error"] = (
            f"{run.args.wheels}: no wheel folder (bash benchmarks/gpu_check.sh --prepare)"
        )
    else:
        reqs = [f"{n}=={pins[n]}" for n in need]
        cmd = lib.install_command(run.python, run.args.wheels, reqs)
        result.update(run.step("install", cmd, 60, trace=False))
        if result["status"] != "ok":  # e.g. a read-only environment: a folder of our own
            run.site = run.work / "site"
            cmd = lib.install_command(run.python, run.args.wheels, reqs, run.site)
            result["fallback"] = run.step("install --target", cmd, 60, trace=False)
            result["status"] = result["fallback"]["status"]
            if result["status"] == "ok":
                sys.path.insert(1, str(run.site))
    importlib.invalidate_caches()
    result["wheel_dir_mib"] = lib.folder_bytes(run.args.wheels) / 2**20
    run.report.put("install", None, result)


def environment(run: Run) -> dict:
    """The probe's findings (an ``error`` entry when it failed)."""
    dest = run.work / "probe.json"
    result = run.step("probe", [run.python, ENTRY, "--probe", str(dest)], 60, trace=False)
    info = json.loads(dest.read_text()) if dest.exists() else {}
    info.update({k: v for k, v in result.items() if k in ("status", "seconds", "error")})
    run.report.put("environment", None, info)
    return info


def benchmarks(run: Run, params: Path, flags: dict[str, list[str]]) -> None:
    """Each benchmark script once; its JSON rows go into the report."""
    for name, script, gpu_args, dry_args, limit in BENCHMARKS:
        dest = run.work / f"bench_{name}.json"
        extra = [] if run.args.dry_run else flags.get(script, [])
        argv = [script, *(dry_args if run.args.dry_run else gpu_args), *extra]
        argv += ["--device", run.device, "--params", str(params), "--json", str(dest)]
        result = run.step(f"bench:{name}", argv, limit)
        result["flags"] = extra
        if dest.exists():
            result.update(json.loads(dest.read_text()))
        if result["status"] == "ok" and not result.get("rows"):
            result.update(status="failed", error="no rows in its --json output")
        for row in result.get("rows", []):
            label = " ".join(str(v) for k, v in row.items() if isinstance(v, str) or k == "size")
            rate = row.get(RATE_KEYS[script], row.get("after_img_s"))  # --compare: the switched
            print(f"    {label}: {RATE_KEYS[script]} = {rate}", flush=True)
        run.report.put("benchmarks", name, result)


def slices_folder(run: Run, params: Path) -> tuple[Path | None, dict]:
    """The real slices the stages read: the folder ``--prepare-data`` wrote for this mode
    (carried to the GPU), else the slices stage's output from the mirror, made now (it needs
    nibabel, which does not travel). Returns (folder, its report entry)."""
    record = run.args.data / "prepared.json"
    prepared = json.loads(record.read_text()) if record.exists() else {}
    if prepared.get("mode") == run.mode:
        folder = run.args.data / "slices"
        entry = {"status": "prepared", **prepared}
        entry["folder_mib"] = lib.folder_bytes(folder) / 2**20
        entry["figures"] = slices_figures(folder)
        return folder, entry
    source = pairs_source()
    if source is None:
        return None, {"status": "failed", "error": "no prepared slices and no data mirror"}
    if run.args.dry_run:
        source = subset_pairs(source, run.work / "pairs", DRY_PAIRS)
    out = run.work / "slices"
    cmd = ["-m", "pipeline.cli", "slices", "--params", str(params), "--input", str(source)]
    entry = run.step("slices", [*cmd, "--out", str(out)], 120)
    if entry["status"] == "ok":
        entry["figures"] = slices_figures(out)
    return out, entry


def stages(run: Run, params: Path, models: list[str]) -> None:
    """The CT stages in dvc.yaml's order; a stage whose input failed is skipped."""
    slices, entry = slices_folder(run, params)
    run.report.put("stages", "slices", entry)
    done = {"slices": entry["status"] in ("ok", "prepared")}
    for stage in stage_plan(models, params, slices, run.work / "ct"):
        if not all(done.get(n) for n in stage.needs):
            result = {"status": "skipped", "error": f"needs {', '.join(stage.needs)}"}
            lib.progress(run.deadline, f"{stage.name}: skipped")
        else:
            result = run.step(stage.name, ["-m", "pipeline.cli", *stage.argv], stage.limit_s)
        if result["status"] == "ok":
            try:
                result["figures"] = stage.figures()
            except (OSError, ValueError, KeyError) as exc:
                result["figures_error"] = f"{type(exc).__name__}: {exc}"
        done[stage.name] = result["status"] == "ok"
        run.report.put("stages", stage.name, result)
    grid = run.work / "ct" / "synthetic" / models[0] / "f1.0" / "grid.png" if models else None
    if grid is not None and grid.exists():
        shutil.copyfile(grid, run.out / "generate_grid.png")  # a look at what 300 steps learnt


def imports(run: Run) -> None:
    """Which distributions the steps imported, against the wheel list and the image's."""
    seen: dict[str, list[str]] = {}
    for name, trace in run.traces.items():
        for dist in trace.read_text().split() if trace.exists() else []:
            seen.setdefault(dist, []).append(name)
    base = lib.requirement_closure(["torch", "numpy"]) | {"gvae-pipeline"}
    listed = set(lib.read_wheel_list(WHEEL_LIST))
    image = lib.requirement_closure(FROM_IMAGE) - base
    beyond = {d: steps for d, steps in seen.items() if d not in base}
    found = {
        "by_distribution": beyond,
        "listed_not_imported": sorted(listed - set(seen)),
        "imported_not_listed": sorted(set(beyond) - listed - image),
        "from_image": sorted(image & set(beyond)),
    }
    run.report.put("imports", None, found)


# Columns of the benchmark rows that the summary prints (the JSON holds every column).
SUMMARY_KEYS = ("img_s", "slices_s", "drawn_s", "ratio", "vs_", "speed", "compile", "fp32")
SUMMARY_KEYS += ("bf16", "peak", "util", "mfu", "tflop")
# Figures of the stages that the summary prints.
STAGE_KEYS = ("size", "train_slices", "test_slices", "img_per_s", "step_s", "peak_memory_mb")
STAGE_KEYS += ("kept", "drawn", "dice", "hd95_mm", "seconds", "fid", "mmd_x1e4")


def _fmt(value) -> str:
    return format(value, ".3g") if isinstance(value, float) else str(value)


def summary(data: dict) -> list[str]:
    """Lines worth printing: per benchmark row its label and headline columns, per stage its
    status, seconds and the first figures; the environment's device and matmul peak."""
    env = data.get("environment", {})
    meta, peak = data["meta"], _fmt(env.get("matmul_bf16_tflops"))
    lines = [
        f"{meta['mode']} run: {meta.get('status')} in {meta.get('seconds', 0):.0f} s on "
        f"{env.get('device', 'cpu')} (torch {env.get('torch')}, bf16 matmul {peak} TFLOP/s)"
    ]
    for name, bench in data.get("benchmarks", {}).items():
        if not bench.get("rows"):
            lines.append(f"bench:{name}: {bench['status']}")
        for row in bench.get("rows", []):
            label = " ".join(str(row[k]) for k in row if isinstance(row[k], str) or k == "size")
            shown = {k: v for k, v in row.items() if any(p in k for p in SUMMARY_KEYS)}
            figures = [f"{k}={_fmt(v)}" for k, v in shown.items() if isinstance(v, int | float)]
            lines.append(f"bench:{name} {label}: {' '.join(figures)}")
    for name, stage in data.get("stages", {}).items():
        figures = stage.get("figures", {})
        parts = (
            figures.items()
            if all(isinstance(v, dict) for v in figures.values())
            else [("", figures)]
        )
        shown = [
            " ".join([part, *(f"{k}={_fmt(v)}" for k, v in fig.items() if k in STAGE_KEYS)])
            for part, fig in parts
        ]
        seconds = stage.get("seconds", stage.get("seconds_here")) or 0
        lines.append(f"{name}: {stage['status']} {seconds:.1f} s; {'; '.join(shown).strip()}")
    return lines


def check(args: argparse.Namespace) -> int:
    """The whole run (see the module docstring); 0 when every section is ok."""
    run = Run(args)
    lib.progress(run.deadline, f"gpu_check ({run.mode}): report {run.report.path}")
    install(run)
    info = environment(run)
    try:
        params, models = write_params(run.mode, run.work / "params.yaml")
    except Exception as exc:  # noqa: BLE001 - nothing else can run; say why and stop
        run.report.put(
            "params", None, {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        )
        params = None
    if params is not None:
        run.report.put("params", None, {"status": "ok", "profile": run.mode, "ct_models": models})
        benchmarks(run, params, info.get("flags", {}))
        stages(run, params, models)
    imports(run)
    data = run.report.data
    sections = [v for k in ("benchmarks", "stages") for v in data.get(k, {}).values()]
    sections += [data["environment"], data["params"]]
    ok = data["install"]["status"] in ("ok", "skipped")
    ok = ok and all(s.get("status") in ("ok", "prepared") for s in sections)
    run.report.data["meta"].update(status="ok" if ok else "partial", seconds=run.deadline.elapsed())
    run.report.save()
    print("\n".join(summary(run.report.data)), flush=True)
    lib.progress(run.deadline, f"done: {run.report.path}")
    if not args.work:
        shutil.rmtree(run.work, ignore_errors=True)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--trace"]:  # internal: run a step and record what it imported
        lib.run_traced(Path(argv[1]), argv[3:])
        return 0
    if argv[:1] == ["--probe"]:  # internal: the environment, in a process of its own
        packages = [*lib.read_wheel_list(WHEEL_LIST), *FROM_IMAGE, "numpy", "torch", "triton"]
        scripts = {script: script for _, script, *_ in BENCHMARKS}
        lib.probe(Path(argv[1]), packages, scripts, OPTIONAL_FLAGS)
        return 0
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dry-run", action="store_true", help="CPU, 32 px, a few steps")
    out = Path(os.environ.get("OUT") or "gpu_check_out")
    p.add_argument("--out", type=Path, default=out, help="default: $OUT, else gpu_check_out")
    p.add_argument("--budget", type=float, help="seconds for the whole run (GPU 450, dry 400)")
    p.add_argument("--work", type=Path, help="keep the stages' outputs here (default: deleted)")
    p.add_argument("--wheels", type=Path, default=REPO / "gpu_check_wheels")
    p.add_argument("--data", type=Path, default=REPO / "gpu_check_data")
    prep = p.add_argument_group("preparation, here (PyPI and the data mirror)")
    prep.add_argument("--prepare", action="store_true", help="--fetch-wheels and --prepare-data")
    prep.add_argument("--fetch-wheels", action="store_true", help="download the wheels to --wheels")
    prep.add_argument(
        "--prepare-data", action="store_true", help="write the slices to --data (of --dry-run)"
    )
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    prep.add_argument(
        "--python-version",
        nargs="+",
        default=[here],
        help=f"CPython version(s) of the wheels (default {here}, this one)",
    )
    args = p.parse_args(argv)
    if args.prepare or args.fetch_wheels:
        lib.fetch_wheels(WHEEL_LIST, args.wheels, args.python_version)
    if args.prepare or args.prepare_data:
        mode = "dry" if args.dry_run else "gpu"
        prepare_data(args.data, mode, DRY_PAIRS if args.dry_run else None)
    if args.prepare or args.fetch_wheels or args.prepare_data:
        size = lib.folder_bytes(args.wheels) + lib.folder_bytes(args.data)
        print(f"carried: {args.wheels.name} + {args.data.name} = {size / 2**20:.1f} MiB")
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
