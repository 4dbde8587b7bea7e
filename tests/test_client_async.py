"""The asyncio client, numpy inputs, concurrency and back-pressure, against the real server."""

from __future__ import annotations

import asyncio
import io
import threading

import numpy as np
import pytest

from predilect.client import (
    AsyncScreeningClient,
    ImageRejectedError,
    InputError,
    ScreeningResult,
)


def _values(result: ScreeningResult) -> np.ndarray:
    return np.array(list(result.probabilities.values()))


def _decode(image: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))


def _pillow_png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_screen_numpy_array_matches_pillow_png_when_given_same_pixels(client, fundus_jpeg) -> None:
    pixels = _decode(fundus_jpeg(11))
    np.testing.assert_allclose(
        _values(client.screen(pixels)), _values(client.screen(_pillow_png(pixels))), rtol=0, atol=1e-6
    )


def test_screen_raises_input_error_when_array_is_not_rgb_uint8(client) -> None:
    with pytest.raises(InputError, match="HxWx3 uint8"):
        client.screen(np.zeros((64, 64), dtype=np.float32))


def test_async_screen_matches_sync_when_given_same_image(triton_server, client, fundus_jpeg) -> None:
    async def run() -> tuple[ScreeningResult, object]:
        async with AsyncScreeningClient(triton_server.grpc_url, timeout_s=60) as aclient:
            good = await aclient.screen(fundus_jpeg(12))
            with pytest.raises(ImageRejectedError) as caught:
                await aclient.screen(b"%PDF-1.7 not an image")
            return good, (await aclient.catalog(), caught.value)

    result, (catalog, rejected) = asyncio.run(run())
    np.testing.assert_allclose(_values(result), _values(client.screen(fundus_jpeg(12))), rtol=0, atol=1e-6)
    assert catalog == client.catalog and rejected.attempts == 1


def test_async_client_answers_64_concurrent_requests_when_gathered(triton_server, client, fundus_jpeg) -> None:
    images = [fundus_jpeg(20 + i) for i in range(4)]
    alone = [_values(client.screen(image)) for image in images]

    async def run() -> list[ScreeningResult]:
        async with AsyncScreeningClient(triton_server.grpc_url, timeout_s=120) as aclient:
            return await asyncio.gather(*(aclient.screen(images[i % 4]) for i in range(64)))

    results = asyncio.run(run())
    assert len(results) == 64
    for i, result in enumerate(results):
        np.testing.assert_allclose(_values(result), alone[i % 4], rtol=0, atol=1e-6)


def test_async_screen_many_yields_every_input_with_errors_inline_when_streamed(triton_server, fundus_jpeg) -> None:
    images = [fundus_jpeg(30 + i) for i in range(6)] + [b"not an image"]

    async def source():
        for image in images:
            yield image

    async def run() -> list:
        async with AsyncScreeningClient(triton_server.grpc_url, timeout_s=60) as aclient:
            return [item async for item in aclient.screen_many(source(), max_in_flight=3)]

    items = asyncio.run(run())
    assert sorted(item.index for item in items) == list(range(7))
    by_index = {item.index: item for item in items}
    assert all(by_index[i].ok for i in range(6))
    assert isinstance(by_index[6].error, ImageRejectedError)


def test_screen_many_never_exceeds_max_in_flight_when_inputs_are_a_generator(client, fundus_jpeg) -> None:
    max_in_flight, count = 3, 12
    images = [fundus_jpeg(40 + i % 3) for i in range(count)]
    lock, pulled, yielded, worst = threading.Lock(), [0], [0], [0]

    def source():
        for image in images:
            with lock:
                pulled[0] += 1
                worst[0] = max(worst[0], pulled[0] - yielded[0])
            yield image

    indices = []
    for item in client.screen_many(source(), max_in_flight=max_in_flight):
        assert item.ok, item.error
        with lock:
            yielded[0] += 1
        indices.append(item.index)
    assert sorted(indices) == list(range(count))
    assert worst[0] <= max_in_flight, f"{worst[0]} inputs pulled ahead of the results"
