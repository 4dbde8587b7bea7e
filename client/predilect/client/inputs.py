"""Turn what a caller gives (bytes, path, numpy array, DICOM) into identifier-free payloads."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from predilect.client import dicom
from predilect.client.errors import InputError
from predilect.jpeg import JpegStructureError, strip_metadata
from predilect.png import encode_png

# bytes (JPEG/PNG/DICOM file), a path to one, an HxWx3 uint8 RGB array, or a pydicom Dataset
ImageInput = Union[bytes, bytearray, memoryview, str, os.PathLike, np.ndarray, Any]


@dataclass(frozen=True)
class Prepared:
    """One request's payload (pixels only) and its local correlation fields."""

    payload: bytes
    sop_instance_uid: str | None = None
    frame: int | None = None
    camera: str | None = None
    field_angle_deg: float | None = None


MAX_IMAGE_BYTES = 32 * 1024 * 1024
"""The largest JPEG/PNG file read: `predilect serve`'s request limit (32 MiB) refuses any larger one."""
MAX_DICOM_BYTES = 512 * 1024 * 1024
"""The largest DICOM file read (its frames are sent one request each)."""


def _read(path: str | os.PathLike) -> bytes:
    """The file's bytes, its size checked before a byte is read (a link may point at anything)."""
    file = Path(path)
    try:
        size = file.stat().st_size
        limit = MAX_DICOM_BYTES if file.suffix.lower() == ".dcm" else MAX_IMAGE_BYTES
        if size > limit:
            raise InputError(
                f"{file} is {size / 1024 / 1024:.0f} MiB, larger than the {limit / 1024 / 1024:.0f} MiB a "
                f"{'DICOM file' if limit == MAX_DICOM_BYTES else 'photograph'} may be; not read"
                + (f" (it is a link to {file.resolve()})" if file.is_symlink() else "")
            )
        return file.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read image {path}: {e.strerror}; check the path and its permissions") from e


def _plain(data: bytes) -> Prepared:
    if data[:2] == b"\xff\xd8":
        # Unparseable: sent unchanged, the server names what is wrong with it.
        with contextlib.suppress(JpegStructureError):
            data = strip_metadata(data, allow_truncated=True)
    return Prepared(payload=data)


def _frames(dataset: Any) -> Iterator[Prepared]:
    camera, angle = dicom.camera(dataset), dicom.field_angle(dataset)
    for frame in dicom.iter_frames(dataset):
        yield Prepared(
            payload=frame.payload,
            sop_instance_uid=frame.sop_instance_uid,
            frame=frame.frame,
            camera=camera,
            field_angle_deg=angle,
        )


def prepare(image: ImageInput) -> Iterator[Prepared]:
    """The payloads of one input: one for an image, one per frame for DICOM.

    JPEG APPn/COM segments (EXIF etc.) are stripped from every JPEG; numpy arrays are sent as
    lossless PNG; DICOM is read locally and only its pixels are sent (see ``dicom``).
    """
    if dicom.is_dataset(image):
        return _frames(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"a numpy image must be HxWx3 uint8 RGB, got {image.dtype} {image.shape}")
        return iter([Prepared(payload=encode_png(image))])
    if isinstance(image, (str, os.PathLike)):
        data = _read(image)
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    else:
        raise TypeError(f"image must be bytes, a path, a numpy array or a pydicom Dataset, got {type(image).__name__}")
    if dicom.is_dicom_bytes(data):
        return _frames(dicom.read_dataset(data))
    return iter([_plain(data)])


def single_frame(image: ImageInput) -> Prepared:
    """The one payload of a single-frame input; InputError for a multi-frame DICOM instance."""
    payloads = prepare(image)
    first = next(payloads)
    if next(payloads, None) is not None:
        raise InputError("the DICOM instance has several frames; screen it with screen_frames() or screen_many()")
    return first
