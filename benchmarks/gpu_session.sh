#!/usr/bin/env bash
# One lease of a lent GPU that has CUDA torch and triton but no TensorRT or DALI (the device tool's
# machines): the kernel's GPU tests and the training loop's bf16 test, then the bf16 and fp16 sweeps.
# Each step has its own time limit so that one slow step leaves the others their time; the sweep
# writes each row as it is measured, and a section without its "Sweep complete" line was cut short.
# torch.compile is left out of the sweeps by default: Inductor compiles one specialisation per shape
# (45 of them with the correctness check), which alone outran a 200 s step on an H200; IMPLS adds it back.
# Usage, from the repository root: OUT=<dir> [TEST_K=<pytest -k>] [IMPLS=a,b] bash benchmarks/gpu_session.sh
set -uo pipefail
out=${OUT:-benchmarks/results}
py=${PYTHON:-python3}
mkdir -p "$out"
# The machine has no project install: put the namespace's portions (the root and each part folder) on the path.
PYTHONPATH=$PWD
for part in kernels models training build serving client dicom benchmarks; do PYTHONPATH=$PYTHONPATH:$PWD/$part; done
export PYTHONPATH PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,compute_cap,clocks.sm,clocks.max.sm,temperature.gpu,utilization.gpu \
  --format=csv | tee "$out/gpu-card.txt"
"$py" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', \
triton.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu-card.txt"
# --noconftest: the shared fixtures import the serving stack (tritonclient, pydantic), absent there.
impls=${IMPLS:-fused,fused_unsplit,eager,sdpa}
# TESTS_S=0 skips the tests (a lease that only needs timings, after a lease where they passed).
[ "${TESTS_S:-150}" = 0 ] || timeout "${TESTS_S:-150}" "$py" -m pytest -p no:cacheprovider --noconftest -m gpu -v -rs -k "${TEST_K:-}" \
  tests/test_kernel_gpu.py tests/test_loop.py 2>&1 | tee "$out/gpu-tests.log"
timeout "${BF16_S:-240}" "$py" -m predilect.benchmarks.kernels.bench_predilection_attention --dtype bf16 --reps 100 \
  --impls "$impls" --out "$out"
timeout "${FP16_S:-100}" "$py" -m predilect.benchmarks.kernels.bench_predilection_attention --dtype fp16 --reps 100 \
  --impls "$impls" --out "$out"
