"""The same scenarios through both client faces (blocking and asyncio), against the real server.

Each test runs once per face through one parametrized fixture; the two faces perform the same
core plans, and these tests hold them to it: plain and rejected images, multi-frame DICOM, a
DICOM whose frame 2 fails (frame 1's result AND frame 2's error), retries on UNAVAILABLE,
deadlines, and ``screen_many``'s completeness, grouping and back-pressure.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from client_faces import (
    FACES,
    LateProxy,
    jpeg_multiframe_dicom,
    pixels_of,
    tiny_jpeg,
    uncompressed_multiframe_dicom,
)

from predilect import contract
from predilect.catalog import DEFAULT_CATALOG
from predilect.client import (
    AsyncScreeningClient,
    ClientConfigError,
    DeadlineExceededError,
    ImageRejectedError,
    InputError,
    RetryBudget,
    RetryPolicy,
    ScreeningClient,
    ScreeningResult,
    ServerNotFoundError,
    ServerUnavailableError,
    UnsupportedDicomError,
)
from predilect.preprocess import PreprocessCfg, Preprocessor
from predilect.serving.server import TritonServer, free_port

FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.05, max_backoff_s=0.2)


@pytest.fixture(params=sorted(FACES))
def make_face(request) -> Iterator[Callable]:
    """``make_face(url, **client_options)``: a client of the parametrized face, closed afterwards."""
    made = []

    def make(url: str, **options):
        face = FACES[request.param](url, **options)
        made.append(face)
        return face

    yield make
    for face in made:
        face.close()


@pytest.fixture
def face(make_face, triton_server: TritonServer):
    return make_face(triton_server.grpc_url, timeout_s=60)


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
    return np.array(list(result.scores.values()))


def test_face_screen_matches_reference_when_given_plain_image(face, reference, fundus_jpeg) -> None:
    image = fundus_jpeg(500)
    result = face.screen(image)
    np.testing.assert_allclose(_values(result), reference(image), rtol=0, atol=1e-5)
    assert list(result.probabilities) == DEFAULT_CATALOG.ids and face.catalog() == DEFAULT_CATALOG
    assert (result.sop_instance_uid, result.frame) == (None, None)
    (item,) = face.screen_items(image)
    assert (item.frame, item.frames, item.error) == (None, 1, None)
    np.testing.assert_allclose(_values(item.result), _values(result), rtol=0, atol=1e-6)


@pytest.fixture
def infer_calls(monkeypatch) -> list[str]:
    """Every ``infer`` either face sends, recorded at tritonclient (the real call still runs)."""
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as aioclient

    calls: list[str] = []
    sync_infer, async_infer = grpcclient.InferenceServerClient.infer, aioclient.InferenceServerClient.infer

    def counted(self, *args, **kwargs):
        calls.append("sync")
        return sync_infer(self, *args, **kwargs)

    async def counted_async(self, *args, **kwargs):
        calls.append("async")
        return await async_infer(self, *args, **kwargs)

    monkeypatch.setattr(grpcclient.InferenceServerClient, "infer", counted)
    monkeypatch.setattr(aioclient.InferenceServerClient, "infer", counted_async)
    return calls


def test_face_raises_image_rejected_once_when_server_rejects_image(face, infer_calls) -> None:
    with pytest.raises(ImageRejectedError, match="not a JPEG or PNG") as caught:
        face.screen(b"GIF89a" + bytes(600))
    assert caught.value.attempts == 1 and type(caught.value.__cause__).__name__ == "InferenceServerException"
    assert infer_calls == [face.name], "a rejected image is sent once, never retried"
    (item,) = face.screen_items(b"GIF89a" + bytes(600))
    assert isinstance(item.error, ImageRejectedError) and item.result is None


def test_face_screens_every_frame_in_order_when_dicom_is_multiframe(face, fundus_jpeg, tmp_path: Path) -> None:
    frames = [pixels_of(fundus_jpeg(501)), pixels_of(fundus_jpeg(502))]
    path = uncompressed_multiframe_dicom(frames, tmp_path / "two.dcm")
    results = face.screen_frames(path)
    assert [r.frame for r in results] == [1, 2]
    for result, pixels in zip(results, frames, strict=True):
        np.testing.assert_allclose(_values(result), _values(face.screen(pixels)), rtol=0, atol=1e-6)
    items = face.screen_items(path)
    assert [(i.frame, i.frames, i.ok) for i in items] == [(1, 2, True), (2, 2, True)]
    with pytest.raises(InputError, match="several frames"):
        face.screen(path)


@pytest.mark.parametrize(
    ("bad_frame", "error_type", "message"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(40), UnsupportedDicomError, "frame 2 is not a well-formed"),
        (tiny_jpeg(), ImageRejectedError, "image too small"),
    ],
    ids=["undecodable_here", "rejected_by_server"],
)
def test_face_yields_frame1_result_and_frame2_error_when_dicom_fails_on_frame_2(
    face, fundus_jpeg, tmp_path: Path, bad_frame: bytes, error_type: type, message: str
) -> None:
    good = fundus_jpeg(503)
    path = jpeg_multiframe_dicom([good, bad_frame], tmp_path / "frame2.dcm")
    first, second = face.screen_items(path)
    assert (first.frame, first.frames, second.frame, second.frames) == (1, 2, 2, 2)
    np.testing.assert_allclose(_values(first.result), _values(face.screen(good)), rtol=0, atol=1e-6)
    assert isinstance(second.error, error_type) and message in str(second.error) and second.result is None
    many = face.screen_many([path])
    assert [(i.frame, i.ok) for i in many] == [(1, True), (2, False)]
    with pytest.raises(error_type, match=message):
        face.screen_frames(path)


def test_face_retries_until_server_answers_when_port_opens_late(make_face, triton_server) -> None:
    host, port = triton_server.grpc_url.rsplit(":", 1)
    proxy = LateProxy(host, int(port))
    try:
        budget = RetryBudget(ratio=0.0, reserve=50.0, capacity=50.0)
        policy = RetryPolicy(max_attempts=40, initial_backoff_s=0.05, max_backoff_s=0.25)
        face = make_face(proxy.url, timeout_s=30, retry_policy=policy, retry_budget=budget)
        timer = threading.Timer(0.5, proxy.listen)
        timer.start()
        try:
            face.connect()
        finally:
            timer.cancel()
        assert face.catalog() == DEFAULT_CATALOG
        assert budget.tokens < 50.0, "the connect must have been retried after UNAVAILABLE"
    finally:
        proxy.close()


def test_face_raises_server_unavailable_after_all_attempts_when_nobody_listens(make_face) -> None:
    face = make_face(f"127.0.0.1:{free_port()}", timeout_s=10, retry_policy=FAST)
    with pytest.raises(ServerUnavailableError, match="after 3 attempts: connection refused: nothing listens") as caught:
        face.connect()
    assert caught.value.attempts == 3


def test_face_names_dns_failure_not_model_when_host_does_not_resolve(make_face) -> None:
    face = make_face("no-such-host.invalid:8001", timeout_s=10, retry_policy=FAST)
    with pytest.raises(ServerNotFoundError, match="cannot resolve the host name 'no-such-host.invalid'") as caught:
        face.connect()
    assert "not ready" not in str(caught.value) and "model" not in str(caught.value)


@pytest.mark.parametrize("face_class", [ScreeningClient, AsyncScreeningClient])
def test_client_goes_to_triton_grpc_port_not_443_when_server_has_no_port(face_class) -> None:
    assert face_class("localhost").url == f"localhost:{contract.DEFAULT_GRPC_PORT}"
    assert face_class("[::1]").url == f"[::1]:{contract.DEFAULT_GRPC_PORT}"
    assert face_class("triton:9001").url == "triton:9001"
    with pytest.raises(ClientConfigError, match="without a scheme"):
        face_class("grpc://triton:8001")


def test_face_raises_deadline_exceeded_when_timeout_is_too_short(face, fundus_jpeg) -> None:
    face.connect()
    with pytest.raises(DeadlineExceededError, match="timeout_s"):
        face.screen(fundus_jpeg(504), timeout_s=1e-4)


def test_face_retries_attempts_within_total_deadline_when_each_attempt_times_out(
    make_face, triton_server, fundus_jpeg
) -> None:
    policy = RetryPolicy(max_attempts=50, initial_backoff_s=0.01, max_backoff_s=0.02)
    face = make_face(
        triton_server.grpc_url,
        timeout_s=0.5,
        attempt_timeout_s=1e-4,
        retry_policy=policy,
        retry_budget=RetryBudget(ratio=0.0, reserve=100.0, capacity=100.0),
    )
    with pytest.raises(DeadlineExceededError, match="within 0.5 s") as caught:
        face.screen(fundus_jpeg(505))
    assert caught.value.attempts > 1, "an attempt cut by attempt_timeout_s is retried"


def test_face_screen_many_yields_each_input_once_grouped_and_pulls_lazily_when_streamed(
    face, fundus_jpeg, tmp_path: Path
) -> None:
    max_in_flight = 3
    dicom = uncompressed_multiframe_dicom(
        [pixels_of(fundus_jpeg(506)), pixels_of(fundus_jpeg(507))], tmp_path / "mf.dcm"
    )
    images = [fundus_jpeg(510 + i % 4) for i in range(9)] + [b"not an image", dicom]
    lock, pulled, completed, worst = threading.Lock(), [0], [0], [0]

    def source():
        for image in images:
            with lock:
                pulled[0] += 1
                worst[0] = max(worst[0], pulled[0] - completed[0])
            yield image

    seen: dict[int, list] = {}

    def on_item(item) -> None:
        seen.setdefault(item.index, []).append(item)
        if len(seen[item.index]) == item.frames:
            with lock:
                completed[0] += 1

    items = face.screen_many(source(), max_in_flight=max_in_flight, on_item=on_item)
    assert sorted(seen) == list(range(len(images))), "every input exactly once"
    order = [item.index for item in items]
    for index, group in seen.items():
        first = order.index(index)
        assert order[first : first + len(group)] == [index] * len(group), "an input's items come together"
    assert [i.frame for i in seen[10]] == [1, 2] and all(i.ok for i in seen[10])
    assert isinstance(seen[9][0].error, ImageRejectedError)
    assert all(seen[i][0].ok for i in range(9))
    assert worst[0] <= max_in_flight, f"{worst[0]} inputs pulled ahead of the results"


def test_face_screen_many_raises_value_error_when_max_in_flight_below_one(face) -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        face.screen_many([b"x"], max_in_flight=0)
