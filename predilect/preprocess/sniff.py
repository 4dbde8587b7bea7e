"""Header sniffing: what an encoded payload is, from its header alone, before any pixel is decoded.

What is screened: 8-bit greyscale or colour JPEG (YCbCr/RGB) and 8-bit PNG (greyscale, RGB,
palette, or with a fully opaque alpha channel), EXIF orientation applied. Everything else is
refused with ``InvalidImageError`` naming the cause, from the header alone where it can be
(size, colour space, bit depth) so that no decompression bomb reaches a decoder. JPEG headers
are read by libjpeg-turbo (simplejpeg, ``strict``), the EXIF orientation by Pillow.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Union

import numpy as np
import simplejpeg
from PIL import Image

from predilect.preprocess.config import PreprocessCfg
from predilect.preprocess.result import InvalidImageError

Payload = Union[bytes, bytearray, memoryview, np.ndarray]
"""One encoded image: its bytes, or a uint8 array (a Triton BYTES element or a ``[n_bytes]`` row)."""


def as_uint8(payload: Payload) -> np.ndarray:
    """View an encoded payload as a 1-D uint8 array without copying where possible."""
    if isinstance(payload, np.ndarray):
        if payload.dtype == np.object_:  # a Triton BYTES element
            payload = payload.item()
        else:
            return np.ascontiguousarray(payload.reshape(-1).view(np.uint8))
    return np.frombuffer(payload, dtype=np.uint8)


@dataclass(frozen=True)
class ImageHeader:
    """What an encoded image declares before any pixel is decoded.

    ``colour``: the JPEG colour space as libjpeg-turbo reports it (``Gray``, ``YCbCr``, ...)
    or the PNG colour type's name; ``orientation``: the EXIF orientation tag (1-8, 1 when absent).
    """

    format: str
    width: int
    height: int
    colour: str
    orientation: int = 1


_JPEG_SOI, _PNG_SIGNATURE = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
_JPEG_COLOURS = ("Gray", "YCbCr", "RGB")
"""Screened JPEG colour spaces: 8-bit greyscale and colour. CMYK / YCCK have no exact RGB conversion."""
_PNG_COLOURS = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale+alpha", 6: "RGBA"}
_EXIF_ORIENTATION = 0x0112


def _jpeg_exif_orientation(data: np.ndarray) -> int:
    """The EXIF orientation of a JPEG (1 when absent), from its APP1 segment; markers are walked up to SOS."""
    raw, pos = data[: 4 * 65536].tobytes(), 2  # APPn segments sit before the scan, each <= 64 KiB
    while pos + 4 <= len(raw) and raw[pos] == 0xFF:
        marker, length = raw[pos + 1], int.from_bytes(raw[pos + 2 : pos + 4], "big")
        if marker == 0xDA or length < 2:  # start of scan: no more metadata
            break
        if marker == 0xE1 and raw[pos + 4 : pos + 10] == b"Exif\x00\x00":
            exif = Image.Exif()
            exif.load(raw[pos + 10 : pos + 2 + length])
            value = exif.get(_EXIF_ORIENTATION, 1)
            return value if isinstance(value, int) and 1 <= value <= 8 else 1
        pos += 2 + length
    return 1


def _jpeg_header(data: np.ndarray) -> ImageHeader:
    try:
        height, width, colour, _ = simplejpeg.decode_jpeg_header(data, strict=True)
    except ValueError as e:
        cause = re.sub(r"^tj\w+\(\):\s*", "", str(e))  # libjpeg-turbo's words, without its API function's name
        raise InvalidImageError(f"corrupt JPEG header: {cause}") from e
    if colour not in _JPEG_COLOURS:
        raise InvalidImageError(
            f"unsupported JPEG colour space {colour}: only 8-bit RGB (YCbCr) and greyscale images are screened"
        )
    try:
        orientation = _jpeg_exif_orientation(data)
    except (ValueError, SyntaxError, struct.error, KeyError, IndexError, TypeError) as e:
        raise InvalidImageError(f"corrupt EXIF metadata in the JPEG: {type(e).__name__}: {e}") from e
    return ImageHeader("jpeg", int(width), int(height), str(colour), orientation)


def _png_header(data: np.ndarray) -> ImageHeader:
    head = data[:33].tobytes()
    if len(head) < 33 or head[12:16] != b"IHDR":
        raise InvalidImageError("corrupt PNG header: the first chunk is not IHDR")
    width, height, depth, colour_type = struct.unpack(">IIBB", head[16:26])
    colour = _PNG_COLOURS.get(colour_type)
    if colour is None:
        raise InvalidImageError(f"corrupt PNG header: unknown colour type {colour_type}")
    if depth != 8 and not (colour_type == 3 and depth in (1, 2, 4)):
        raise InvalidImageError(
            f"{depth}-bit {colour} PNG: only 8-bit RGB and greyscale images are screened "
            "(there is no exact conversion to 8 bits)"
        )
    return ImageHeader("png", width, height, colour)


def inspect_image(data: np.ndarray, cfg: PreprocessCfg) -> ImageHeader:
    """Check an encoded image from its header alone, before any pixel buffer is allocated.

    Returns the header; raises ``InvalidImageError`` naming the cause (not a JPEG or PNG,
    truncated, an unsupported colour space or bit depth, dimensions out of range), so that a
    bad request is rejected on its own and a decompression bomb never reaches a decoder.
    """
    if data.size == 0:
        raise InvalidImageError("empty payload: expected the bytes of a JPEG or PNG image")
    head = data[:16].tobytes()
    if head.startswith(_JPEG_SOI):
        # A transmission cut short loses the end-of-image marker.
        if b"\xff\xd9" not in data[-64:].tobytes():
            raise InvalidImageError(f"truncated JPEG: no end-of-image marker in the last bytes of {data.size} bytes")
        header = _jpeg_header(data)
    elif head.startswith(_PNG_SIGNATURE):
        if b"IEND" not in data[-32:].tobytes():
            raise InvalidImageError(f"truncated PNG: no IEND chunk at the end of {data.size} bytes")
        header = _png_header(data)
    else:
        # The bytes themselves are never quoted: they may be anything (a file a symlink pointed at).
        raise InvalidImageError(
            f"not a JPEG or PNG image: a payload of {data.size} bytes with neither signature at its start"
        )
    width, height = header.width, header.height
    if min(width, height) < cfg.min_side_px:
        raise InvalidImageError(f"image too small: {width}x{height}, need at least {cfg.min_side_px} px a side")
    if width * height > cfg.max_pixels:
        raise InvalidImageError(f"image too large: {width}x{height} exceeds {cfg.max_pixels} pixels")
    return header
