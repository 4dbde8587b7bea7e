"""A minimal lossless PNG encoder (zlib only): the thin client cannot depend on Pillow."""

from __future__ import annotations

import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GREY, _RGB = 0, 2  # PNG colour types
_FILTER_SUB = 1  # each byte minus the byte one pixel to its left: compresses photographs well


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _sub_filtered(pixels: np.ndarray, bytes_per_pixel: int) -> bytes:
    rows = pixels.reshape(pixels.shape[0], -1)
    filtered = rows.copy()
    filtered[:, bytes_per_pixel:] -= rows[:, :-bytes_per_pixel]  # uint8 arithmetic wraps mod 256, as PNG wants
    tagged = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.uint8)
    tagged[:, 0] = _FILTER_SUB
    tagged[:, 1:] = filtered
    return tagged.tobytes()


def encode_png(pixels: np.ndarray, *, compression_level: int = 6) -> bytes:
    """Encode an 8-bit ``HxWx3`` (RGB) or ``HxW`` (greyscale) array as PNG bytes, losslessly."""
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be a uint8 numpy array, got {getattr(pixels, 'dtype', type(pixels))}")
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        colour_type, bytes_per_pixel = _RGB, 3
    elif pixels.ndim == 2:
        colour_type, bytes_per_pixel = _GREY, 1
    else:
        raise ValueError(f"pixels must be shaped HxWx3 (RGB) or HxW (greyscale), got {pixels.shape}")
    height, width = pixels.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"pixels must not be empty, got {pixels.shape}")
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    data = zlib.compress(_sub_filtered(np.ascontiguousarray(pixels), bytes_per_pixel), compression_level)
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
