"""The thin client against the real server: results, discovery, rejections, batching, errors."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from predilect import contract
from predilect.catalog import DEFAULT_CATALOG
from predilect.client import (
    DeadlineExceededError,
    ImageRejectedError,
    ModelNotReadyError,
    ScreeningClient,
    ScreeningResult,
    ServerUnavailableError,
)
from predilect.preprocess import PreprocessCfg, Preprocessor
from predilect.serving.server import TritonServer, free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def reference(tiny_onnx: Path) -> Callable[[bytes], np.ndarray]:
    """In-process reference: the same preprocessing and ONNX model, then a sigmoid."""
    import onnxruntime as ort

    preprocessor = Preprocessor(PreprocessCfg(), max_batch_size=1, num_threads=1)
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])

    def run(image: bytes) -> np.ndarray:
        (logits,) = session.run([contract.LOGITS], {contract.PIXELS: preprocessor.run([image]).pixels_or_raise()})
        return 1.0 / (1.0 + np.exp(-logits[0].astype(np.float64)))

    return run


def _values(result: ScreeningResult) -> np.ndarray:
    """The model's probabilities, gradable or not (these tests compare model outputs)."""
    return np.array(list(result.scores.values()))


def test_screen_matches_in_process_reference_when_given_jpeg_bytes(client, reference, fundus_jpeg) -> None:
    for seed in (1, 2):
        image = fundus_jpeg(seed)
        np.testing.assert_allclose(_values(client.screen(image)), reference(image), rtol=0, atol=1e-5)
    assert not np.allclose(_values(client.screen(fundus_jpeg(1))), _values(client.screen(fundus_jpeg(2))), atol=1e-4), (
        "different images must give different probabilities"
    )


def test_screen_matches_reference_when_given_a_path(client, reference, fundus_jpeg, tmp_path: Path) -> None:
    path = tmp_path / "fundus.jpg"
    path.write_bytes(fundus_jpeg(3))
    for given in (path, str(path)):
        np.testing.assert_allclose(_values(client.screen(given)), reference(path.read_bytes()), rtol=0, atol=1e-5)


def test_screen_result_applies_served_catalog_when_connected(client, fundus_jpeg, tiny_onnx: Path) -> None:
    from predilect.serving.repository import read_served_model

    result = client.screen(fundus_jpeg(4), timeout_s=30)
    assert list(result.probabilities) == DEFAULT_CATALOG.ids
    assert result.positive == [d.id for d in DEFAULT_CATALOG if result.probabilities[d.id] >= d.threshold]
    assert result.referable == bool(result.positive)
    assert (result.model_name, result.model_version) == ("uopsl-tiny", read_served_model(tiny_onnx).model_version)
    assert 0 < result.latency_s < 30
    assert ScreeningResult.model_validate_json(result.to_json()) == result
    assert client.catalog == DEFAULT_CATALOG


def _corrupt_jpeg(image: bytes) -> bytes:
    """Start and end markers intact, the header in between destroyed."""
    return image[:4] + bytes(range(256)) * 8 + image[-2:]


@pytest.mark.parametrize(
    ("make_bad", "cause"),
    [
        (_corrupt_jpeg, "corrupt JPEG"),
        (lambda image: b"%PDF-1.7\n" + image, "not a JPEG or PNG image"),
        (lambda image: image[: len(image) // 2], "truncated JPEG"),
    ],
    ids=["corrupt", "not_an_image", "truncated"],
)
def test_screen_raises_image_rejected_error_naming_cause_when_payload_is_bad(
    client, fundus_jpeg, make_bad, cause: str
) -> None:
    with pytest.raises(ImageRejectedError, match=cause) as caught:
        client.screen(make_bad(fundus_jpeg(5)))
    assert cause in caught.value.cause and caught.value.kind == contract.ERROR_IMAGE_REJECTED
    assert type(caught.value.__cause__).__name__ == "InferenceServerException"


def _batch_sizes(triton_server: TritonServer, model: str) -> dict[int, int]:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(triton_server.grpc_url) as raw:
        stats = raw.get_inference_statistics(model).model_stats[0]
    return {b.batch_size: b.compute_infer.count for b in stats.batch_stats}


def test_good_requests_succeed_unchanged_when_batched_with_bad_ones(client, triton_server, fundus_jpeg) -> None:
    good = {seed: fundus_jpeg(100 + seed) for seed in range(8)}
    alone = {seed: _values(client.screen(image)) for seed, image in good.items()}
    bad = [b"GIF89a" + bytes(500), fundus_jpeg(200)[:3000], _corrupt_jpeg(fundus_jpeg(201))]
    payloads = [(seed, image) for seed, image in good.items()] + [(None, b) for b in bad]
    before = _batch_sizes(triton_server, contract.PREPROCESS_MODEL)
    barrier = threading.Barrier(len(payloads))
    outcomes: dict[int, object] = {}

    def send(index: int, image: bytes) -> None:
        barrier.wait()
        try:
            outcomes[index] = client.screen(image)
        except ImageRejectedError as e:
            outcomes[index] = e

    threads = [threading.Thread(target=send, args=(i, image)) for i, (_, image) in enumerate(payloads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for index, (seed, _) in enumerate(payloads):
        if seed is None:
            assert isinstance(outcomes[index], ImageRejectedError), outcomes[index]
        else:
            assert isinstance(outcomes[index], ScreeningResult), outcomes[index]
            np.testing.assert_allclose(_values(outcomes[index]), alone[seed], rtol=0, atol=1e-6)
    after = _batch_sizes(triton_server, contract.PREPROCESS_MODEL)
    grouped = {size: n - before.get(size, 0) for size, n in after.items() if size > 1 and n > before.get(size, 0)}
    assert grouped, f"the dynamic batcher grouped no requests (batch sizes before {before}, after {after})"


def test_connect_raises_server_unavailable_error_when_nobody_listens() -> None:
    with pytest.raises(ServerUnavailableError, match="predilect serve"):
        ScreeningClient(f"127.0.0.1:{free_port()}", timeout_s=5).connect()


def test_connect_raises_model_not_ready_error_when_model_unknown(triton_server: TritonServer) -> None:
    with pytest.raises(ModelNotReadyError, match="no_such_model"):
        ScreeningClient(triton_server.grpc_url, model_name="no_such_model", timeout_s=5).connect()


def test_translate_raises_model_not_ready_by_status_code_when_real_triton_lacks_the_model(
    triton_server: TritonServer,
) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from predilect.client import protocol

    with grpcclient.InferenceServerClient(triton_server.grpc_url) as raw, pytest.raises(InferenceServerException) as e:
        raw.get_model_config("no_such_model")
    assert protocol.status_code(e.value) == "NOT_FOUND"
    error = protocol.translate(e.value, url=triton_server.grpc_url, model_name="no_such_model", timeout_s=5)
    assert isinstance(error, ModelNotReadyError)


def test_screen_raises_deadline_exceeded_error_when_timeout_is_too_short(client, fundus_jpeg) -> None:
    with pytest.raises(DeadlineExceededError, match="timeout_s"):
        client.screen(fundus_jpeg(6), timeout_s=1e-4)


def test_import_client_loads_no_heavy_module_when_imported() -> None:
    heavy = ["torch", "onnx", "onnxruntime", "nvidia.dali", "PIL", "pydicom", "highdicom", "pynetdicom", "jinja2"]
    code = (
        "import sys, predilect.client, predilect.client.screen_cli, predilect.dicom.gateway_cli, "
        "predilect.client.report_cli, predilect.client.schema_cli, predilect.client.overlay, predilect.client.exam; "
        f"loaded = [m for m in {heavy!r} if m in sys.modules]; "
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
