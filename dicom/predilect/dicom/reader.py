"""DICOM inputs: the frames of an OP / VL Photographic / Secondary Capture instance, as payloads.

Only pixels leave this module: a JPEG-baseline frame as its compressed bytes minus the
metadata segments (``jpeg.strip_metadata``), anything else decoded and re-encoded as lossless
PNG. The SOP Instance UID and frame number travel beside the payload, for local correlation
only. pydicom comes from the optional ``[dicom]`` extra and is imported on first use.

Its errors are the DICOM part's own (``DicomInputError`` and its kinds, all ``UserError``), so
training can read DICOM records without the client; the client SDK turns them into its
``UnsupportedDicomError`` / ``DicomSupportMissingError`` (``predilect.client.errors``).
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from predilect import contract
from predilect.errors import UserError
from predilect.jpeg import JpegStructureError, strip_metadata
from predilect.png import encode_png
from predilect.preprocess.config import check_field_angle

if TYPE_CHECKING:
    from pydicom import Dataset

SUPPORTED_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.77.1.5.1": "Ophthalmic Photography 8 Bit Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
UNCOMPRESSED_SYNTAXES = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
# What pydicom raises on a damaged file: it parses lazily, so any attribute read can meet the damage.
_MALFORMED = (ValueError, TypeError, AttributeError, KeyError, IndexError, NotImplementedError, EOFError, struct.error)
_PREAMBLE_BYTES = 128
_PHOTOMETRIC = {"RGB": 3, "MONOCHROME2": 1}  # photometric interpretation -> samples per pixel


class DicomInputError(UserError, ValueError):
    """A DICOM input that cannot be read or screened; the message says why."""


class UnsupportedDicomError(DicomInputError):
    """An instance this reader does not screen: not DICOM, SOP class, transfer syntax, pixel format, damage."""


class DicomReadError(DicomInputError):
    """The file holding the instance cannot be read (missing, permissions, I/O)."""


class DicomSupportMissingError(UserError, ImportError):
    """A DICOM input was given but pydicom (the optional ``[dicom]`` extra) is not installed."""


@dataclass(frozen=True)
class DicomFrame:
    """One frame ready to send: ``payload`` holds pixels only (JPEG or PNG bytes)."""

    payload: bytes
    sop_instance_uid: str
    frame: int


_IMPORT_LOCK = threading.Lock()
_LOADED: list[Any] = []
# Everything the DICOM path imports lazily, imported once, by one thread: threads importing pydicom
# and its submodules at the same time meet "partially initialized module 'pydicom'" errors.
_SUBMODULES = ("pydicom.encaps", "pydicom.errors", "pydicom.pixels", "pydicom.uid", "pydicom.filewriter")


def pydicom_module() -> Any:
    """pydicom, imported once under a lock (with the submodules used here), or DicomSupportMissingError."""
    if _LOADED:
        return _LOADED[0]
    with _IMPORT_LOCK:
        if not _LOADED:
            import importlib

            try:
                pydicom = importlib.import_module("pydicom")
                for name in _SUBMODULES:
                    importlib.import_module(name)
            except ImportError as e:
                raise DicomSupportMissingError(
                    "DICOM input needs the optional extra: pip install 'predilect[dicom]'"
                ) from e
            _LOADED.append(pydicom)
    return _LOADED[0]


def is_dataset(obj: object) -> bool:
    """True for a pydicom Dataset; never imports pydicom (without it no Dataset can exist). A pydicom
    that another thread is still importing has no ``Dataset`` yet, and no instance of it either."""
    dataset_class = getattr(sys.modules.get("pydicom"), "Dataset", None)
    return dataset_class is not None and isinstance(obj, dataset_class)


def is_dicom_bytes(data: bytes) -> bool:
    """True when ``data`` is in the DICOM file format (128-byte preamble, then ``DICM``)."""
    return data[_PREAMBLE_BYTES : _PREAMBLE_BYTES + 4] == b"DICM"


@contextlib.contextmanager
def _malformed(what: str) -> Iterator[None]:
    """Turn pydicom's errors about a damaged instance into UnsupportedDicomError naming ``what``."""
    pydicom_errors = sys.modules.get("pydicom.errors")
    extra = (pydicom_errors.BytesLengthException,) if pydicom_errors is not None else ()
    try:
        yield
    except DicomInputError:
        raise
    except (*_MALFORMED, *extra) as e:
        raise UnsupportedDicomError(f"{what} is damaged or malformed: {e}") from e


def read_dataset(source: bytes | str | os.PathLike, *, stop_before_pixels: bool = False) -> Dataset:
    """A dataset from DICOM file bytes or a path; UnsupportedDicomError when it is not DICOM,
    DicomReadError when the file cannot be read."""
    pydicom = pydicom_module()
    from pydicom.errors import InvalidDicomError

    stream: Any = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
    try:
        with _malformed(_describe(source)):
            return pydicom.dcmread(stream, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as e:
        raise UnsupportedDicomError(f"{_describe(source)} is not a DICOM file: {e}") from e
    except OSError as e:
        raise DicomReadError(f"cannot read {_describe(source)}: {e.strerror or e}") from e


def _describe(source: object) -> str:
    return "the bytes given" if isinstance(source, bytes) else str(source)


def frame_count(dataset: Dataset) -> int:
    return int(dataset.get("NumberOfFrames", 1) or 1)


def _transfer_syntax(dataset: Dataset) -> str:
    meta = getattr(dataset, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if syntax is None:
        raise UnsupportedDicomError(
            "the dataset has no file_meta.TransferSyntaxUID; read it with pydicom.dcmread "
            "or set ds.file_meta.TransferSyntaxUID"
        )
    return str(syntax)


def check_supported(dataset: Dataset) -> str:
    """The transfer syntax of a screenable instance; UnsupportedDicomError saying why not otherwise."""
    sop_class = str(dataset.get("SOPClassUID", ""))
    if sop_class not in SUPPORTED_SOP_CLASSES:
        raise UnsupportedDicomError(
            f"SOP class {sop_class or '(none)'} is not screened; send Ophthalmic "
            "Photography 8 Bit, VL Photographic or Secondary Capture images"
        )
    if "PixelData" not in dataset:
        raise UnsupportedDicomError("the instance has no Pixel Data")
    if not dataset.get("SOPInstanceUID"):
        raise UnsupportedDicomError("the instance has no SOP Instance UID to correlate its results with")
    syntax = _transfer_syntax(dataset)
    if syntax != JPEG_BASELINE and syntax not in UNCOMPRESSED_SYNTAXES:
        raise UnsupportedDicomError(
            f"transfer syntax {syntax} is not supported; send JPEG baseline "
            f"({JPEG_BASELINE}) or uncompressed little-endian pixel data"
        )
    return syntax


def _jpeg_frames(dataset: Dataset) -> Iterator[bytes]:
    pydicom_module()
    from pydicom.encaps import generate_frames

    for number, frame in enumerate(generate_frames(dataset.PixelData, number_of_frames=frame_count(dataset)), 1):
        try:
            yield strip_metadata(frame, allow_truncated=False)
        except JpegStructureError as e:
            raise UnsupportedDicomError(f"frame {number} is not a well-formed baseline JPEG: {e}") from e


def _decoded_frames(dataset: Dataset) -> Iterator[bytes]:
    photometric = str(dataset.get("PhotometricInterpretation", ""))
    if photometric not in _PHOTOMETRIC or int(dataset.get("BitsAllocated", 0)) != 8:
        raise UnsupportedDicomError(
            f"uncompressed pixels must be 8-bit RGB or MONOCHROME2, got {photometric or '?'} "
            f"with {dataset.get('BitsAllocated', '?')} bits allocated"
        )
    pixels = dataset.pixel_array
    single_ndim = 3 if _PHOTOMETRIC[photometric] == 3 else 2
    frames = pixels[None] if pixels.ndim == single_ndim else pixels
    for frame in frames:
        yield encode_png(frame)


def iter_frames(dataset: Dataset) -> Iterator[DicomFrame]:
    """The frames of an instance (1-based numbers), each as an identifier-free payload, decoded
    one at a time where the transfer syntax allows (JPEG baseline)."""
    with _malformed("the DICOM header"):
        syntax = check_supported(dataset)
        uid = str(dataset.SOPInstanceUID)
    payloads = _jpeg_frames(dataset) if syntax == JPEG_BASELINE else _decoded_frames(dataset)
    number = 0
    while True:
        with _malformed(f"frame {number + 1}"):
            payload = next(payloads, None)
        if payload is None:
            return
        number += 1
        yield DicomFrame(payload=payload, sop_instance_uid=uid, frame=number)


def camera(dataset: Dataset) -> str | None:
    """The acquisition device, "Manufacturer ManufacturerModelName", from a header; None where absent or
    unreadable. Sent with the request (``contract.REQUEST_CAMERA``): the label of the served shift metrics."""
    try:
        with _malformed("the DICOM header"):
            parts = [str(dataset.get(keyword) or "").strip() for keyword in ("Manufacturer", "ManufacturerModelName")]
    except UnsupportedDicomError:
        return None
    return " ".join(p for p in parts if p) or None


def field_angle(dataset: Dataset) -> float | None:
    """The camera's field angle in degrees, Horizontal Field of View (0022,000C) of the ophthalmic photography
    modules; None where absent, unreadable or not a fundus camera's angle. Sent with the request
    (``contract.REQUEST_FIELD_ANGLE_DEG``): preprocessing scales the crop to the model's field angle."""
    try:
        with _malformed("the DICOM header"):
            value = dataset.get("HorizontalFieldOfView")
    except UnsupportedDicomError:
        return None
    if value is None or value == "":
        return None
    try:
        return check_field_angle(float(value))
    except (TypeError, ValueError):
        return None


def identity(dataset: Dataset) -> tuple[str | None, str | None]:
    """(patient ID, canonical eye) from a header, for local bookkeeping only; None where absent,
    unreadable, or a laterality that is not one eye (B, U)."""
    try:
        with _malformed("the DICOM header"):
            patient = str(dataset.get("PatientID") or "") or None
            laterality = str(dataset.get("ImageLaterality") or dataset.get("Laterality") or "")
    except UnsupportedDicomError:
        return None, None
    try:
        eye = contract.parse_eye(laterality) if laterality else None
    except ValueError:
        eye = None
    return patient, eye


def study_uid(dataset: Dataset) -> str | None:
    """The StudyInstanceUID of a header (the visit an exam belongs to); None where absent or unreadable."""
    try:
        with _malformed("the DICOM header"):
            return str(dataset.get("StudyInstanceUID") or "") or None
    except UnsupportedDicomError:
        return None
