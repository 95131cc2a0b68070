#!/usr/bin/env bash
# gpu_check.sh: one short GPU run, prepared on CPU (docs/performance.md, section gpu_check.sh).
#
# On a GPU machine that has PyTorch (CUDA) and numpy but nothing else of this project and no
# network, one call of under 8 minutes (budget 450 s, every step with its own time limit):
#   installs the carried wheels offline (benchmarks/gpu_wheels.txt from gpu_check_wheels/),
#   probes the GPU, runs benchmarks/{train,generate,segment}_throughput.py at 128 px with
#   --device cuda (and --compare where a script has it), then the paper profile's CT stages
#   (slices -> train_ct -> generate -> segment -> ct_features -> ct_quality, 300 steps each)
#   on the real 2D Pancreas-CT slices carried in gpu_check_data/, and writes every figure to
#   $OUT/gpu_check.json and the raw output to $OUT/gpu_check.log ($OUT unset: gpu_check_out/).
#   A failing or hanging step records its error in the JSON and the run goes on.
#
# Usage:
#   bash benchmarks/gpu_check.sh --prepare --python-version 3.11 3.12   # here: wheels + slices
#   bash benchmarks/gpu_check.sh                     # there; carry gpu_check_wheels gpu_check_data
#   bash benchmarks/gpu_check.sh --dry-run           # CPU, 32 px, a few steps (about 90 s)
#   bash benchmarks/gpu_check.sh --help              # every option
#
# --prepare = --fetch-wheels (pip download of the list's binary wheels for Linux x86_64
# CPython --python-version, default this interpreter's; the GPU image's python3 is 3.12) and
# --prepare-data (the slices stage at 128 px from $GVAE_DATA_MIRROR/pancreas_ct_slices).
# The interpreter is $PYTHON (default python3); the work itself is benchmarks/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a python <<<"${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
exec "${python[@]}" benchmarks/gpu_check.py "$@"
