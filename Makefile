# The two commands of the README: `make demo` and `make test`. Everything else serves them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEBIAN_PACKAGES := dcmtk orthanc dicom3tools nodejs npm

.PHONY: demo test lint typecheck architecture unit integration infrastructure e2e \
        system-deps venv clean cdk-synth cdk-gates benchmarks

demo: system-deps venv
	$(BIN)/python -m imaging_ai.local.demo

test: system-deps venv lint typecheck architecture
	$(BIN)/python -m pytest -q tests

venv: $(STAMP)

# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,cdk]'
	touch $(STAMP)

# DCMTK, Orthanc and dicom3tools are the real DICOM peers; installed when we are root.
system-deps:
	@missing=""; \
	for tool in storescu storescp dciodvfy dsrdump Orthanc node; do \
	  command -v $$tool >/dev/null 2>&1 || [ -x /usr/sbin/$$tool ] || missing="$$missing $$tool"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing Debian packages: $(DEBIAN_PACKAGES)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PACKAGES) >/dev/null; \
	  else \
	    echo "missing:$$missing. Run as root, or: sudo apt-get install -y $(DEBIAN_PACKAGES)"; exit 1; \
	  fi; \
	fi

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

architecture: venv
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .local-run cdk/cdk.out .mypy_cache .ruff_cache .pytest_cache
