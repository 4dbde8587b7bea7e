"""The plugin-vs-no-plugin engine benchmark: what runs without a GPU (its shapes and its report)."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import onnx
import pytest
import torch
from serving_fixtures import build_attention_onnx

from predilect import contract
from predilect.benchmarks.engine_compare import EngineRow, head_shapes, profile_batches, render_report
from predilect.catalog import DEFAULT_CATALOG

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    return build_attention_onnx(tmp_path_factory.mktemp("attention"))


def test_head_shapes_read_engine_attention_shapes_when_export_parsed(exported: Path) -> None:
    model = onnx.load(str(exported))
    shapes = head_shapes(model)
    assert (shapes.diseases, shapes.sites) == (len(DEFAULT_CATALOG), 3)
    (sites,) = [i for i in model.graph.initializer if list(i.dims[:2]) == [len(DEFAULT_CATALOG), 3]]  # (C, K, D)
    (attention,) = [o for o in model.graph.output if o.name == contract.ATTENTION]  # (B, C, grid, grid)
    grid = [d.dim_value for d in attention.type.tensor_type.shape.dim[2:]]
    assert shapes.dim == sites.dims[2] and shapes.n_tokens == grid[0] * grid[1]


def test_profile_batches_are_min_opt_max_when_opt_equals_max() -> None:
    assert profile_batches(16, 16) == (1, 16) and profile_batches(4, 16) == (1, 4, 16)


def test_report_names_command_card_and_speedup_when_rendered() -> None:
    rows = [EngineRow("fp16", True, 1e-3, {1: 0.1, 16: 0.4}), EngineRow("fp16", False, 2e-3, {1: 0.2, 16: 0.6})]
    text = render_report(
        command="python -m predilect.benchmarks.engine_compare --onnx m.onnx",
        device="NVIDIA H100 80GB HBM3",
        versions="TensorRT 10.13.2.6",
        when=datetime(2026, 12, 7, tzinfo=timezone.utc),
        gate_source="8 seeded random inputs",
        engines=rows,
        kernels=["| fp16 | 1 | 64 x 32, C=22, K=3 | 9.0 | 8.0 | 20.0 | 2.22x |"],
    )
    assert "NVIDIA H100" in text and "--onnx m.onnx" in text and "2026-12-07" in text
    assert "B=1: 2.00x, B=16: 1.50x" in text and "| fp16 | --no-plugin | 2.00e-03 | 0.200 | 0.600 |  |" in text


def test_engine_compare_exits_2_without_gpu_when_run() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the benchmark would run")
    done = subprocess.run(
        [sys.executable, "-m", "predilect.benchmarks.engine_compare", "--onnx", "missing.onnx"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "needs a CUDA GPU" in done.stderr
