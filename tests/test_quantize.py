"""INT8 on the CPU profile: ONNX Runtime static quantisation behind an accuracy gate, served on request."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from predilect import contract
from predilect.build.quantize import QuantizationRefused, QuantizeCfg, int8_path, quantize


@pytest.fixture(scope="module")
def int8(pipeline, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(fp32, int8) ONNX files side by side, the INT8 one written by a passing gate."""
    import shutil

    fp32 = tmp_path_factory.mktemp("quantize") / "model.onnx"
    shutil.copy2(pipeline.onnx, fp32)
    report = quantize(
        fp32, pipeline.manifest, int8_path(fp32), QuantizeCfg(calibration_images=16, max_abs_dp=0.5, max_auroc_drop=1.0)
    )
    assert report.passed and report.images > 0
    return fp32, int8_path(fp32)


def _meta(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_quantize_writes_qdq_model_with_gate_report_when_within_tolerance(int8: tuple[Path, Path]) -> None:
    import json

    import onnx

    fp32, quantized = int8
    ops = {n.op_type for n in onnx.load(str(quantized)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    meta, source = _meta(quantized), _meta(fp32)
    assert meta[contract.KEY_MODEL_VERSION] == source[contract.KEY_MODEL_VERSION] + ".int8"
    assert meta[contract.KEY_CATALOG] == source[contract.KEY_CATALOG]
    report = json.loads(meta[contract.KEY_QUANTIZATION])
    assert report["passed"] and report["max_abs_dp"] <= report["tolerance_abs_dp"]


def test_quantize_refuses_and_writes_nothing_when_past_tolerance(pipeline, tmp_path: Path) -> None:
    out = tmp_path / "refused.int8.onnx"
    with pytest.raises(QuantizationRefused, match="REFUSED"):
        quantize(pipeline.onnx, pipeline.manifest, out, QuantizeCfg(calibration_images=8, max_abs_dp=1e-9))
    assert not out.exists() and not list(tmp_path.iterdir())


def test_quantize_cli_exits_two_when_gate_refuses(pipeline, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from predilect.build.quantize_cli import main

    argv = ["--onnx", str(pipeline.onnx), "--manifest", str(pipeline.manifest), "--out", str(tmp_path / "int8")]
    assert main([*argv, "--calibration-images", "8", "--max-abs-dp", "1e-9"]) == 2
    assert "REFUSED" in capsys.readouterr().err


def test_served_int8_probabilities_equal_onnx_runtime_when_assembled_with_precision_int8(
    tritonserver, int8: tuple[Path, Path], pipeline, tmp_path: Path
) -> None:
    from predilect.build.export import onnx_probabilities
    from predilect.client import ScreeningClient
    from predilect.manifest import read_manifest
    from predilect.preprocess import PreprocessCfg, Preprocessor
    from predilect.serving.configs import ServingOptions
    from predilect.serving.repository import assemble, read_served_model

    fp32, quantized = int8
    repository = assemble(fp32, tmp_path / "repo", ServingOptions(precision="int8", fused_instances=1))
    served = read_served_model(repository / contract.FUSED_MODEL / contract.TRITON_VERSION / contract.ONNX_FILENAME)
    assert served.model_version.endswith(".int8")
    images = [r.path.read_bytes() for r in read_manifest(pipeline.manifest, split="test")[:6]]
    cfg = PreprocessCfg.from_json(_meta(fp32)[contract.KEY_PREPROCESS])
    expected = onnx_probabilities(quantized, Preprocessor(cfg, num_threads=1).run(images).pixels_or_raise())
    with (
        tritonserver.on_free_ports(
            model_repository=repository,
            log_path=tmp_path / "tritonserver.log",
        ) as server,
        ScreeningClient(server.grpc_url, timeout_s=60) as client,
    ):
        results = [client.screen(image) for image in images]
    ids = served.catalog.ids
    got = np.array([[r.scores[d] for d in ids] for r in results])
    assert {r.model_version for r in results} == {served.model_version}
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
