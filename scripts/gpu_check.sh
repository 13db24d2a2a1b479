#!/usr/bin/env bash
# Every GPU check in one run on a lent GPU machine, ending in ONE JSON line: `make gpu-check`, or
#   bash scripts/gpu_check.sh [--cpu-dry-run] [--wheels DIR] [--budget-s S] [--keep DIR]
# with the machine's own Python (PYTHON, default python3: the one that has its torch and transformers) and
# gpu-wheels/ from `make gpu-wheels` carried with the working tree. What it does: scripts/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
