"""Does a speed switch change what a generator learns? Losses with the switch off and on.

    python benchmarks/switch_losses.py --slices data/slices [--models vae gvae]
        [--switches compile precision=bf16 channels_last=false] [--steps 10] [--threads N]
        [--params params.yaml] [--json FILE]

For each model and switch, ``gvae train`` (``pipeline.stages.train.run``, the stage itself) trains
the CT generator twice on the training split of ``--slices`` (real slices, e.g. the 2D
Pancreas-CT cohort at 128 px), ``--steps`` steps each with every loss logged, from the same seed:
once with the params' trainer settings and once with the switch (``train.<key>=<value>``;
a bare key means ``true``) merged over ``ct.train``. Prints, per model, switch and loss term, the
largest absolute and relative difference over the steps, and the step time of both runs. The
trainer resolves what a switch means on this machine (``precision=bf16`` on a CPU without
native bf16 is fp32), so the table says which precision actually ran.
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import common  # noqa: E402
from models.train import speed  # noqa: E402
from pipeline.stages.train import run as train_stage  # noqa: E402


def switch(text: str) -> tuple[str, object]:
    """``"compile"`` -> ("compile", True); ``"precision=bf16"`` -> ("precision", "bf16")."""
    key, _, value = text.partition("=")
    return key, yaml.safe_load(value) if value else True


def params_with(base: dict, steps: int, over: dict) -> dict:
    """``base`` with ``ct.train`` logging every step of a ``steps``-step run, and ``over``."""
    params = {**base, "ct": {**base.get("ct", {})}}
    every = {"steps": steps, "log_every": 1, "checkpoint_every": steps, "sample_every": steps}
    params["ct"]["train"] = {**(params["ct"].get("train") or {}), **every, **over}
    return params


def losses(run_dir: Path) -> dict[str, list[float]]:
    with open(run_dir / "losses.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in rows[0] if k != "step"}


def train_once(params: dict, model: str, slices: Path, out: Path) -> tuple[dict, float]:
    path = out / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    summary = train_stage(path, model, "pancreas", slices, out / "run", progress=False)
    return losses(out / "run"), summary["step_s"]  # the trainer's own clock of its loop


def compare(model: str, key: str, value, base: dict, args) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        off_dir, on_dir = Path(tmp, "off"), Path(tmp, "on")
        off_dir.mkdir(), on_dir.mkdir()
        off, off_s = train_once(params_with(base, args.steps, {}), model, args.slices, off_dir)
        on, on_s = train_once(params_with(base, args.steps, {key: value}), model, args.slices,
                              on_dir)  # fmt: skip
    ran = value
    if key == "precision":
        ran = speed.resolve_precision(str(value), torch.device("cpu"))
    rows = []
    for term in off:
        a, b = torch.tensor(on[term]), torch.tensor(off[term])
        diff = (a - b).abs()
        rows.append({
            "model": model, "switch": f"{key}={value}", "ran": str(ran), "term": term,
            "steps": args.steps, "max_abs": diff.max().item(),
            "max_rel": (diff / b.abs().clamp_min(1e-3)).max().item(),
            "off_s": off_s, "on_s": on_s,
        })  # fmt: skip
    return rows


COLUMNS = [
    ("model", "model", "s"),
    ("switch", "switch", "s"),
    ("ran as", "ran", "s"),
    ("loss term", "term", "s"),
    ("steps", "steps", "d"),
    ("max |on - off|", "max_abs", ".3g"),
    ("max relative", "max_rel", ".3g"),
    ("s/step off", "off_s", ".2f"),
    ("s/step on", "on_s", ".2f"),
]


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, REPO)
    parser.add_argument("--slices", type=Path, required=True, help="a slices folder (gvae slices)")
    parser.add_argument("--models", nargs="+", default=["vae", "gvae"])
    parser.add_argument("--switches", nargs="+", type=switch, default=[("compile", True)])
    parser.add_argument("--steps", type=int, default=10)
    common.add_device_options(parser, "cpu")
    args = parser.parse_args(argv)
    common.device_of(args)
    base = yaml.safe_load(Path(args.params).read_text())
    rows = []
    for model in args.models:
        for key, value in args.switches:
            print(f"{model} {key}={value} ...", file=sys.stderr, flush=True)
            rows += compare(model, key, value, base, args)
    meta = {**common.environment(torch.device("cpu"), torch.get_num_threads()),
            "slices": str(args.slices)}  # fmt: skip
    print(f"Losses with each switch off and on ({meta['threads']} threads, torch {meta['torch']})")
    common.publish(rows, COLUMNS, meta, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
