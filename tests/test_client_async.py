"""Numpy inputs and asyncio concurrency against the real server (scenarios shared by both faces
are in ``test_client_faces.py``)."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest

from predilect.client import (
    AsyncScreeningClient,
    InputError,
    ScreeningResult,
)


def _values(result: ScreeningResult) -> np.ndarray:
    return np.array(list(result.scores.values()))


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
