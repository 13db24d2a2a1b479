# The two commands of the README: `make demo` (set up + main job) and `make test`.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt scripts/setup.sh
	bash scripts/setup.sh
	touch $@

demo: setup
	$(VENV)/bin/videorefer demo

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache

# The GPU check (README "GPU check"): wheels for a lent GPU machine, the check itself (run there, with the machine's
# own Python: no setup), its CPU dry run in a stand-in of the machine's stack, and the lowest-versions tests.
.PHONY: gpu-wheels gpu-check gpu-dry-run test-lowest

gpu-wheels: setup
	bash scripts/gpu_wheels.sh

gpu-check:
	bash scripts/gpu_check.sh

gpu-dry-run: setup
	bash scripts/gpu_dry_run.sh

test-lowest:
	bash scripts/lowest_versions.sh
