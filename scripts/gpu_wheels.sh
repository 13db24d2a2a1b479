#!/usr/bin/env bash
# Builds gpu-wheels/ (ignored by git; `make gpu-wheels`): what a lent GPU machine (Python 3.12, its own PyTorch and
# transformers, no network) needs beyond them to run scripts/gpu_check.sh, and MANIFEST.tsv, the install order and
# rules that scripts/gpu_check.py follows (always --no-deps --no-index, into a throwaway --target folder):
#   always      our wheel, then the pure-Python test tools and loaders the checks import (pytest and its
#               dependencies, pytest-timeout, webdataset, braceexpand); they shadow any copy the machine has
#   if-missing  binary wheels for CPython 3.12 (Pillow, pycocotools), installed only where the machine lacks them
# Nothing here is torch, transformers, numpy or a CUDA library: the machine's own stay in charge. At most 60 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${GPU_WHEELS_DIR:-gpu-wheels}
PY=${PYTHON:-.venv/bin/python}
GPU_PYTHON=${GPU_PYTHON_VERSION:-3.12}
ABI="cp${GPU_PYTHON/./}"
MAX_MIB=60
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CONSTRAINT=""  # wheels for another interpreter: the CPU pins do not apply

STAGE="$OUT.tmp"
rm -rf "$STAGE"
mkdir -p "$STAGE/always" "$STAGE/if-missing"

# Our wheel, from the working tree (setuptools from the main venv, no build isolation, nothing downloaded).
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$STAGE/always" . >"$LOG" 2>&1 || { cat "$LOG"; exit 1; }
rm -rf build

# The pure-Python tools, at the versions the main venv tests with (their own dependencies named explicitly).
version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
PURE=()
for dist in pytest pluggy iniconfig pygments pytest-timeout webdataset braceexpand; do
  PURE+=("$dist==$(version "$dist")")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp \
  --abi "$ABI" --abi none --platform manylinux_2_28_x86_64 --platform any -d "$STAGE/always" "${PURE[@]}" \
  2> >(grep -v "is ignored" >&2)

# Binary wheels for the machine's CPython, only used where it lacks them (the main venv's versions; pycocotools at
# most the main venv's, the newest with a manylinux wheel for that CPython).
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp \
  --abi "$ABI" --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$STAGE/if-missing" "pillow==$(version pillow)" "pycocotools<=$(version pycocotools)" \
  2> >(grep -v "is ignored" >&2)

# MANIFEST.tsv: wheel (relative to the folder), distribution, rule; ours first.
{
  echo "# wheel	distribution	rule   (scripts/gpu_check.py installs in this order, --no-deps --no-index)"
  for rule in always if-missing; do
    # ours first, then the rest in name order
    for wheel in $(ls "$STAGE/$rule" | grep '^videorefer'; ls "$STAGE/$rule" | grep -v '^videorefer' | sort -f); do
      dist=$(echo "$wheel" | cut -d- -f1 | tr '_' '-' | tr 'A-Z' 'a-z')
      printf '%s/%s\t%s\t%s\n' "$rule" "$wheel" "$dist" "$rule"
    done
  done
} > "$STAGE/MANIFEST.tsv"

SIZE_KIB=$(du -sk "$STAGE" | cut -f1)
if [ "$SIZE_KIB" -gt $((MAX_MIB * 1024)) ]; then
  echo "error: $STAGE is $((SIZE_KIB / 1024)) MiB, above the $MAX_MIB MiB a GPU machine can carry" >&2
  exit 1
fi
rm -rf "$OUT"
mv "$STAGE" "$OUT"
echo "gpu-wheels: $(grep -vc '^#' "$OUT/MANIFEST.tsv") wheels, $((SIZE_KIB / 1024)) MiB in $OUT/ (python $GPU_PYTHON)"
