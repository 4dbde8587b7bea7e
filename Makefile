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

.PHONY: install system-deps demo test serve bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Heavy dependencies: reinstalled only when pyproject.toml or the constraints change.
$(VENV)/.deps: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt hatchling '.[train,serve,dicom,bench,test]'
	@$(PY) -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') and not torch.version.cuda else f'torch {v} (cuda {torch.version.cuda}) was pulled in; expected the 2.13.0 CPU wheel')"
	touch $@

# The project itself: a quick no-deps reinstall every time, so the venv runs this checkout.
install: $(VENV)/.deps
	$(PIP) install -q --no-deps --no-build-isolation --force-reinstall .

demo: install
	$(VENV)/bin/predilect demo --workdir $(ARTIFACTS)

# DCMTK (storescu, img2dcm) is the real DICOM sender the gateway tests use.
system-deps:
	@command -v storescu >/dev/null && command -v img2dcm >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk >/dev/null; }

test: install system-deps
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
