"""DICOM inputs against the real server: img2dcm-wrapped JPEGs, uncompressed multi-frame, SR export,
and no patient identifier in requests, logs or the server log."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest

from predilect.client import (
    InputError,
    ScreeningResult,
    UnsupportedDicomError,
)
from predilect.dicom.sr import structured_report

OP_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
NAME, PATIENT_ID = "Doe^Jane", "PID-4711-XYZ"


def _values(result: ScreeningResult) -> np.ndarray:
    return np.array(list(result.scores.values()))


def _pixels(jpeg: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


@pytest.mark.parametrize("sop_class", ["oph", "vlp", "sc"])
def test_screen_dicom_matches_source_jpeg_when_wrapped_by_img2dcm(
    client, fundus_jpeg, dicom_from_jpeg, tmp_path: Path, sop_class: str
) -> None:
    jpeg = tmp_path / "fundus.jpg"
    jpeg.write_bytes(fundus_jpeg(60))
    path = dicom_from_jpeg(jpeg, tmp_path / "fundus.dcm", sop_class=sop_class)
    dataset = pydicom.dcmread(path)
    assert dataset.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    for given in (path, dataset, path.read_bytes()):
        result = client.screen(given)
        np.testing.assert_allclose(_values(result), _values(client.screen(jpeg)), rtol=0, atol=1e-6)
        assert (result.sop_instance_uid, result.frame) == (dataset.SOPInstanceUID, 1)


def _jpeg_carrying_identifiers(jpeg: bytes) -> bytes:
    """The photograph re-saved with the patient's name and ID in EXIF (APP1) and a COM segment."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x010E] = f"{NAME} {PATIENT_ID}"  # ImageDescription
    buffer = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(
        buffer, format="JPEG", quality=92, exif=exif.tobytes(), comment=f"patient {NAME} {PATIENT_ID}".encode()
    )
    return buffer.getvalue()


def test_screen_dicom_sends_no_patient_identifier_when_dataset_and_jpeg_carry_them(
    client, triton_server, fundus_jpeg, dicom_from_jpeg, tmp_path: Path, monkeypatch, caplog
) -> None:
    import tritonclient.grpc._client as grpc_client_module

    jpeg = tmp_path / "named.jpg"
    jpeg.write_bytes(_jpeg_carrying_identifiers(fundus_jpeg(61)))
    path = dicom_from_jpeg(
        jpeg, tmp_path / "named.dcm", keep_appn=True, keys={"PatientName": NAME, "PatientID": PATIENT_ID}
    )
    dataset = pydicom.dcmread(path)
    assert (str(dataset.PatientName), dataset.PatientID) == (NAME, PATIENT_ID)
    assert NAME.encode() in dataset.PixelData and b"Exif" in dataset.PixelData, "the frame must carry them"

    sent: list[bytes] = []
    build = grpc_client_module._get_inference_request

    def recording(*args, **kwargs):
        request = build(*args, **kwargs)
        sent.append(request.SerializeToString())
        return request

    monkeypatch.setattr(grpc_client_module, "_get_inference_request", recording)
    caplog.set_level(logging.DEBUG)
    result = client.screen(path)
    assert result.sop_instance_uid == dataset.SOPInstanceUID
    assert len(sent) == 1
    forbidden = [NAME.encode(), b"Jane", PATIENT_ID.encode(), b"Exif", dataset.SOPInstanceUID.encode()]
    assert not [f for f in forbidden if f in sent[0]], "an identifier left the client"
    assert any("screened" in r.getMessage() for r in caplog.records), "DEBUG logs were captured"
    assert not [r for r in caplog.records if NAME in r.getMessage() or PATIENT_ID in r.getMessage()]
    server_log = Path(triton_server.log_path).read_text(errors="replace")
    assert NAME not in server_log and PATIENT_ID not in server_log
    np.testing.assert_allclose(_values(result), _values(client.screen(jpeg)), rtol=0, atol=1e-6)


def _multiframe(frames: list[np.ndarray], path: Path) -> Path:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = OP_8BIT, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = OP_8BIT, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = NAME, PATIENT_ID, "OP"
    ds.Rows, ds.Columns = frames[0].shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = len(frames)
    ds.PixelData = np.stack(frames).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_screen_frames_returns_one_result_per_frame_when_dicom_is_uncompressed_multiframe(
    client, fundus_jpeg, tmp_path: Path
) -> None:
    frames = [_pixels(fundus_jpeg(62)), _pixels(fundus_jpeg(63))]
    path = _multiframe(frames, tmp_path / "two.dcm")
    results = client.screen_frames(path)
    assert [r.frame for r in results] == [1, 2]
    for result, pixels in zip(results, frames, strict=True):
        np.testing.assert_allclose(_values(result), _values(client.screen(pixels)), rtol=0, atol=1e-6)
    with pytest.raises(InputError, match="several frames"):
        client.screen(path)
    items = list(client.screen_many([path]))
    assert sorted(i.result.frame for i in items) == [1, 2] and {i.frames for i in items} == {2}


def test_screen_raises_unsupported_dicom_error_when_sop_class_is_not_photographic(
    client, fundus_jpeg, tmp_path: Path
) -> None:
    path = _multiframe([_pixels(fundus_jpeg(64))], tmp_path / "ct.dcm")
    dataset = pydicom.dcmread(path)
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    with pytest.raises(UnsupportedDicomError, match="Ophthalmic Photography"):
        client.screen(dataset)


def _code(concept) -> str:
    """A coded concept's value: CodeValue, or LongCodeValue past 16 characters."""
    return str(concept.get("CodeValue") or concept.get("LongCodeValue"))


def test_structured_report_references_source_and_names_model_when_read_back(
    client, fundus_jpeg, dicom_from_jpeg, tmp_path: Path
) -> None:
    jpeg = tmp_path / "sr.jpg"
    jpeg.write_bytes(fundus_jpeg(65))
    source = pydicom.dcmread(
        dicom_from_jpeg(jpeg, tmp_path / "sr-source.dcm", keys={"PatientName": NAME, "PatientID": PATIENT_ID})
    )
    result = client.screen(source, heatmaps=True)
    assert result.gradable and result.positive, "the fixture photograph is gradable and has findings"
    structured_report(result, source, client.catalog).save_as(tmp_path / "report.dcm", enforce_file_format=True)
    report = pydicom.dcmread(tmp_path / "report.dcm")
    assert report.SOPClassUID == COMPREHENSIVE_SR
    assert (str(report.PatientName), report.PatientID, report.StudyInstanceUID) == (
        NAME,
        PATIENT_ID,
        source.StudyInstanceUID,
    )
    evidence = report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    items = report.ContentSequence
    texts = {i.ConceptNameCodeSequence[0].CodeMeaning: i.TextValue for i in items if i.ValueType == "TEXT"}
    assert texts["Algorithm Name"] == result.model_name and texts["Algorithm Version"] == result.model_version
    assert texts["Referral rules digest"] == result.rules_digest
    assert texts["Disease catalog digest"] == result.catalog_digest
    assert (texts["Screening decision"], texts["Gradability"]) == (result.decision, result.quality.describe())
    image = next(i for i in items if i.ValueType == "IMAGE")
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    numbers = {
        _code(i.ConceptNameCodeSequence[0]): float(i.MeasuredValueSequence[0].NumericValue)
        for i in items
        if i.ValueType == "NUM"
    }
    assert numbers.pop("quality_score") == pytest.approx(result.quality.score, abs=1e-6)
    assert result.probabilities is not None and list(numbers) == list(result.probabilities)
    np.testing.assert_allclose(list(numbers.values()), list(result.probabilities.values()), rtol=0, atol=1e-6)
    (laterality,) = [i for i in items if i.ConceptNameCodeSequence[0].CodeMeaning == "Laterality"]
    assert laterality.RelationshipType == "HAS CONCEPT MOD" and laterality.ConceptCodeSequence[0].CodeMeaning == "Right"
    assert report.SpecificCharacterSet == "ISO_IR 192"
    codes = [i for i in items if i.ValueType == "CODE" and i is not laterality]
    assert [_code(i.ConceptCodeSequence[0]) for i in codes] == result.positive
    for finding in codes:  # each finding's heatmap peak, in source pixels, selected from the source image
        (scoord,) = finding.ContentSequence
        heatmap = result.heatmap(_code(finding.ConceptCodeSequence[0]))
        assert heatmap is not None and scoord.ValueType == "SCOORD" and scoord.GraphicType == "POINT"
        x, y = (float(v) for v in scoord.GraphicData)
        assert (x, y) == pytest.approx((heatmap.peak[0] * source.Columns, heatmap.peak[1] * source.Rows), abs=1e-3)
        assert scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_structured_report_reports_no_probability_when_image_ungradable(
    client, dicom_from_jpeg, tmp_path: Path
) -> None:
    from PIL import Image

    jpeg = tmp_path / "external.jpg"
    Image.new("RGB", (640, 480), (200, 150, 120)).save(jpeg, quality=90)  # a skin-coloured frame: no fundus
    source = pydicom.dcmread(dicom_from_jpeg(jpeg, tmp_path / "external.dcm", keys={"PatientID": PATIENT_ID}))
    result = client.screen(source)
    assert not result.gradable and result.probabilities is None and result.audit_probabilities
    report = structured_report(result, source, client.catalog)
    items = report.ContentSequence
    numbers = [_code(i.ConceptNameCodeSequence[0]) for i in items if i.ValueType == "NUM"]
    assert numbers == ["quality_score"], "no disease probability is presented for an ungradable image"
    texts = {i.ConceptNameCodeSequence[0].CodeMeaning: i.TextValue for i in items if i.ValueType == "TEXT"}
    assert texts["Screening decision"] == "ungradable" and texts["Gradability"].startswith("ungradable — ")


def test_prepare_raises_only_client_errors_when_dicom_bytes_are_damaged(
    fundus_jpeg, dicom_from_jpeg, tmp_path: Path
) -> None:
    """Truncated and bit-flipped instances (JPEG baseline and uncompressed, seeded): every failure
    is an UnsupportedDicomError naming the damage, never a pydicom error that stops a batch."""
    import random
    import warnings

    from client_faces import pixels_of, uncompressed_multiframe_dicom

    from predilect.client.inputs import prepare

    jpeg = tmp_path / "small.jpg"
    jpeg.write_bytes(fundus_jpeg(66))
    sources = [
        dicom_from_jpeg(jpeg, tmp_path / "jpeg.dcm").read_bytes(),
        uncompressed_multiframe_dicom([pixels_of(fundus_jpeg(67))[:64, :64]] * 2, tmp_path / "raw.dcm").read_bytes(),
    ]
    rng, failures = random.Random(0), 0
    for source in sources:
        for _ in range(150):
            data = bytearray(source[: rng.randrange(132, len(source))] if rng.random() < 0.5 else source)
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(132, len(data))] = rng.randrange(256)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom warns about the values it cannot read
                try:
                    list(prepare(bytes(data)))
                except UnsupportedDicomError:
                    failures += 1
    assert failures > 50, "the damage must be detected, not only survived"
