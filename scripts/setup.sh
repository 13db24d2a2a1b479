#!/usr/bin/env bash
# Creates .venv/ in the repository root and installs the project for a CPU-only machine.
# Order matters (see ../shared/ENVIRONMENT.md): torch first, every later install constrained.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
export PIP_CONSTRAINT="$PWD/constraints.txt"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev]"
# Test-only: the `sam2` package is the reference the transformers SAM 2 segmenter is checked against
# (tests/agents/backends/test_sam2_equality.py); nothing at run time imports it. Its metadata asks for CUDA torch +
# torchvision; its video predictor needs neither, hence --no-deps (hydra-core and iopath come with the dev extra).
if ! .venv/bin/python -c "import sam2" 2>/dev/null; then
  SAM2_BUILD_CUDA=0 .venv/bin/python -m pip install -q --no-deps --no-build-isolation "sam2==1.1.0"
fi
if [ "${WITH_APP:-1}" = "1" ]; then
  .venv/bin/python -m pip install -q -e ".[app]"
fi
if [ "${WITH_RAY:-0}" = "1" ]; then
  .venv/bin/python -m pip install -q -e ".[ray]"
fi
.venv/bin/python -c "import torch, prefect, transformers, decord, av, webdataset; print('setup ok: torch', torch.__version__, 'prefect', prefect.__version__)"
