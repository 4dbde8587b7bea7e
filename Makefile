# Two set-up commands on a fresh machine: `make demo` and `make test`.
# Everything runs from the project's own virtualenv; torch stays pinned to the CPU wheel.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
ARTIFACTS ?= artifacts
PYTEST_ARGS ?=
export PYTHONSAFEPATH := 1

.PHONY: install lint system-deps demo test serve bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Dependencies and the project, installed once and again only when pyproject.toml or the
# constraints change. The project install is editable and exact (it maps `predilect` to this
# checkout and nothing else), so pytest, subprocesses and tritonserver's Python-backend stubs
# all import the one copy under predilect/.
$(VENV)/.deps: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt hatchling editables
	$(PIP) install -q -c constraints.txt --no-build-isolation -e '.[train,serve,dicom,report,bench,test,dev]'
	@$(PY) -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') and not torch.version.cuda else f'torch {v} (cuda {torch.version.cuda}) was pulled in; expected the 2.13.0 CPU wheel')"
	touch $@

install: $(VENV)/.deps

# Static checks: ruff (lint + format) and mypy, as configured in pyproject.toml.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

demo: install
	$(VENV)/bin/predilect demo --workdir $(ARTIFACTS)

# DCMTK (storescu, img2dcm) is the real DICOM sender the gateway tests use.
system-deps:
	@command -v storescu >/dev/null && command -v img2dcm >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk >/dev/null; }

test: lint system-deps
	$(VENV)/bin/pytest $(PYTEST_ARGS)

serve: install
	$(VENV)/bin/predilect serve --model-repository $(ARTIFACTS)/model_repository

# Concurrency sweep of the served ensemble vs the in-process bound and a FastAPI + PyTorch server,
# on what `make demo` built; writes benchmarks/results/<date>-<machine>.md (about 12 minutes).
bench: install
	$(VENV)/bin/predilect bench --onnx $(ARTIFACTS)/onnx/model.onnx \
		--checkpoint $(ARTIFACTS)/checkpoint/model.safetensors --manifest $(ARTIFACTS)/phantom/manifest.csv

clean:
	rm -rf $(ARTIFACTS) .pytest_cache dist
