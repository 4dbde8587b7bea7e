"""The DICOM gateway with DCMTK's storescu as a real sender, against the real server."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pydicom
from client_faces import LateProxy, jpeg_multiframe_dicom

from predilect import contract
from predilect.client import JournalRecord, RetryPolicy, ScreeningClient
from predilect.client.gateway import DicomGateway, GatewayConfig, RemoteAE
from predilect.serving.server import TritonServer, free_port

if shutil.which("storescu") is None:
    raise RuntimeError("DCMTK's storescu is missing: `make system-deps` installs it (apt-get install dcmtk)")

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
UNCOMPRESSED_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")
NAME, PATIENT_ID = "Roe^Richard", "PID-9000"


def _storescu(
    port: int, files: list[Path], *, calling_aet: str = "STORESCU", verbose: bool = False
) -> subprocess.CompletedProcess:
    # -xy -R: propose JPEG baseline and uncompressed, for the SOP classes of the files only
    return subprocess.run(
        [
            "storescu",
            "-xy",
            "-R",
            *(["-v"] if verbose else []),
            "-aet",
            calling_aet,
            "-aec",
            "PREDILECT",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _uncompressed(jpeg: bytes, path: Path) -> Path:
    import io

    from PIL import Image
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ImplicitVRLittleEndian, generate_uid

    pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", generate_uid()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = NAME, PATIENT_ID, "OT"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


class SrReceiver:
    """A pynetdicom storage SCP collecting the SRs the gateway forwards."""

    def __init__(self) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import ComprehensiveSRStorage

        self.received: list = []
        self.port = free_port()
        ae = AE(ae_title="ARCHIVE")
        ae.add_supported_context(ComprehensiveSRStorage)
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        self._lock = threading.Lock()

    def _store(self, event) -> int:
        with self._lock:
            self.received.append(event.dataset)
        return 0x0000

    def close(self) -> None:
        self._server.shutdown()


def _config(tmp_path: Path, **overrides) -> GatewayConfig:
    options = dict(
        incoming_dir=tmp_path / "incoming",
        results_dir=tmp_path / "results",
        port=free_port(),
        bind_address="127.0.0.1",
        allowed_calling_aets=("STORESCU",),
        min_free_bytes=1,
    )
    options.update(overrides)
    return GatewayConfig(**options)


def _records(config: GatewayConfig) -> list[dict]:
    path = config.results_dir / "results.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    for line in lines:
        JournalRecord.model_validate_json(line)  # the record screen writes, version and all
    return [json.loads(line) for line in lines]


def test_gateway_screens_and_writes_sr_when_storescu_sends_jpeg_and_uncompressed(
    triton_server: TritonServer, fundus_jpeg, dicom_from_jpeg, tmp_path: Path
) -> None:
    jpeg = tmp_path / "eye.jpg"
    jpeg.write_bytes(fundus_jpeg(70))
    files = [
        dicom_from_jpeg(jpeg, tmp_path / "eye.dcm", keys={"PatientName": NAME, "PatientID": PATIENT_ID}),
        _uncompressed(fundus_jpeg(71), tmp_path / "raw.dcm"),
    ]
    sources = [pydicom.dcmread(f) for f in files]
    archive = SrReceiver()
    config = _config(tmp_path, forward_to=RemoteAE("127.0.0.1", archive.port, "ARCHIVE"))
    client = ScreeningClient(triton_server.grpc_url, timeout_s=60)
    try:
        gateway = DicomGateway(client, config).start()
        try:
            sent = _storescu(gateway.port, files)
            assert sent.returncode == 0, sent.stderr
        finally:
            gateway.stop()  # drains the queue: every received instance is screened before it returns
        records = {r["sop_instance_uid"]: r for r in _records(config)}
        expected = client.screen(jpeg)
    finally:
        client.close()
        archive.close()
    assert set(records) == {s.SOPInstanceUID for s in sources}
    for source in sources:
        stored = pydicom.dcmread(config.incoming_dir / f"{source.SOPInstanceUID}.dcm")
        if source.file_meta.TransferSyntaxUID == JPEG_BASELINE:
            assert stored.file_meta.TransferSyntaxUID == JPEG_BASELINE
        else:  # storescu may re-encode between uncompressed syntaxes; the gateway keeps what arrived
            assert stored.file_meta.TransferSyntaxUID in UNCOMPRESSED_SYNTAXES
        assert stored.PixelData == source.PixelData, "the gateway stores what it receives as-is"
        record = records[source.SOPInstanceUID]
        assert record["error"] is None and record["frame"] == 1
        assert record["schema_version"] == contract.RESULT_SCHEMA_VERSION and record["patient_id"] == PATIENT_ID
        report = pydicom.dcmread(config.results_dir / record["sr"])
        assert report.SOPClassUID == COMPREHENSIVE_SR and report.PatientID == source.PatientID
        image = next(i for i in report.ContentSequence if i.ValueType == "IMAGE")
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        texts = {
            i.ConceptNameCodeSequence[0].CodeMeaning: i.TextValue
            for i in report.ContentSequence
            if i.ValueType == "TEXT"
        }
        assert (texts["Algorithm Name"], texts["Algorithm Version"]) == (expected.model_name, expected.model_version)
    jpeg_record = records[sources[0].SOPInstanceUID]["result"]
    np.testing.assert_allclose(
        list(jpeg_record["probabilities"].values()), list(expected.probabilities.values()), rtol=0, atol=1e-6
    )
    assert sorted(r.SOPClassUID for r in archive.received) == [COMPREHENSIVE_SR] * 2


def test_gateway_rejects_association_when_calling_aet_not_allowed(
    triton_server, fundus_jpeg, dicom_from_jpeg, tmp_path: Path
) -> None:
    jpeg = tmp_path / "eye.jpg"
    jpeg.write_bytes(fundus_jpeg(72))
    path = dicom_from_jpeg(jpeg, tmp_path / "eye.dcm")
    config = _config(tmp_path)
    with ScreeningClient(triton_server.grpc_url, timeout_s=60) as client, DicomGateway(client, config) as gateway:
        sent = _storescu(gateway.port, [path], calling_aet="INTRUDER")
    assert sent.returncode != 0
    assert "Association Rejected" in sent.stderr or "rejected" in sent.stderr.lower(), sent.stderr
    assert not list(config.incoming_dir.glob("*.dcm"))


def test_gateway_answers_out_of_resources_when_free_space_below_watermark(
    triton_server, fundus_jpeg, dicom_from_jpeg, tmp_path: Path
) -> None:
    jpeg = tmp_path / "eye.jpg"
    jpeg.write_bytes(fundus_jpeg(73))
    path = dicom_from_jpeg(jpeg, tmp_path / "eye.dcm")
    config = _config(tmp_path, min_free_bytes=1 << 62)
    with ScreeningClient(triton_server.grpc_url, timeout_s=60) as client, DicomGateway(client, config) as gateway:
        sent = _storescu(gateway.port, [path], verbose=True)
    assert sent.returncode != 0
    assert "Refused: OutOfResources" in sent.stderr, sent.stderr  # DCMTK's name for status 0xA700
    assert not list(config.incoming_dir.glob("*.dcm"))


def test_gateway_cli_screens_then_drains_when_sigterm_after_storescu(
    triton_server: TritonServer, fundus_jpeg, dicom_from_jpeg, tmp_path: Path
) -> None:
    import signal
    import sys
    import time

    jpeg = tmp_path / "eye.jpg"
    jpeg.write_bytes(fundus_jpeg(80))
    dicom = dicom_from_jpeg(jpeg, tmp_path / "eye.dcm", keys={"PatientName": NAME, "PatientID": PATIENT_ID})
    port = free_port()
    gateway = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "predilect.cli",
            "gateway",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--allow-aet",
            "STORESCU",
            "--incoming",
            str(tmp_path / "in"),
            "--out",
            str(tmp_path / "out"),
            "--min-free-mb",
            "1",
            "--server",
            triton_server.grpc_url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while _storescu(port, [dicom]).returncode != 0:  # retried until the SCP listens
            if gateway.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gateway did not come up: {gateway.communicate()[1]}")
            time.sleep(0.5)
    finally:
        gateway.send_signal(signal.SIGTERM)
        _, stderr = gateway.communicate(timeout=60)
    assert gateway.returncode == 0, stderr
    assert "listening on 127.0.0.1" in stderr and "stopping" in stderr
    (record,) = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert record["sop_instance_uid"] == pydicom.dcmread(dicom).SOPInstanceUID
    assert NAME not in stderr and PATIENT_ID not in stderr


def test_gateway_records_frame1_result_with_sr_and_frame2_error_when_frame_2_is_bad(
    triton_server: TritonServer, fundus_jpeg, tmp_path: Path
) -> None:
    path = jpeg_multiframe_dicom([fundus_jpeg(74), b"\xff\xd8\xff\xe0" + bytes(30)], tmp_path / "f2.dcm")
    config = _config(tmp_path)
    with ScreeningClient(triton_server.grpc_url, timeout_s=60) as client, DicomGateway(client, config) as gateway:
        sent = _storescu(gateway.port, [path])
        assert sent.returncode == 0, sent.stderr
    first, second = sorted(_records(config), key=lambda r: r["frame"])
    uid = pydicom.dcmread(path).SOPInstanceUID
    assert (first["frame"], first["frames"], first["eye"], first["sop_instance_uid"]) == (1, 2, "L", uid)
    assert pydicom.dcmread(config.results_dir / first["sr"]).SOPClassUID == COMPREHENSIVE_SR
    assert (second["frame"], second["error_type"], second["sr"]) == (2, "UnsupportedDicomError", None)
    assert sorted(p.name for p in config.results_dir.glob("*.sr.dcm")) == [first["sr"]]


def test_gateway_requeues_instance_at_next_start_when_server_fails_mid_run(
    triton_server: TritonServer, fundus_jpeg, dicom_from_jpeg, tmp_path: Path
) -> None:
    jpeg = tmp_path / "eye.jpg"
    jpeg.write_bytes(fundus_jpeg(75))
    path = dicom_from_jpeg(jpeg, tmp_path / "eye.dcm")
    config = _config(tmp_path)
    host, port = triton_server.grpc_url.rsplit(":", 1)
    proxy = LateProxy(host, int(port))
    proxy.listen()
    fast = RetryPolicy(max_attempts=2, initial_backoff_s=0.05, max_backoff_s=0.1)
    with ScreeningClient(proxy.url, timeout_s=5, retry_policy=fast) as client, DicomGateway(client, config) as gateway:
        proxy.close()  # the screening server goes away after the gateway connected
        sent = _storescu(gateway.port, [path])
        assert sent.returncode == 0, sent.stderr  # storage does not wait for screening
        assert gateway.wait_idle(timeout_s=60)
    assert _records(config) == [], "a server-side failure is not recorded"
    assert list(config.incoming_dir.glob("*.dcm")), "the received instance is kept for the next start"
    with ScreeningClient(triton_server.grpc_url, timeout_s=60) as client, DicomGateway(client, config):
        pass  # start() queues what was received but not recorded; stop() drains it
    (record,) = _records(config)
    assert record["sop_instance_uid"] == pydicom.dcmread(path).SOPInstanceUID and record["error"] is None


def test_gateway_cli_exits_2_with_one_line_when_tls_root_cert_is_missing(tmp_path: Path, capsys) -> None:
    from predilect.client.gateway_cli import main

    code = main(
        ["--port", str(free_port()), "--incoming", str(tmp_path / "in"), "--out", str(tmp_path / "out")]
        + ["--tls-root-cert", str(tmp_path / "missing.pem")]
    )
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"predilect gateway: cannot read TLS file {tmp_path / 'missing.pem'}: No such file or directory"]


def test_gateway_cli_exits_3_and_restores_signal_handlers_when_server_unreachable(tmp_path: Path, capsys) -> None:
    import signal

    from predilect.client.gateway_cli import main

    before = signal.getsignal(signal.SIGTERM)
    argv = ["--port", str(free_port()), "--incoming", str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    assert main([*argv, "--server", f"127.0.0.1:{free_port()}", "--timeout-s", "2"]) == 3
    err = capsys.readouterr().err
    assert "predilect serve" in err and "Traceback" not in err
    assert signal.getsignal(signal.SIGTERM) is before
