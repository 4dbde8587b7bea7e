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


IDLE_PEER = "127.0.0.2"  # another host on the network, as far as the gateway can tell (loopback is 127/8)


def _connect_from(source: str, port: int):
    import socket

    return socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))


def _pynetdicom_store(port: int, dataset, *, calling_aet: str = "STORESCU") -> int | None:
    """C-STORE ``dataset`` with pynetdicom as the sender; the status, or None if the association failed."""
    from pynetdicom import AE

    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.network_timeout = 30
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="PREDILECT")
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_store(dataset)
        return int(status.Status) if status is not None and "Status" in status else None
    finally:
        assoc.release()


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
        assert record["study"] == source.StudyInstanceUID, "the worklist groups a study's instances by it"
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
    catalog = config.results_dir / "catalog.json"
    assert json.loads(catalog.read_text())["diseases"], "the report reads the catalog the gateway screened with"
    assert catalog.stat().st_mode & 0o077 == 0, "results stay owner-only"


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
            "--bind-address",
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
    import time

    jpeg = tmp_path / "eye.jpg"
    jpeg.write_bytes(fundus_jpeg(78))
    path = dicom_from_jpeg(jpeg, tmp_path / "eye.dcm")
    config = _config(tmp_path)
    with ScreeningClient(triton_server.grpc_url, timeout_s=60) as client, DicomGateway(client, config) as gateway:
        idle = [_connect_from(IDLE_PEER, gateway.port) for _ in range(10)]
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

    from predilect.dicom.gateway import DicomTls

    jpeg = tmp_path / "eye.jpg"
    jpeg.write_bytes(fundus_jpeg(79))
    path = dicom_from_jpeg(jpeg, tmp_path / "eye.dcm")
    tls = DicomTls(tls_files["server"], tls_files["server_key"], client_ca_path=tls_files["ca"])
    config = _config(tmp_path, tls=tls)
    with ScreeningClient(triton_server.grpc_url, timeout_s=60) as client, DicomGateway(client, config) as gateway:
        idle = [_connect_from(IDLE_PEER, gateway.port) for _ in range(10)]  # never handshake
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


def test_gateway_answers_others_at_once_when_a_host_floods_it_with_slow_handshakes(
    triton_server: TritonServer, fundus_jpeg, dicom_from_jpeg, tmp_path: Path
) -> None:
    import time

    jpeg = tmp_path / "eye.jpg"
    jpeg.write_bytes(fundus_jpeg(81))
    path = dicom_from_jpeg(jpeg, tmp_path / "eye.dcm")
    config = _config(tmp_path, handshake_timeout_s=3.0)
    with ScreeningClient(triton_server.grpc_url, timeout_s=60) as client, DicomGateway(client, config) as gateway:
        # 40 connections each sending an A-ASSOCIATE-RQ header, then one byte a second: never a whole request.
        slow = [_connect_from(IDLE_PEER, gateway.port) for _ in range(40)]
        stop = threading.Event()

        def trickle() -> None:
            for s in slow:
                s.sendall(b"\x01\x00\x00\x00\x01\x00")  # A-ASSOCIATE-RQ, 256 bytes to follow
            for _ in range(20):  # bounded: 20 s at most
                if stop.wait(1.0):
                    return
                for s in slow:
                    try:
                        s.sendall(b"\x00")
                    except OSError:
                        continue  # the gateway closed it

        trickler = threading.Thread(target=trickle)
        trickler.start()
        try:
            time.sleep(0.5)
            started = time.monotonic()
            sent = _storescu(gateway.port, [path])
            elapsed = time.monotonic() - started
            time.sleep(config.handshake_timeout_s + 2.0)
            closed = 0
            for s in slow:
                s.settimeout(0.5)
                try:
                    closed += s.recv(1) == b""
                except ConnectionResetError:
                    closed += 1
                except TimeoutError:
                    pass
        finally:
            stop.set()
            trickler.join()
            for s in slow:
                s.close()
        assert sent.returncode == 0, sent.stderr
        assert elapsed < config.acse_timeout_s, f"a legitimate sender waited {elapsed:.1f} s"
        assert closed == len(slow), f"{len(slow) - closed} slow handshakes still held a slot"
        assert gateway.wait_idle(timeout_s=60)
    assert len(_records(config)) == 1


def test_gateway_refuses_and_logs_other_instance_under_used_uid_and_keeps_first_when_uid_is_reused(
    triton_server: TritonServer, fundus_jpeg, dicom_from_jpeg, tmp_path: Path, caplog
) -> None:
    import logging

    from predilect.dicom.gateway import STATUS_DUPLICATE_SOP_INSTANCE, uid_hash

    uid = "1.2.826.0.1.3680043.10.999.1"
    first, second = tmp_path / "black.jpg", tmp_path / "eye.jpg"
    first.write_bytes(fundus_jpeg(82, size=(512, 384)))
    second.write_bytes(fundus_jpeg(83))
    keys = {"SOPInstanceUID": uid, "PatientName": NAME, "PatientID": PATIENT_ID}
    datasets = [pydicom.dcmread(dicom_from_jpeg(j, tmp_path / f"{j.stem}.dcm", keys=keys)) for j in (first, second)]
    config = _config(tmp_path)
    caplog.set_level(logging.INFO, logger="predilect.dicom.gateway")
    with ScreeningClient(triton_server.grpc_url, timeout_s=60) as client, DicomGateway(client, config) as gateway:
        assert _pynetdicom_store(gateway.port, datasets[0]) == 0x0000
        assert gateway.wait_idle(timeout_s=60)
        assert _pynetdicom_store(gateway.port, datasets[1]) == STATUS_DUPLICATE_SOP_INSTANCE
        assert _pynetdicom_store(gateway.port, datasets[0]) == 0x0000, "the same instance again is acknowledged"
        assert gateway.wait_idle(timeout_s=60)
    (record,) = _records(config)
    assert record["sop_instance_uid"] == uid
    kept = pydicom.dcmread(config.incoming_dir / f"{uid}.dcm")
    assert kept.PixelData == datasets[0].PixelData, "the first instance keeps the UID"
    log = caplog.text
    assert f"uid={uid_hash(uid)}" in log and "aet=STORESCU" in log
    assert "a different instance under a SOP Instance UID already received" in log
    assert "screened uid=" in log and "outcome=" in log
    assert NAME not in log and PATIENT_ID not in log and uid not in log


def test_gateway_stores_one_file_and_one_result_when_one_uid_is_stored_twelve_times_at_once(
    triton_server: TritonServer, fundus_jpeg, dicom_from_jpeg, tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    jpeg = tmp_path / "eye.jpg"
    jpeg.write_bytes(fundus_jpeg(84))
    dataset = pydicom.dcmread(dicom_from_jpeg(jpeg, tmp_path / "eye.dcm"))
    config = _config(tmp_path, max_associations_per_peer=16)
    with ScreeningClient(triton_server.grpc_url, timeout_s=60) as client, DicomGateway(client, config) as gateway:
        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(lambda _: _pynetdicom_store(gateway.port, dataset), range(12)))
        assert gateway.wait_idle(timeout_s=60)
    assert statuses == [0x0000] * 12
    assert len(_records(config)) == 1
    stored = sorted(p.name for p in config.incoming_dir.iterdir())
    assert stored == [f"{dataset.SOPInstanceUID}.dcm"], stored
    assert pydicom.dcmread(config.incoming_dir / stored[0]).PixelData == dataset.PixelData


def test_gateway_refuses_wrong_called_aet_and_oversized_instance_and_logs_why_when_sent(
    triton_server: TritonServer, fundus_jpeg, dicom_from_jpeg, tmp_path: Path, caplog
) -> None:
    import logging

    jpeg = tmp_path / "eye.jpg"
    jpeg.write_bytes(fundus_jpeg(85))
    path = dicom_from_jpeg(jpeg, tmp_path / "eye.dcm")
    config = _config(tmp_path, max_instance_bytes=path.stat().st_size // 2)
    caplog.set_level(logging.INFO, logger="predilect.dicom.gateway")
    with ScreeningClient(triton_server.grpc_url, timeout_s=60) as client, DicomGateway(client, config) as gateway:
        wrong = subprocess.run(
            [
                "storescu",
                "-xy",
                "-R",
                "-aet",
                "STORESCU",
                "-aec",
                "ELSEWHERE",
                "127.0.0.1",
                str(gateway.port),
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert wrong.returncode != 0
        assert _pynetdicom_store(gateway.port, pydicom.dcmread(path)) == 0xA700
        assert _storescu(gateway.port, [path], calling_aet="INTRUDER").returncode != 0
        assert gateway.wait_idle(timeout_s=30)
    assert _records(config) == [] and not list(config.incoming_dir.glob("*.dcm"))
    log = caplog.text
    assert "called AE title 'ELSEWHERE' is not this gateway's ('PREDILECT')" in log
    assert "instance limit" in log and "calling AE 'INTRUDER' is not allowed" in log


def test_valid_uid_refuses_dots_and_malformed_uids_when_checked() -> None:
    from predilect.dicom.gateway import valid_uid

    assert valid_uid("1.2.840.10008.5.1.4.1.1.77.1.5.1") and valid_uid("0.1")
    for bad in (".", "..", "", "1..2", ".1", "1.", "1.02", "1.2a", "1/2", "1." + "2" * 63):
        assert not valid_uid(bad), bad
