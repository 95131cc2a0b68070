# Two commands set up a fresh machine (Python >= 3.10):
#   make repro   install into .venv, build the offline `dvc plots show` page, then `dvc repro`
#                on the embedded default, then `dvc push` when a default DVC remote is set
#   make test    install into .venv (+ the Debian tools the tests use, + the OHIF viewer), then
#                lint and run the tests
# Both are idempotent: a second run reinstalls nothing unless pyproject.toml changed.
#
# torch: with no torch in .venv, $(TORCH) is installed (the CPU build by default). GPU users keep
# their CUDA build either way:
#   make repro TORCH="torch --index-url https://download.pytorch.org/whl/cu126"
# or install it first (python3 -m venv .venv && .venv/bin/pip install <your torch>), which make
# then leaves alone; or reuse a system-wide torch with VENV_ARGS=--system-site-packages.

PYTHON ?= python3
VENV ?= .venv
VENV_ARGS ?=
TORCH ?= torch==2.13.0
PYTEST_ARGS ?= -n 2 -rs

BIN := $(abspath $(VENV))/bin
RUN := PATH="$(BIN):$$PATH"
STAMP := $(VENV)/.installed
# .dvc/config's plots.html_template: without it `dvc plots show` fails ("has to contain
# '{plot_divs}'"), so `make repro` builds it.
PLOTS_PAGE := docs/plots/build/dvc_plots.html

.PHONY: install system plots-template viewer repro test gpu-check-prep

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x "$(BIN)/python" || $(PYTHON) -m venv $(VENV_ARGS) "$(VENV)"
	"$(BIN)/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
	@"$(BIN)/python" -c "import torch" 2>/dev/null \
	  || "$(BIN)/python" -m pip install --quiet --disable-pip-version-check $(TORCH)
	"$(BIN)/python" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@# rt-utils (dev) requires the PyPI `dataclasses` backport for Python 3.6; its dataclasses.py
	@# in site-packages shadows the standard library for a process started there (Prefect's
	@# ephemeral API server), which then fails on `dataclass(slots=True)`. The standard library
	@# has it since 3.7, so the backport goes.
	"$(BIN)/python" -m pip uninstall --quiet --disable-pip-version-check -y dataclasses
	@touch "$@"

# Debian packages the tests need (validator, dcmtk, Orthanc, Chromium, npm); only what is missing.
system:
	@bash .ci/system-deps

# The offline page for `dvc plots show` (vega, vega-lite, vega-embed inlined; npm the first time).
# `plots-template` always rebuilds it; `make repro` builds it once per clone, again when the pins
# change. Without npm `make repro` warns and runs the DAG anyway: the stages do not need the page.
plots-template: install
	$(RUN) gvae plots-template

$(PLOTS_PAGE): $(STAMP) docs/plots/package.json docs/plots/package-lock.json
	@$(RUN) gvae plots-template || echo "make: warning: $(PLOTS_PAGE) not built (see above), \
	so \`dvc plots show\` will fail until \`make plots-template\` succeeds" >&2

# The OHIF viewer of `gvae view` (docs/export.md): @ohif/app's prebuilt dist/, pinned by
# docs/ohif/package.json + package-lock.json, into docs/ohif/node_modules (npm the first time,
# then only when the pin changes). `make viewer` always checks it and fails without it (`make
# test` needs it for the viewer test); `make repro` installs it once per clone and pin, and
# without npm warns and runs the DAG anyway (the stages do not need the viewer).
VIEWER := docs/ohif/node_modules/.gvae-viewer
VIEW_INSTALL := gvae view --install-only

viewer: install
	$(RUN) $(VIEW_INSTALL)

$(VIEWER): $(STAMP) docs/ohif/package.json docs/ohif/package-lock.json
	@$(RUN) $(VIEW_INSTALL) && touch "$@" || echo "make: warning: the OHIF viewer is not \
	installed (see above), so \`gvae view\` will fail until \`make viewer\` succeeds" >&2

# With a default DVC remote (README: "Sharing runs"), the finished run is pushed to it.
repro: install $(PLOTS_PAGE) $(VIEWER)
	$(RUN) dvc repro
	@if $(RUN) dvc remote default >/dev/null 2>&1; then $(RUN) dvc push; \
	else echo "make: no default DVC remote, nothing pushed (dvc remote add -d NAME URL)"; fi

test: install system viewer
	$(RUN) ruff check common pipeline models tests benchmarks
	$(RUN) python -m pytest $(PYTEST_ARGS)

# What the GPU check carries (benchmarks/gpu_check.sh, docs/performance.md): the wheels of
# benchmarks/gpu_wheels.txt for CPython $(GPU_PYTHON) (default: this one's) and the 128-px slices.
GPU_PYTHON ?=
gpu-check-prep: install
	$(RUN) bash benchmarks/gpu_check.sh --prepare $(if $(GPU_PYTHON),--python-version $(GPU_PYTHON))
