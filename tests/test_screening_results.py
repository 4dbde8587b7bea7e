"""Gradability, the referral decision and heatmaps served end to end by the real tritonserver, in both
CPU layouts (split: preprocess -> classifier -> postprocess; fused: one model), through raw gRPC and the client."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from client_faces import core_settings

from predilect import contract
from predilect.catalog import DEFAULT_CATALOG
from predilect.preprocess import PreprocessCfg, Preprocessor
from predilect.quality import default_quality_cfg
from predilect.referral import ReferralRules
from predilect.serving.server import TritonServer

ALL = (
    contract.PROBABILITIES,
    contract.QUALITY,
    contract.QUALITY_MEASURES_TENSOR,
    contract.FINDINGS,
    contract.REFERRAL,
    contract.FIELD_BOX,
    contract.HEATMAPS,
)
RULES = ReferralRules.from_catalog(DEFAULT_CATALOG, default_quality_cfg().to_dict())


def _skin_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (800, 600), (205, 150, 125)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _infer(url: str, payload: bytes, outputs=ALL) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient

    data = np.frombuffer(payload, np.uint8)[np.newaxis]
    tensor = grpcclient.InferInput(contract.IMAGE, list(data.shape), "UINT8")
    tensor.set_data_from_numpy(data)
    with grpcclient.InferenceServerClient(url) as client:
        response = client.infer(
            contract.ENSEMBLE, [tensor], outputs=[grpcclient.InferRequestedOutput(n) for n in outputs]
        )
    return {name: response.as_numpy(name) for name in ALL}


def _expected(tiny_onnx: Path, payload: bytes) -> dict[str, np.ndarray]:
    """What the served pipeline must answer, computed here from the same parts."""
    import onnxruntime as ort

    cfg = PreprocessCfg()
    done = Preprocessor(cfg).run([payload])
    pixels, errors, boxes = done.pixels, done.errors, done.boxes
    assert errors == [None]
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    logits, attention = session.run([contract.LOGITS, contract.ATTENTION], {contract.PIXELS: pixels})
    from predilect.serving.backends.screening import Screening

    screening = Screening(RULES, cfg)
    graded = screening.quality(pixels, boxes=boxes, frames=done.frames)
    outputs = screening.decide(logits, graded.quality, attention)
    return {
        **outputs,
        contract.QUALITY: graded.quality,
        contract.QUALITY_MEASURES_TENSOR: graded.measures,
        contract.FIELD_BOX: np.asarray(boxes, np.float32),
    }


@pytest.mark.parametrize("image", ["gradable", "ungradable"])
def test_ensemble_answers_quality_decision_and_heatmaps_computed_from_same_frame_when_layout(
    layout_server: TritonServer, tiny_onnx: Path, fundus_jpeg, image: str
) -> None:
    server = layout_server
    payload = fundus_jpeg(33) if image == "gradable" else _skin_jpeg()
    got, want = _infer(server.grpc_url, payload), _expected(tiny_onnx, payload)
    for name in ALL:
        value = got[name]
        assert value is not None and value.shape == want[name].shape, name
        if value.dtype.kind == "f":
            np.testing.assert_allclose(value, want[name], rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(value, want[name], err_msg=name)
    findings, code = got[contract.FINDINGS], int(got[contract.REFERRAL][0, 0])
    if image == "ungradable":
        flags = got[contract.QUALITY][0, 1:]
        assert flags[contract.QUALITY_REASONS.index("wrong_image_type")] == 1.0
        assert contract.DECISIONS[code] == "ungradable" and not findings.any()
        assert not got[contract.HEATMAPS].any(), "no finding, no heatmap"
    else:
        assert contract.DECISIONS[code] != "ungradable" and findings.any(), "the fixture has findings"
        maps = got[contract.HEATMAPS][0]
        assert (maps.reshape(len(DEFAULT_CATALOG), -1).sum(axis=1) > 0.99).tolist() == findings[0].tolist()


def test_ensemble_sends_no_heatmaps_and_same_answer_when_not_asked(triton_server: TritonServer, fundus_jpeg) -> None:
    payload = fundus_jpeg(34)
    asked = _infer(triton_server.grpc_url, payload)
    plain = _infer(triton_server.grpc_url, payload, outputs=ALL[:-1])
    assert plain[contract.HEATMAPS] is None, "a heatmap is never sent unasked"
    for name in ALL[:-1]:
        np.testing.assert_array_equal(plain[name], asked[name])


def test_client_maps_heatmap_peaks_onto_photograph_when_heatmaps_asked(client, tiny_onnx: Path, fundus_jpeg) -> None:
    payload = fundus_jpeg(35)
    result = client.screen(payload, heatmaps=True)
    plain = client.screen(payload)
    assert plain.heatmaps is None and result.heatmaps is not None
    assert [h.disease for h in result.heatmaps] == result.positive and result.positive
    want = _expected(tiny_onnx, payload)
    left, top, right, bottom = want[contract.FIELD_BOX][0]
    assert result.field_box == pytest.approx((left, top, right, bottom), abs=1e-6)
    for heatmap in result.heatmaps:
        grid = want[contract.HEATMAPS][0, DEFAULT_CATALOG.index(heatmap.disease)]
        np.testing.assert_allclose(heatmap.array, grid, atol=1e-6)
        row, column = np.unravel_index(int(np.argmax(grid)), grid.shape)
        expected = (left + (column + 0.5) / 14 * (right - left), top + (row + 0.5) / 14 * (bottom - top))
        assert heatmap.peak == pytest.approx(expected, abs=1e-6)
    assert result.rules_digest == RULES.digest() and result.catalog_digest == DEFAULT_CATALOG.digest()
    assert result.thresholds == RULES.thresholds and result.decision == plain.decision


def test_screen_raises_incompatible_model_error_before_any_call_when_model_has_no_attention() -> None:
    from predilect.client import core
    from predilect.client.errors import IncompatibleModelError
    from predilect.client.inputs import Prepared
    from predilect.client.protocol import ServedModelInfo

    served = ServedModelInfo(DEFAULT_CATALOG, "m", "1", {}, RULES, heatmaps=False)
    settings = core_settings("host:1")
    plan = core.screen_prepared(settings, served, Prepared(payload=b"x"), timeout_s=None, heatmaps=True)
    with pytest.raises(IncompatibleModelError, match=contract.ATTENTION):
        next(plan)
