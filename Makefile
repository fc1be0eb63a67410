# Quick start: `make demo` and `make test` (both install what they need).
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: deps deps-vm test lint typecheck unit demo vm-test ha-test images bench bench-quick clean lock dist wheel-test footprint

deps:
	@scripts/install-deps.sh

deps-vm:
	@scripts/install-deps.sh --vm

lint: deps
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	$(PY) scripts/check_paths.py

typecheck: deps
	.venv/bin/mypy

unit: deps
	$(PY) -m pytest -q -m "not vm"

test: deps-vm lint typecheck
	$(PY) -m pytest -q -ra

demo: deps
	$(PY) scripts/demo.py $(if $(KEEP),--keep)

vm-test: deps-vm
	$(PY) -m tests.integration.vm_harness

ha-test: deps
	$(PY) -m tests.integration.ha_harness

# Reproducible OCI images of the KBS and the guest tools, run with runc (root).
images: deps
	$(PY) scripts/images.py

# The performance table: bench/results/latest.{json,png}. BENCH_ARGS=--quick for a few minutes.
bench: deps
	$(PY) -m bench $(BENCH_ARGS)

bench-quick: deps
	$(PY) -m bench --quick

# Regenerate the hash-checked locks (requirements/*.lock.txt) after editing the
# dependencies in pyproject.toml; commit the result.
lock: deps
	scripts/lock.sh

# Wheel + sdist into dist/.
dist: deps
	rm -rf dist
	$(PY) -m build --no-isolation -o dist .

# The built wheel in fresh venvs from the locks: --help of every console
# script, the guest set without server libraries, the demo flow (CI runs it).
wheel-test: deps
	scripts/ci-wheel.sh

# Guest footprint: installed size, AA/CDH start-up and idle RSS, one pull's peak RSS.
footprint: deps
	$(PY) -m bench.guest_footprint

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
