"""The client's view of DICOM inputs: ``predilect.dicom.reader`` with the client's error types.

The reader belongs to the DICOM part and raises that part's errors; the SDK's callers catch
``predilect.client`` errors (``UnsupportedDicomError`` is an ``InputError``, so a batch run
records it as final). Each function here is the reader's, its errors translated ``from`` the cause.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from predilect.client.errors import DicomSupportMissingError, InputError, UnsupportedDicomError
from predilect.dicom import reader
from predilect.dicom.reader import DicomFrame, is_dataset, is_dicom_bytes

if TYPE_CHECKING:
    from pydicom import Dataset

__all__ = [
    "DicomFrame",
    "camera",
    "identity",
    "is_dataset",
    "is_dicom_bytes",
    "iter_frames",
    "pydicom_module",
    "read_dataset",
    "study_uid",
]


@contextlib.contextmanager
def _client_errors() -> Iterator[None]:
    try:
        yield
    except reader.DicomSupportMissingError as e:
        raise DicomSupportMissingError(str(e)) from e
    except reader.DicomReadError as e:
        raise InputError(str(e)) from e
    except reader.UnsupportedDicomError as e:
        raise UnsupportedDicomError(str(e)) from e


def pydicom_module() -> Any:
    """pydicom, imported once; DicomSupportMissingError without the ``[dicom]`` extra."""
    with _client_errors():
        return reader.pydicom_module()


def read_dataset(source: bytes | str | os.PathLike, *, stop_before_pixels: bool = False) -> Dataset:
    """A dataset from DICOM bytes or a path; UnsupportedDicomError / InputError saying why not."""
    with _client_errors():
        return reader.read_dataset(source, stop_before_pixels=stop_before_pixels)


def iter_frames(dataset: Dataset) -> Iterator[DicomFrame]:
    """The instance's frames as payloads (pixels only); UnsupportedDicomError saying why not."""
    with _client_errors():
        yield from reader.iter_frames(dataset)


def camera(dataset: Dataset) -> str | None:
    """The acquisition device named in the header (Manufacturer and model), or None."""
    return reader.camera(dataset)


def field_angle(dataset: Dataset) -> float | None:
    """The camera's field angle in the header (Horizontal Field of View), degrees, or None."""
    return reader.field_angle(dataset)


def identity(dataset: Dataset) -> tuple[str | None, str | None]:
    """(patient ID, eye) from the header, for local bookkeeping only."""
    return reader.identity(dataset)


def study_uid(dataset: Dataset) -> str | None:
    """The header's StudyInstanceUID (the visit), for local bookkeeping only."""
    return reader.study_uid(dataset)
