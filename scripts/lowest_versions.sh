#!/usr/bin/env bash
# CI's lowest-versions step (`make test-lowest`): .venv-lowest/ holds the project with the LOWEST torch and
# transformers that pyproject.toml declares (`torch>=X`, `transformers>=Y`; tokenizers as that transformers asks;
# every other pin as in constraints.txt), and the model and training tests (tests/model) run there on the CPU, so
# an API difference shows here and not in a GPU machine's minutes. PyPI has no CPU build of an older torch: its
# CUDA build (about 3 GB with the NVIDIA libraries) is installed and runs on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=${LOWEST_VENV:-.venv-lowest}
read -r TORCH TRANSFORMERS < <("$PYTHON" - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
low = {m[1]: m[2] for d in deps if (m := re.match(r"(torch|transformers)>=([0-9.]+)", d.replace(" ", "")))}
print(low["torch"], low["transformers"])
PY
)
export PIP_DISABLE_PIP_VERSION_CHECK=1
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
# tokenizers too: the lowest transformers picks its own (5.6 asks for <=0.23.0, the main pin is 0.23.x).
grep -v -E '^(torch|transformers|tokenizers)[=<>! ]' constraints.txt > "$CONSTRAINTS"
printf 'torch==%s\ntransformers==%s\n' "$TORCH" "$TRANSFORMERS" >> "$CONSTRAINTS"
export PIP_CONSTRAINT="$CONSTRAINTS"
want="torch==$TORCH transformers==$TRANSFORMERS $(sha1sum pyproject.toml constraints.txt | cut -c1-12 | tr '\n' ' ')"
if [ ! -f "$VENV/.stack" ] || [ "$(cat "$VENV/.stack")" != "$want" ]; then
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel 2> >(grep -v "is ignored" >&2)
  "$VENV/bin/python" -m pip install -q "torch==$TORCH" "transformers==$TRANSFORMERS" 2> >(grep -v "is ignored" >&2)
  "$VENV/bin/python" -m pip install -q -e ".[dev]" 2> >(grep -v "is ignored" >&2)
  echo "$want" > "$VENV/.stack"
fi
"$VENV/bin/python" -c "import torch as o, transformers as t; print('lowest: torch', o.__version__, 'transformers', \
  t.__version__)"
started=$(date +%s)
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/model "$@"
echo "lowest-versions tests: $(( $(date +%s) - started )) s"
