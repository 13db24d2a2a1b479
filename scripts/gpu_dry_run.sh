#!/usr/bin/env bash
# CI's stand-in for a lent GPU machine (`make gpu-dry-run`): .venv-gpu-sim/ is CPython 3.12 with only the machine's
# preinstalled stack (torch 2.11.0, transformers 5.17.0 and their own dependencies: no prefect, no Pillow, no
# pytest), then `make gpu-wheels` and `scripts/gpu_check.sh --cpu-dry-run` with that Python, which installs the
# wheels exactly as on the machine (--target, --no-deps, --no-index) and runs every check on the CPU at tiny sizes.
# PyPI has no CPU build of torch 2.11: its CUDA build (about 3 GB with the NVIDIA libraries) runs on the CPU here.
set -euo pipefail
cd "$(dirname "$0")/.."
MACHINE_TORCH=2.11.0
MACHINE_TRANSFORMERS=5.17.0
VENV=${GPU_SIM_VENV:-.venv-gpu-sim}
PY312=${GPU_SIM_PYTHON:-python3.12}
if ! command -v "$PY312" >/dev/null || ! "$PY312" -c "" 2>/dev/null; then
  PY312=$(ls -d /root/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)
fi
[ -n "$PY312" ] || { echo "error: no python3.12 for the GPU machine stand-in (set GPU_SIM_PYTHON)" >&2; exit 2; }
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CONSTRAINT=""
want="torch==$MACHINE_TORCH transformers==$MACHINE_TRANSFORMERS"
if [ ! -f "$VENV/.stack" ] || [ "$(cat "$VENV/.stack")" != "$want" ]; then
  rm -rf "$VENV"
  "$PY312" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "torch==$MACHINE_TORCH" "transformers==$MACHINE_TRANSFORMERS" \
    2> >(grep -v "is ignored" >&2)
  echo "$want" > "$VENV/.stack"
fi
bash scripts/gpu_wheels.sh
PYTHON="$VENV/bin/python" bash scripts/gpu_check.sh --cpu-dry-run "$@"
