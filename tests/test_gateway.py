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
from predilect.dicom.gateway import DicomGateway, GatewayConfig, RemoteAE
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
        from pynetdicom.sop_class import ComprehensiveSRStorage  # type: ignore[attr-defined]  # made at import

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
    from predilect.dicom.gateway_cli import main

    code = main(
        ["--port", str(free_port()), "--incoming", str(tmp_path / "in"), "--out", str(tmp_path / "out")]
        + ["--tls-root-cert", str(tmp_path / "missing.pem")]
    )
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"predilect gateway: cannot read TLS file {tmp_path / 'missing.pem'}: No such file or directory"]


def test_gateway_cli_exits_3_and_restores_signal_handlers_when_server_unreachable(tmp_path: Path, capsys) -> None:
    import signal

    from predilect.dicom.gateway_cli import main

    before = signal.getsignal(signal.SIGTERM)
    argv = ["--port", str(free_port()), "--incoming", str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    assert main([*argv, "--server", f"127.0.0.1:{free_port()}", "--timeout-s", "2"]) == 3
    err = capsys.readouterr().err
    assert "predilect serve" in err and "Traceback" not in err
    assert signal.getsignal(signal.SIGTERM) is before


def _wait_for(condition, *, timeout_s: float) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_gateway_retries_pending_instance_while_running_when_server_comes_back(
    triton_server: TritonServer, fundus_jpeg, dicom_from_jpeg, tmp_path: Path
) -> None:
    jpeg = tmp_path / "eye.jpg"
    jpeg.write_bytes(fundus_jpeg(76))
    path = dicom_from_jpeg(jpeg, tmp_path / "eye.dcm")
    config = _config(tmp_path, retry_interval_s=0.5)
    host, port = triton_server.grpc_url.rsplit(":", 1)
    proxy = LateProxy(host, int(port))
    proxy.listen()
    fast = RetryPolicy(max_attempts=2, initial_backoff_s=0.05, max_backoff_s=0.1)
    with ScreeningClient(proxy.url, timeout_s=5, retry_policy=fast) as client, DicomGateway(client, config) as gateway:
        proxy.close()  # the screening server goes away ("acknowledged while Triton is down")
        assert _storescu(gateway.port, [path]).returncode == 0
        uid = pydicom.dcmread(path).SOPInstanceUID
        assert _wait_for(lambda: gateway.pending == [uid], timeout_s=60)
        assert _records(config) == []
        back = LateProxy(host, int(port), port=proxy.port)  # the server is back, same address
        back.listen()
        try:
            assert _wait_for(lambda: len(_records(config)) == 1, timeout_s=60), "screened without a restart"
        finally:
            back.close()
    (record,) = _records(config)
    assert record["sop_instance_uid"] == uid and record["error"] is None


def test_gateway_keeps_one_result_and_its_sr_when_instance_is_sent_again(
    triton_server: TritonServer, fundus_jpeg, dicom_from_jpeg, tmp_path: Path
) -> None:
    jpeg = tmp_path / "eye.jpg"
    jpeg.write_bytes(fundus_jpeg(77))
    path = dicom_from_jpeg(jpeg, tmp_path / "eye.dcm", keys={"PatientName": NAME, "PatientID": PATIENT_ID})
    config = _config(tmp_path)
    with ScreeningClient(triton_server.grpc_url, timeout_s=60) as client, DicomGateway(client, config) as gateway:
        assert _storescu(gateway.port, [path]).returncode == 0
        assert gateway.wait_idle(timeout_s=60)
        (record,) = _records(config)
        sr = config.results_dir / record["sr"]
        stored = config.incoming_dir / f"{record['sop_instance_uid']}.dcm"
        before = (sr.read_bytes(), sr.stat().st_mtime_ns, stored.stat().st_mtime_ns)
        assert _storescu(gateway.port, [path, path]).returncode == 0, "acknowledged: the sender may move on"
        assert gateway.wait_idle(timeout_s=60)
    with ScreeningClient(triton_server.grpc_url, timeout_s=60) as client, DicomGateway(client, config) as gateway:
        assert _storescu(gateway.port, [path]).returncode == 0  # and after a restart
        assert gateway.wait_idle(timeout_s=60)
    assert len(_records(config)) == 1
    assert (sr.read_bytes(), sr.stat().st_mtime_ns, stored.stat().st_mtime_ns) == before
    for folder in (config.incoming_dir, config.results_dir):
        assert folder.stat().st_mode & 0o777 == 0o700, folder
        for file in folder.iterdir():
            assert file.stat().st_mode & 0o777 == 0o600, file


def test_gateway_accepts_sender_at_once_when_ten_idle_connections_are_open(
    triton_server: TritonServer, fundus_jpeg, dicom_from_jpeg, tmp_path: Path
) -> None:
    import socket
    import time

    jpeg = tmp_path / "eye.jpg"
    jpeg.write_bytes(fundus_jpeg(78))
    path = dicom_from_jpeg(jpeg, tmp_path / "eye.dcm")
    config = _config(tmp_path)
    with ScreeningClient(triton_server.grpc_url, timeout_s=60) as client, DicomGateway(client, config) as gateway:
        idle = [socket.create_connection(("127.0.0.1", gateway.port)) for _ in range(10)]
        try:
            started = time.monotonic()
            sent = _storescu(gateway.port, [path])
            elapsed = time.monotonic() - started
        finally:
            for s in idle:
                s.close()
        assert sent.returncode == 0, sent.stderr
        assert elapsed < config.acse_timeout_s, f"a legitimate sender waited {elapsed:.1f} s"
        assert gateway.wait_idle(timeout_s=60)
    assert len(_records(config)) == 1


def _tls_store(port: int, path: Path, tls_files: dict[str, Path], *, client_cert: bool) -> int | None:
    """C-STORE ``path`` over DICOM TLS with pynetdicom as the sender; the status, or None if refused."""
    import ssl

    from pynetdicom import AE

    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls_files["ca"]))
    if client_cert:
        context.load_cert_chain(tls_files["client"], tls_files["client_key"])
    dataset = pydicom.dcmread(path)
    ae = AE(ae_title="STORESCU")
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="PREDILECT", tls_args=(context, "localhost"))
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_store(dataset)
        return int(status.Status) if status is not None and "Status" in status else None
    finally:
        assoc.release()


def test_gateway_stores_over_dicom_tls_only_from_certified_senders_when_tls_is_on(
    triton_server: TritonServer, fundus_jpeg, dicom_from_jpeg, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    import socket

    from predilect.dicom.gateway import DicomTls

    jpeg = tmp_path / "eye.jpg"
    jpeg.write_bytes(fundus_jpeg(79))
    path = dicom_from_jpeg(jpeg, tmp_path / "eye.dcm")
    tls = DicomTls(tls_files["server"], tls_files["server_key"], client_ca_path=tls_files["ca"])
    config = _config(tmp_path, tls=tls)
    with ScreeningClient(triton_server.grpc_url, timeout_s=60) as client, DicomGateway(client, config) as gateway:
        idle = [socket.create_connection(("127.0.0.1", gateway.port)) for _ in range(10)]  # never handshake
        try:
            assert _tls_store(gateway.port, path, tls_files, client_cert=True) == 0
            assert _tls_store(gateway.port, path, tls_files, client_cert=False) is None, "no client certificate"
            assert _storescu(gateway.port, [path]).returncode != 0, "plain DICOM is refused"
        finally:
            for s in idle:
                s.close()
        assert gateway.wait_idle(timeout_s=60)
    (record,) = _records(config)
    assert record["sop_instance_uid"] == pydicom.dcmread(path).SOPInstanceUID


def test_gateway_cli_records_every_instance_exactly_once_when_killed_and_restarted(
    triton_server: TritonServer, fundus_jpeg, dicom_from_jpeg, tmp_path: Path
) -> None:
    import os
    import signal
    import sys
    import time

    files = []
    for i in range(12):
        jpeg = tmp_path / f"eye{i}.jpg"
        jpeg.write_bytes(fundus_jpeg(500 + i, size=(1600, 1200)))
        files.append(dicom_from_jpeg(jpeg, tmp_path / f"eye{i}.dcm", keys={"PatientID": f"PID-{i}"}))
    uids = sorted(pydicom.dcmread(f).SOPInstanceUID for f in files)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "predilect.cli",
        "gateway",
        "--port",
        str(port),
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
    ]
    journal = tmp_path / "out" / "results.jsonl"

    def recorded() -> list[str]:
        return (
            [json.loads(line)["sop_instance_uid"] for line in journal.read_text().splitlines()]
            if journal.exists()
            else []
        )

    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: _storescu(port, files[:1]).returncode == 0, timeout_s=60), "gateway came up"
        assert _storescu(port, files[1:]).returncode == 0
        assert _wait_for(lambda: len(recorded()) >= 2 or first.poll() is not None, timeout_s=60)
        os.kill(first.pid, signal.SIGKILL)  # mid-run: received, part screened
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    before = len(recorded())
    assert before < len(uids), "killed part-way"
    second = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: len(recorded()) >= len(uids), timeout_s=120), "the restart screens the rest"
        assert _storescu(port, files[:3]).returncode == 0  # re-sent after the restart: acknowledged, ignored
        time.sleep(1)
    finally:
        second.send_signal(signal.SIGTERM)
        _, stderr = second.communicate(timeout=60)
    assert second.returncode == 0, stderr
    assert sorted(recorded()) == uids, "every instance exactly once"
