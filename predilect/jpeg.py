"""Strip the JPEG segments that can carry identifiers, leaving the image data byte for byte.

APPn segments (EXIF, XMP, IPTC, ICC, maker notes) and COM comments may hold names, IDs,
dates or device serials. Kept: the frame/scan headers and tables the decoder needs, a JFIF
APP0 rewritten without its thumbnail, an Adobe APP14 (its colour-transform flag changes how
the pixels decode), and every entropy-coded segment unchanged. Bytes after EOI are dropped.

The EXIF Orientation tag says how the stored pixels are meant to be seen (a camera held
sideways): it is kept, alone, in a minimal APP1 written anew (``Exif`` + a TIFF header + one IFD0
entry) -- no other EXIF field, no thumbnail -- so the server shows the model the upright picture.
"""

from __future__ import annotations

import struct

_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA
_APP0, _APP1, _APP14, _COM = 0xE0, 0xE1, 0xEE, 0xFE
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: markers without a length
_JFIF_NO_THUMBNAIL_LENGTH = 16


class JpegStructureError(ValueError):
    """The bytes are not a JPEG stream this module can walk."""


_EXIF_HEADER = b"Exif\x00\x00"
_ORIENTATION_TAG, _SHORT = 0x0112, 3


def exif_orientation(body: bytes) -> int | None:
    """The Orientation (2-8) in an APP1 EXIF body; None when absent, 1 (as stored), or unreadable."""
    if not body.startswith(_EXIF_HEADER):
        return None
    tiff = body[len(_EXIF_HEADER) :]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return None
    magic, ifd0 = struct.unpack(order + "HI", tiff[2:8])
    if magic != 42 or ifd0 + 2 > len(tiff):
        return None
    (count,) = struct.unpack(order + "H", tiff[ifd0 : ifd0 + 2])
    for entry in range(min(count, (len(tiff) - ifd0 - 2) // 12)):
        start = ifd0 + 2 + 12 * entry
        tag, kind, number = struct.unpack(order + "HHI", tiff[start : start + 8])
        if tag == _ORIENTATION_TAG and kind == _SHORT and number == 1:
            (value,) = struct.unpack(order + "H", tiff[start + 8 : start + 10])
            return value if 2 <= value <= 8 else None
    return None


def orientation_segment(orientation: int) -> bytes:
    """A minimal APP1: EXIF with the one IFD0 entry Orientation = ``orientation`` (big-endian TIFF)."""
    entry = struct.pack(">HHIHH", _ORIENTATION_TAG, _SHORT, 1, orientation, 0)
    tiff = b"MM" + struct.pack(">HI", 42, 8) + struct.pack(">H", 1) + entry + struct.pack(">I", 0)
    return _segment(_APP1, _EXIF_HEADER + tiff)


def _keep(marker: int, body: bytes) -> bytes | None:
    """The segment to write for marker+body, or None to drop it."""
    if marker == _APP1:
        orientation = exif_orientation(body)
        return orientation_segment(orientation) if orientation is not None else None
    if marker == _APP0:
        if body.startswith(b"JFIF\x00") and len(body) >= 12:
            # version, units and density kept; thumbnail size zeroed and thumbnail dropped
            return struct.pack(">BBH", 0xFF, _APP0, _JFIF_NO_THUMBNAIL_LENGTH) + body[:12] + b"\x00\x00"
        return None
    if marker == _APP14:
        return _segment(marker, body) if body.startswith(b"Adobe") else None
    if 0xE1 <= marker <= 0xEF or marker == _COM:
        return None
    return _segment(marker, body)


def _segment(marker: int, body: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body


def _scan_end(data: bytes, start: int) -> int:
    """Index of the first marker after the entropy-coded data starting at ``start``, or -1 when
    the stream ends inside that data (truncated)."""
    i = start
    while True:
        i = data.find(b"\xff", i)
        if i < 0 or i + 1 >= len(data):
            return -1
        following = data[i + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            i += 1 if following == 0xFF else 2  # stuffed byte, restart marker, or fill byte
            continue
        return i


def strip_metadata(data: bytes, *, allow_truncated: bool) -> bytes:
    """The JPEG without APPn/COM segments (see the module docstring); raises JpegStructureError.

    ``allow_truncated`` keeps a stream that ends inside its entropy-coded data as it is (minus
    the stripped segments), so that the server can name the problem; otherwise it is an error.
    """
    if data[:2] != b"\xff\xd8":
        raise JpegStructureError("not a JPEG stream (no SOI marker)")
    out, i = [b"\xff\xd8"], 2
    while i < len(data):
        if data[i] != 0xFF:
            raise JpegStructureError(f"expected a marker at byte {i}")
        while i < len(data) and data[i] == 0xFF:
            i += 1  # fill bytes before a marker
        if i >= len(data):
            break
        marker, i = data[i], i + 1
        if marker == _EOI:
            out.append(b"\xff\xd9")
            return b"".join(out)
        if marker in _STANDALONE:
            out.append(bytes((0xFF, marker)))
            continue
        if i + 2 > len(data):
            raise JpegStructureError("JPEG ends inside a segment header")
        (length,) = struct.unpack(">H", data[i : i + 2])
        body = data[i + 2 : i + length]
        if length < 2 or len(body) != length - 2:
            raise JpegStructureError(f"segment 0xFF{marker:02X} at byte {i - 2} overruns the stream")
        i += length
        kept = _keep(marker, body)
        if kept is not None:
            out.append(kept)
        if marker == _SOS:
            end = _scan_end(data, i)
            if end < 0:
                if not allow_truncated:
                    raise JpegStructureError("JPEG ends inside entropy-coded data (no EOI)")
                out.append(data[i:])
                return b"".join(out)
            out.append(data[i:end])
            i = end
    raise JpegStructureError("JPEG has no EOI marker")
