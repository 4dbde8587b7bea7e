"""The multipart/form-data body the BentoML baseline reads (one image file field), built once per image."""

from __future__ import annotations

BOUNDARY = "predilect-bench-boundary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def multipart_image(payload: bytes, *, field: str = "images") -> bytes:
    """One file field ``field`` holding ``payload``, as BentoML's ``list[Path]`` input reads it."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="fundus.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + payload + f"\r\n--{BOUNDARY}--\r\n".encode()
