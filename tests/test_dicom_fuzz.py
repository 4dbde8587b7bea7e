"""Fuzz (hypothesis, bounded): DICOM frame extraction on damaged and hostile instances.

Whatever the bytes -- flipped, overwritten, inserted or cut, or a well-formed file whose header
lies (frame count, rows/columns, bit depth, photometric interpretation, transfer syntax) --
``prepare`` yields identifier-free payloads or raises an ``InputError`` naming the damage; never
another exception (which would stop a batch run or kill the gateway's worker), never the
patient's name or ID inside a payload. ``max_examples`` keeps it to seconds in CI; raise it locally
with ``--hypothesis-seed`` / a profile to search longer.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pydicom
from client_faces import jpeg_multiframe_dicom, pixels_of, tiny_jpeg, uncompressed_multiframe_dicom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from predilect.client.errors import InputError
from predilect.client.inputs import prepare

NAME, PATIENT_ID = b"Fuzz^Patient", b"PID-FUZZ-4711"
_SOURCES: dict[str, bytes] = {}


def _with_identity(path: Path) -> bytes:
    dataset = pydicom.dcmread(path)
    dataset.PatientName, dataset.PatientID = NAME.decode(), PATIENT_ID.decode()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _sources(tmp: Path) -> dict[str, bytes]:
    if not _SOURCES:
        tmp.mkdir(parents=True, exist_ok=True)
        jpeg = tiny_jpeg(32)
        _SOURCES["jpeg"] = _with_identity(jpeg_multiframe_dicom([jpeg, jpeg], tmp / "jpeg.dcm"))
        pixels = pixels_of(jpeg)
        _SOURCES["raw"] = _with_identity(uncompressed_multiframe_dicom([pixels, pixels], tmp / "raw.dcm"))
    return _SOURCES


def _extract(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the values it cannot read
        try:
            payloads = [p.payload for p in prepare(data)]
        except InputError:
            return
    for payload in payloads:
        assert payload and NAME not in payload and PATIENT_ID not in payload


_FIELDS = {
    "NumberOfFrames": st.sampled_from(["0", "1", "3", "-1", "65535", "2147483647", "x"]),
    "Rows": st.sampled_from([0, 1, 31, 33, 65535]),
    "Columns": st.sampled_from([0, 1, 31, 33, 65535]),
    "BitsAllocated": st.sampled_from([0, 1, 8, 12, 16, 32]),
    "SamplesPerPixel": st.sampled_from([0, 1, 3, 4]),
    "PhotometricInterpretation": st.sampled_from(["RGB", "MONOCHROME2", "YBR_FULL", "PALETTE COLOR", ""]),
    "PlanarConfiguration": st.sampled_from([0, 1, 2]),
}
_SYNTAXES = st.sampled_from(
    ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70", "1.2.3"]
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_prepare_yields_clean_payloads_or_input_error_when_dicom_bytes_are_mutated(
    data: st.DataObject, tmp_path_factory
) -> None:
    source = _sources(tmp_path_factory.getbasetemp() / "dicom-fuzz")[data.draw(st.sampled_from(["jpeg", "raw"]))]
    mutated = bytearray(source)
    for _ in range(data.draw(st.integers(1, 6))):
        if len(mutated) <= 133:
            break
        kind = data.draw(st.sampled_from(["flip", "splat", "insert", "cut"]))
        at = data.draw(st.integers(132, len(mutated) - 1))  # past the preamble: still "DICOM" to the client
        if kind == "flip":
            mutated[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "splat":
            mutated[at : at + 16] = data.draw(st.binary(min_size=1, max_size=16))
        elif kind == "insert":
            mutated[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        else:
            del mutated[at : at + data.draw(st.integers(1, 2048))]
    _extract(bytes(mutated))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_prepare_yields_clean_payloads_or_input_error_when_dicom_header_lies(
    data: st.DataObject, tmp_path_factory
) -> None:
    source = _sources(tmp_path_factory.getbasetemp() / "dicom-fuzz")[data.draw(st.sampled_from(["jpeg", "raw"]))]
    dataset = pydicom.dcmread(io.BytesIO(source))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            for keyword in data.draw(st.sets(st.sampled_from(sorted(_FIELDS)), min_size=1, max_size=3)):
                setattr(dataset, keyword, data.draw(_FIELDS[keyword]))
            if data.draw(st.booleans()):
                dataset.file_meta.TransferSyntaxUID = pydicom.uid.UID(data.draw(_SYNTAXES))
            dataset.save_as(buffer, enforce_file_format=True)
        except (ValueError, TypeError, OverflowError):
            return  # pydicom will not even make this header; nothing to send
    _extract(buffer.getvalue())
