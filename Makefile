# Quick start: `make demo` and `make test` (both install what they need).
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: deps deps-vm test lint typecheck unit demo vm-test ha-test images bench clean

deps:
	@scripts/install-deps.sh

deps-vm:
	@scripts/install-deps.sh --vm

lint: deps
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

typecheck: deps
	.venv/bin/mypy

unit: deps
	$(PY) -m pytest -q -m "not vm"

test: deps-vm lint typecheck
	$(PY) -m pytest -q -ra

demo: deps
	$(PY) scripts/demo.py

vm-test: deps-vm
	$(PY) -m tests.integration.vm_harness

ha-test: deps
	$(PY) -m tests.integration.ha_harness

# Reproducible OCI images of the KBS and the guest tools, run with runc (root).
images: deps
	$(PY) scripts/images.py

bench: deps
	$(PY) -m bench

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build *.egg-info
