"""Hostile and damaged images: each is refused on its own with a named cause, never screened,
never failing the rest of its batch, in the library and through the real tritonserver."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from predilect import contract
from predilect.preprocess import InvalidImageError, PreprocessCfg, Preprocessor, inspect_image
from predilect.preprocess.decoders.pil_draft import decode_rgb

if TYPE_CHECKING:
    from predilect.serving.server import TritonServer

# --------------------------------------------------------------------------- hostile payloads


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_claiming(width: int, height: int, *, depth: int = 8, colour_type: int = 2) -> bytes:
    """A small PNG whose IHDR claims ``width`` x ``height`` (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _sof(jpeg: bytes) -> int:
    pos = 2
    while jpeg[pos + 1] not in (0xC0, 0xC1, 0xC2):
        pos += 2 + int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
    return pos


def jpeg_claiming(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with its frame header (SOF) rewritten to claim ``width`` x ``height``."""
    pos, data = _sof(jpeg), bytearray(jpeg)
    data[pos + 5 : pos + 7] = height.to_bytes(2, "big")
    data[pos + 7 : pos + 9] = width.to_bytes(2, "big")
    return bytes(data)


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def hostile_payloads(good: bytes) -> dict[str, tuple[bytes, str]]:
    """name -> (payload, a phrase its rejection must contain), from one valid fundus JPEG."""
    mid = len(good) // 2
    (_, height) = Image.open(io.BytesIO(good)).size
    grey16 = Image.fromarray(np.arange(512 * 512, dtype=np.uint16).reshape(512, 512) * 251)
    return {
        "png bomb 20000x20000": (png_claiming(20000, 20000), "too large"),
        "jpeg frame 65000x65000": (jpeg_claiming(good, 65000, 65000), "too large"),
        "20 KB zeroed mid-scan": (good[: mid - 10_000] + b"\x00" * 20_000 + good[mid + 10_000 :], "Corrupt JPEG data"),
        "first half + EOI": (good[:mid] + b"\xff\xd9", "Corrupt JPEG data"),
        "frame taller than scan": (jpeg_claiming(good, 1024, height + 96), "Corrupt JPEG data"),
        "frame shorter than scan": (jpeg_claiming(good, 1024, height - 96), "Corrupt JPEG data"),
        "16-bit greyscale png": (_encoded(grey16, "PNG"), "16-bit"),
        "cmyk jpeg": (_encoded(Image.new("CMYK", (512, 512), (0, 90, 200, 0)), "JPEG"), "CMYK"),
        "translucent png": (_encoded(Image.new("RGBA", (512, 512), (200, 90, 30, 128)), "PNG"), "transparency"),
        "truncated": (good[:-2000], "truncated JPEG"),
        "gif": (b"GIF89a" + bytes(200), "not a JPEG or PNG"),
    }


@pytest.fixture(scope="module")
def good(fundus_jpeg: Callable[..., bytes]) -> bytes:
    return fundus_jpeg(11)


@pytest.fixture(scope="module")
def preprocessor() -> Preprocessor:
    return Preprocessor(PreprocessCfg(), max_batch_size=8, num_threads=2)


# --------------------------------------------------------------------------- the library


def test_preprocessor_refuses_each_hostile_payload_naming_cause_when_batched_with_valid(
    preprocessor: Preprocessor, good: bytes
) -> None:
    cases = hostile_payloads(good)
    payloads = [good] + [payload for payload, _ in cases.values()] + [good]
    out = preprocessor.run(payloads).per_payload()
    first, last = out[0], out[-1]
    assert isinstance(first, np.ndarray) and isinstance(last, np.ndarray) and np.array_equal(first, last)
    np.testing.assert_array_equal(first, preprocessor.run([good]).pixels_or_raise()[0])
    for (name, (_, phrase)), result in zip(cases.items(), out[1:-1], strict=True):
        assert isinstance(result, InvalidImageError), f"{name} was screened"
        assert phrase in str(result), f"{name}: {result}"
        assert "Traceback" not in str(result) and "/" not in str(result).replace("x/", ""), f"{name}: {result}"


def test_preprocessor_rejects_any_decoder_exception_as_invalid_image_when_decoder_raises(
    preprocessor: Preprocessor, good: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    import simplejpeg

    def explode(*_args, **_kwargs):
        raise MemoryError("libjpeg could not allocate")

    monkeypatch.setattr(simplejpeg, "decode_jpeg", explode)
    (out,) = preprocessor.run([good]).per_payload()
    assert isinstance(out, InvalidImageError) and "MemoryError: libjpeg could not allocate" in str(out)
    assert isinstance(out.__cause__, MemoryError)


def test_inspect_image_reads_size_without_decoding_when_header_claims_bomb() -> None:
    with pytest.raises(InvalidImageError, match="20000x20000 exceeds"):
        inspect_image(np.frombuffer(png_claiming(20000, 20000), np.uint8), PreprocessCfg())


@pytest.mark.parametrize("mode", ["L", "P", "RGB"])
def test_preprocessor_screens_png_when_mode_converts_exactly(preprocessor: Preprocessor, mode: str) -> None:
    rgb = Image.open(io.BytesIO(_fundus_png())).convert("RGB")
    image = rgb.convert(mode) if mode != "P" else rgb.quantize(64)
    out, reference = preprocessor.run([_encoded(image, "PNG"), _encoded(image.convert("RGB"), "PNG")]).pixels_or_raise()
    assert np.array_equal(out, reference)


def test_preprocessor_screens_rgba_png_as_rgb_when_alpha_fully_opaque(preprocessor: Preprocessor) -> None:
    rgb = Image.open(io.BytesIO(_fundus_png())).convert("RGB")
    opaque = rgb.copy()
    opaque.putalpha(255)
    a, b = preprocessor.run([_encoded(opaque, "PNG"), _encoded(rgb, "PNG")]).pixels_or_raise()
    assert np.array_equal(a, b)


def _fundus_png() -> bytes:
    from serving_fixtures import make_fundus_jpeg

    return _encoded(Image.open(io.BytesIO(make_fundus_jpeg(5, size=(640, 480)))), "PNG")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_decode_rgb_applies_exif_orientation_as_pillow_when_jpeg_tagged(orientation: int) -> None:
    from serving_fixtures import make_fundus_jpeg

    image = Image.open(io.BytesIO(make_fundus_jpeg(6, size=(320, 240))))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encoded(image, "JPEG", quality=95, exif=exif.tobytes())
    array = np.frombuffer(data, np.uint8)
    header = inspect_image(array, PreprocessCfg())
    assert header.orientation == orientation
    ours = decode_rgb(array, header, request_px=10_000)  # full scale: Pillow decodes the same pixels
    pillows = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert np.array_equal(ours, pillows)


def test_preprocessor_gives_upright_tensor_when_exif_says_rotated(preprocessor: Preprocessor) -> None:
    from serving_fixtures import make_fundus_jpeg

    upright = Image.open(io.BytesIO(make_fundus_jpeg(7, size=(1024, 768))))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated 90 degrees counter-clockwise; shown by rotating it clockwise
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    a, b, c = preprocessor.run(
        [
            _encoded(upright, "JPEG", quality=95),
            _encoded(stored, "JPEG", quality=95, exif=exif.tobytes()),
            _encoded(stored, "JPEG", quality=95),
        ]
    ).pixels_or_raise()
    assert np.mean(np.abs(a - b)) < 0.05  # the same picture, up to JPEG noise
    assert np.mean(np.abs(a - c)) > 4 * np.mean(np.abs(a - b))  # ignoring the tag would differ


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_preprocessor_never_raises_when_payload_is_mutated(data: st.DataObject, good: bytes) -> None:
    """Fuzz: flipped, overwritten, inserted and cut bytes of a valid JPEG or PNG; each either
    screens to a finite tensor or is refused with InvalidImageError, and never raises."""
    base = bytearray(data.draw(st.sampled_from([good, _small_png()])))
    for _ in range(data.draw(st.integers(1, 6))):
        kind = data.draw(st.sampled_from(["flip", "splat", "insert", "cut"]))
        at = data.draw(st.integers(0, len(base) - 1))
        if kind == "flip":
            base[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "splat":
            base[at : at + 64] = data.draw(st.binary(min_size=1, max_size=64))
        elif kind == "insert":
            base[at:at] = data.draw(st.binary(min_size=1, max_size=32))
        else:
            del base[at : at + data.draw(st.integers(1, 4096))]
    (out,) = _fuzz_preprocessor().run([bytes(base)]).per_payload()
    assert isinstance(out, InvalidImageError) or (out.shape == (3, 224, 224) and np.isfinite(out).all())


_FUZZ: list[Preprocessor] = []


def _fuzz_preprocessor() -> Preprocessor:
    if not _FUZZ:
        _FUZZ.append(Preprocessor(PreprocessCfg(min_side_px=16), max_batch_size=1, num_threads=1))
    return _FUZZ[0]


def _small_png() -> bytes:
    from serving_fixtures import make_fundus_jpeg

    return _encoded(Image.open(io.BytesIO(make_fundus_jpeg(8, size=(160, 120)))), "PNG")


# --------------------------------------------------------------------------- the real tritonserver


def _infer(url: str, payload: bytes) -> np.ndarray | tuple[str, str]:
    """Probabilities, or (status, message) of the refusal, through the raw gRPC API."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)
    array = np.frombuffer(payload, np.uint8)[None, :]
    image = grpcclient.InferInput(contract.IMAGE, list(array.shape), "UINT8")
    image.set_data_from_numpy(array)
    try:
        return client.infer(contract.ENSEMBLE, [image]).as_numpy(contract.PROBABILITIES)[0]
    except InferenceServerException as e:
        return str(e.status()), str(e.message())
    finally:
        client.close()


def test_server_refuses_hostile_and_answers_valid_unchanged_when_traffic_mixed_concurrently(
    layout_server: TritonServer, fundus_jpeg: Callable[..., bytes]
) -> None:
    server = layout_server
    valid = [fundus_jpeg(seed) for seed in range(8)]
    alone = [_infer(server.grpc_url, v) for v in valid]
    cases = hostile_payloads(valid[0])
    traffic = [(f"valid {i % 8}", valid[i % 8]) for i in range(48)]
    traffic += [(name, payload) for name, (payload, _) in cases.items()] * 3
    order = np.random.default_rng(0).permutation(len(traffic))
    traffic = [traffic[i] for i in order]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda item: _infer(server.grpc_url, item[1]), traffic))
    for (name, _), answer in zip(traffic, answers, strict=True):
        if name.startswith("valid"):
            assert isinstance(answer, np.ndarray), f"{name}: {answer}"
            reference = alone[int(name.split()[1])]
            assert isinstance(reference, np.ndarray), reference
            np.testing.assert_allclose(answer, reference, rtol=0, atol=1e-6)
        else:
            assert isinstance(answer, tuple), f"{name} was screened"
            status, message = answer
            assert status == "StatusCode.INVALID_ARGUMENT", f"{name}: {status} {message}"
            kind, cause = contract.parse_error_message(message) or ("", "")
            assert kind == contract.ERROR_IMAGE_REJECTED and cases[name][1] in cause, f"{name}: {message}"
            assert "Traceback" not in message and ".py" not in message, f"{name}: {message}"


def test_preprocessor_screens_rotated_png_when_disc_small_in_frame(preprocessor: Preprocessor) -> None:
    from serving_fixtures import make_fundus_jpeg

    disc = Image.open(io.BytesIO(make_fundus_jpeg(9, size=(400, 300))))
    frame = Image.new("RGB", (1200, 900))
    frame.paste(disc.resize((200, 150)), (500, 375))  # the field of view spans < 224 px
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated, upright = preprocessor.run(
        [_encoded(frame, "PNG", exif=exif.tobytes()), _encoded(frame, "PNG")]
    ).per_payload()
    assert isinstance(rotated, np.ndarray) and isinstance(upright, np.ndarray)
    turned = np.rot90(upright, -1, axes=(1, 2))  # equal up to the centre crop's one-pixel rounding
    assert np.mean(np.abs(rotated - turned)) < 0.25 * np.mean(np.abs(rotated - upright))
