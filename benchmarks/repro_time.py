"""Time a whole ``dvc repro`` per stage, against the run-time budget.

    python benchmarks/repro_time.py [--repo DIR] [--budget S] [--json FILE] [TARGET ...]

Runs ``dvc repro [TARGET ...]`` in DIR (default: this checkout), streams its output with the
elapsed seconds in front of every line, then prints one row per stage that ran (seconds from
DVC's "Running stage" line to its "Updating lock file" line), the sum of the stages, the whole
run's wall time (DVC's own hashing and checks included) and whether it stayed within
``--budget`` (default 900 s: the default profile's 15 minutes on 2 CPU cores).

Measure on a fresh clone (``git clone``, then the README's install command) with nothing else
running: a stage that is up to date takes no time, and other jobs on the machine slow every
stage. ``--log FILE`` reads such a stamped log (``<seconds> <dvc line>`` per line, as this
script prints it) instead of running anything.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import common  # noqa: E402

_RUNNING = re.compile(r"Running stage '(?P<stage>[^']+)'")
_STAMPED = re.compile(r"(?P<t>\d+(?:\.\d+)?) (?P<text>.*)")


def stage_seconds(lines: Iterable[tuple[float, str]]) -> list[dict]:
    """Per stage that ran, in order: ``{"stage", "seconds", "status"}``.

    ``lines`` are ``(elapsed seconds, DVC output line)``. A stage runs from its "Running stage"
    line to the next "Updating lock file" line (status "ok"), an "ERROR" line ("failed"), the
    next stage's start, or the end of the output ("unfinished"). A stage that appears twice (a
    resumed run) is one row with both parts added.
    """
    rows: dict[str, dict] = {}
    current: tuple[str, float] | None = None
    last = 0.0

    def close(at: float, status: str) -> None:
        nonlocal current
        if current is not None:
            name, began = current
            row = rows.setdefault(name, {"stage": name, "seconds": 0.0, "status": status})
            row["seconds"] += at - began
            row["status"] = status
            current = None

    for t, text in lines:
        last = t
        started = _RUNNING.search(text)
        if started:
            close(t, "unfinished")
            current = (started["stage"], t)
        elif text.startswith("Updating lock file"):
            close(t, "ok")
        elif text.startswith("ERROR"):
            close(t, "failed")
    close(last, "unfinished")
    return list(rows.values())


def run_dvc(repo: Path, targets: list[str]) -> tuple[list[tuple[float, str]], float, int]:
    """Run ``dvc repro`` in ``repo``, echo its output stamped; return (lines, wall s, rc)."""
    start = time.perf_counter()
    lines = []
    with subprocess.Popen(
        ["dvc", "repro", *targets],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as proc:
        for raw in proc.stdout:
            t = time.perf_counter() - start
            lines.append((t, raw.rstrip("\n")))
            print(f"{t:.0f} {raw}", end="", flush=True)
    return lines, time.perf_counter() - start, proc.returncode


def read_log(path: Path) -> tuple[list[tuple[float, str]], float]:
    """The stamped lines of a log this script printed, and the last stamp (the wall time)."""
    lines = []
    for raw in path.read_text().splitlines():
        m = _STAMPED.match(raw)
        if m:
            lines.append((float(m["t"]), m["text"]))
    return lines, lines[-1][0] if lines else 0.0


def main() -> int:
    p = common.parser(__doc__, REPO)
    p.add_argument("targets", nargs="*", help="dvc repro targets (default: the whole DAG)")
    p.add_argument("--repo", type=Path, default=REPO, help="the checkout to run in")
    p.add_argument("--budget", type=float, default=900.0, help="seconds allowed for the run")
    p.add_argument("--log", type=Path, help="read a stamped log instead of running dvc")
    args = p.parse_args()
    if args.log is not None:
        (lines, wall), rc = read_log(args.log), 0
    else:
        lines, wall, rc = run_dvc(args.repo, args.targets)
    rows = stage_seconds(lines)
    total = sum(r["seconds"] for r in rows)
    for r in rows:
        r["share_pct"] = 100 * r["seconds"] / total if total else None
    what = f"log {args.log}" if args.log else f"`dvc repro {' '.join(args.targets)}` in {args.repo}"
    print(f"\n{what}: {len(rows)} stages ran")
    columns = [
        ("stage", "stage", "s"),
        ("seconds", "seconds", ".0f"),
        ("share %", "share_pct", ".1f"),
        ("status", "status", "s"),
    ]
    common.publish(rows, columns, {"wall_s": wall, "budget_s": args.budget, "rc": rc}, args.json)
    verdict = "within" if wall <= args.budget else "OVER"
    print(
        f"\nsum of stages {total:.0f} s; whole run {wall:.0f} s ({wall / 60:.1f} min, DVC's own "
        f"work {wall - total:.0f} s): {verdict} the {args.budget:.0f} s budget; dvc exit {rc}"
    )
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
