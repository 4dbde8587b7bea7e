"""The fused kernel and its AOT PTX on a real GPU (`make gpu-check`); skipped without one."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
HAS_GPU = Path("/dev/nvidiactl").exists()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU (make gpu-check)")]


def _run(check: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, str(HERE / "gpu_kernel_checks.py"), check],
        cwd=HERE.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )


def test_kernel_within_2x_reference_error_on_cuda_when_fp32_fp16_bf16() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip(f"torch {torch.__version__} is a CPU build: install with constraints-gpu.txt (make gpu-check)")
    done = _run("kernel")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_aot_ptx_runs_with_tensorrt_parameter_list_when_launched_by_driver() -> None:
    if importlib.util.find_spec("cuda") is None:
        pytest.skip("cuda-python is not installed (pip install predilect[gpu])")
    done = _run("aot")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
