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

.PHONY: install lint system-deps serve-deps demo test test-unit test-integration test-bench serve bench gpu-check clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Dependencies and the project, installed once and again only when pyproject.toml or the
# constraints change. The project install is editable: a .pth puts the root and each part folder
# (`training/`, `client/`, ...) on sys.path, where the `predilect` namespace's portions live, so pytest,
# subprocesses and tritonserver's Python-backend stubs all import this checkout, edits included.
$(VENV)/.deps: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt hatchling editables
	$(PIP) install -q -c constraints.txt --no-build-isolation -e '.[train,serve,dicom,report,bench,test,dev,deploy]'
	@$(PY) -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') and not torch.version.cuda else f'torch {v} (cuda {torch.version.cuda}) was pulled in; expected the 2.13.0 CPU wheel')"
	touch $@

# NVIDIA's perf_analyzer, the KServe load tool third-party callers use (tests/test_perf_analyzer.py):
# the binary ships in the tritonclient 2.51 wheel (later wheels dropped it), installed apart so the
# project's own tritonclient stays as it is; it links libcudart (PyPI) and libb64 (Debian, system-deps).
PERF_ANALYZER_DIR := $(VENV)/perf-analyzer
$(PERF_ANALYZER_DIR)/.complete: | $(VENV)/bin/python
	$(PIP) install -q --no-deps --target $(PERF_ANALYZER_DIR) tritonclient==2.51.0 'nvidia-cuda-runtime-cu12==12.9.*'
	touch $@

install: $(VENV)/.deps $(PERF_ANALYZER_DIR)/.complete

# Static checks: ruff (lint + format), mypy, the layering contracts (import-linter) and dead code
# (vulture; its reviewed exceptions in vulture_whitelist.py), as configured in pyproject.toml.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/vulture

demo: install serve-deps
	$(VENV)/bin/predilect demo --workdir $(ARTIFACTS)

# DCMTK (storescu, img2dcm, dcmdump) is the real DICOM sender the gateway tests use; dicom3tools' dciodvfy
# validates the SRs against the standard's IODs; nginx is the front `predilect serve` puts before tritonserver
# (serving/predilect/serving/front.py); libb64 is what perf_analyzer links; shellcheck checks the container
# scripts; chromium renders the HTML screening report (Playwright drives it: tests/test_report_browser.py).
system-deps:
	@command -v storescu >/dev/null && command -v img2dcm >/dev/null && command -v shellcheck >/dev/null && \
		command -v dciodvfy >/dev/null && command -v chromium >/dev/null && \
		{ command -v nginx || test -x /usr/sbin/nginx; } >/dev/null && \
		test -e /usr/lib/x86_64-linux-gnu/libb64.so.0d || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk dicom3tools nginx-light \
			libb64-0d shellcheck chromium >/dev/null; }

# What `make serve` needs from the system (nginx): installed when this user may (root, or sudo
# without a password); otherwise said, with how to get it, and `make demo` still runs.
APT_SERVE := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light
serve-deps:
	@{ command -v nginx || test -x /usr/sbin/nginx; } >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && $(APT_SERVE) >/dev/null; \
		elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo apt-get update -qq && sudo $(APT_SERVE) >/dev/null; \
		else echo "make: nginx is missing and this user cannot install system packages; ask for" \
			"'apt-get install nginx-light' (or run 'make system-deps' as root) before 'make serve'," \
			"or serve without the front: .venv/bin/predilect serve --max-request-mb 0" >&2; fi; }

# The test lanes (tests/conftest.py marks them from the fixtures each test uses; README "Tests").
# `make test` is what CI runs: lint, then the unit and integration lanes (the gpu tests skip
# without a GPU); the bench lane, the long variants of the benchmark and learning tests, runs apart.
test: lint system-deps
	$(VENV)/bin/pytest -m "not bench" $(PYTEST_ARGS)

test-unit: install system-deps
	$(VENV)/bin/pytest -m unit $(PYTEST_ARGS)

test-integration: install system-deps
	$(VENV)/bin/pytest -m "integration and not bench" $(PYTEST_ARGS)

test-bench: install system-deps
	$(VENV)/bin/pytest -m bench $(PYTEST_ARGS)

serve: install serve-deps
	$(VENV)/bin/predilect serve --model-repository $(ARTIFACTS)/model_repository

# The CPU profile side by side, on what `make demo` built: preprocessing vs the decode floor, the
# in-process bound, the Triton ensemble (both layouts, FP32 and gated INT8), FastAPI + PyTorch and
# BentoML; writes benchmarks/results/cpu-profile/<date>-<machine>.md (benchmarks/results/README.md says
# where older runs go). Sub-benchmarks: `predilect bench --help`.
bench: install
	$(VENV)/bin/predilect bench --onnx $(ARTIFACTS)/onnx/model.onnx \
		--checkpoint $(ARTIFACTS)/checkpoint/model.safetensors --manifest $(ARTIFACTS)/phantom/manifest.csv \
		--out benchmarks/results/cpu-profile

# On a CUDA host only: a separate virtualenv with the CUDA torch build (constraints-gpu.txt),
# the serving container's TensorRT series (the `gpu` extra; checked by versions_cli --bindings) and
# cuda-python; then every `gpu`-marked test (kernel on CUDA in fp32/fp16/bf16, the AOT PTX through
# TensorRT, engine build + accuracy gate, DALI mixed vs dali_cpu under the legacy executor), then
# the kernel benchmark (benchmarks/results/kernel/gpu-<date>-<gpu>.md), then the plugin engine
# against the --no-plugin engine at the served shapes (latency and accuracy) with the unsplit kernel
# timed at the engine's shapes, on ENGINE_ONNX (benchmarks/results/engine/gpu-<date>-<gpu>.md). The Torch-TensorRT
# frontend's tests (tests/test_torch_tensorrt.py) run too where torch_tensorrt imports:
# `make gpu-check GPU_EXTRAS=train,serve,torchtrt,test` installs it (in a fresh .venv-gpu; TensorRT 11.0,
# not the serving series: the version check then says so and the engine comparison is skipped).
GPU_VENV ?= .venv-gpu
GPU_EXTRAS ?= train,serve,gpu,test
ENGINE_ONNX ?= $(ARTIFACTS)/onnx/model.onnx
gpu-check:
	@command -v nvidia-smi >/dev/null || { echo "make gpu-check needs an NVIDIA GPU and driver (nvidia-smi not found)"; exit 2; }
	nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip --disable-pip-version-check install -q -c constraints-gpu.txt hatchling editables
	$(GPU_VENV)/bin/python -m pip --disable-pip-version-check install -q -c constraints-gpu.txt --no-build-isolation \
		-e '.[$(GPU_EXTRAS)]'
	@$(GPU_VENV)/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else f'torch {torch.__version__} sees no GPU (cuda {torch.version.cuda})')"
	@$(GPU_VENV)/bin/python -c "import torch_tensorrt as t; print('torch_tensorrt', t.__version__, 'imports: the torch-frontend engine tests run')" \
		2>/dev/null || echo "torch_tensorrt does not import: the torch-frontend engine tests skip (GPU_EXTRAS=train,serve,torchtrt,test)"
	$(GPU_VENV)/bin/python -m predilect.build.tensorrt.versions_cli --bindings || case "$(GPU_EXTRAS)" in *torchtrt*) ;; *) exit 1;; esac
	$(GPU_VENV)/bin/python -m pytest -m gpu -v -rs $(PYTEST_ARGS)
	$(GPU_VENV)/bin/python -m predilect.benchmarks.kernels.bench_predilection_attention --dtype bf16 --out benchmarks/results/kernel
	$(GPU_VENV)/bin/python -m predilect.benchmarks.kernels.bench_predilection_attention --dtype fp16 --out benchmarks/results/kernel
	@if ! $(GPU_VENV)/bin/python -m predilect.build.tensorrt.versions_cli --bindings >/dev/null 2>&1; then \
		echo "engine comparison skipped: the installed TensorRT is not the serving series (GPU_EXTRAS=$(GPU_EXTRAS))"; \
	elif [ ! -f "$(ENGINE_ONNX)" ]; then \
		echo "engine comparison needs the served model: $(ENGINE_ONNX) is missing (make demo, or ENGINE_ONNX=...)"; exit 2; \
	else \
		$(GPU_VENV)/bin/python -m predilect.benchmarks.engine_compare --onnx "$(ENGINE_ONNX)" --out benchmarks/results/engine; \
	fi

clean:
	rm -rf $(ARTIFACTS) .pytest_cache dist
