"""DICOM gateway: a C-STORE SCP that stores what it receives, screens it and writes results.

Received instances are written as received (original transfer syntax) under ``incoming/``
and queued; one worker thread screens them and writes a ``JournalRecord`` line per frame plus
a Comprehensive SR per screened frame, optionally C-STOREd to a configured AE. The C-STORE
response does not wait for screening. An instance that is bad itself (not screenable, a frame
rejected) is recorded with its error; one that failed on the server's side (``is_final``
false) is left unrecorded and tried again every ``retry_interval_s`` while the gateway runs, and
at the next start, as are instances received but not recorded before a crash. ``stop()`` drains
the queue.

One result per SOP Instance UID: an instance sent again once it is recorded is acknowledged and
ignored (no second line, its SR and stored file untouched); one sent again while it waits is
screened once. Associations are bounded: a peer that connects and says nothing is dropped after
``acse_timeout_s``, an idle association after ``idle_timeout_s``, and up to ``max_associations``
run at once, so a handful of idle connections cannot lock a sender out. Everything written is
owner-only (folders 0700, files 0600). ``tls`` turns on DICOM TLS (optionally requiring client
certificates); the gateway listens on loopback unless told otherwise. pynetdicom/pydicom/
highdicom come from the ``[dicom]`` extra.
"""

from __future__ import annotations

import io
import logging
import os
import queue
import re
import shutil
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from predilect.client import dicom
from predilect.client.errors import ClientConfigError, PredilectClientError, is_final
from predilect.client.journal import FILE_MODE, ResultJournal
from predilect.client.records import JournalRecord
from predilect.client.results import ScreeningItem
from predilect.client.screening import ScreeningClient
from predilect.dicom import reader
from predilect.dicom.sr import structured_report

_log = logging.getLogger("predilect.dicom.gateway")
_UID = re.compile(r"[0-9.]{1,64}")
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
_STOP = object()
RESULTS_FILE = "results.jsonl"
DIR_MODE = 0o700


@dataclass(frozen=True)
class RemoteAE:
    """A DICOM peer to C-STORE the SRs to."""

    host: str
    port: int
    ae_title: str

    @classmethod
    def parse(cls, text: str) -> RemoteAE:
        """``host:port:AETITLE``."""
        host, port, ae_title = text.rsplit(":", 2)
        return cls(host=host, port=int(port), ae_title=ae_title)


@dataclass(frozen=True)
class DicomTls:
    """DICOM TLS for the gateway's SCP: its certificate and key (PEM); ``client_ca_path`` also
    requires every sender to present a certificate signed by that CA."""

    cert_path: Path
    key_path: Path
    client_ca_path: Path | None = None

    def server_context(self, *, handshake_timeout_s: float) -> ssl.SSLContext:
        """The SSL context of the SCP; reads the PEM files now (ClientConfigError when unreadable)."""
        context = _LazyHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
        context.handshake_timeout_s = handshake_timeout_s
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert_path, self.key_path)
            if self.client_ca_path is not None:
                context.load_verify_locations(self.client_ca_path)
                context.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as e:
            raise ClientConfigError(f"cannot use the gateway's TLS files: {e}") from e
        return context


class _LazyHandshakeContext(ssl.SSLContext):
    """pynetdicom wraps each accepted socket in its accept loop: a handshake there would let one peer
    that connects and never speaks stall every sender. Defer it to the association's own thread,
    bounded by a timeout."""

    handshake_timeout_s = 10.0

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:
        sock.settimeout(self.handshake_timeout_s)
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


@dataclass(frozen=True)
class GatewayConfig:
    """Where the gateway listens, who may send, where it writes, when it refuses."""

    incoming_dir: Path = Path("incoming")
    results_dir: Path = Path("results")
    ae_title: str = "PREDILECT"
    port: int = 11112
    bind_address: str = "127.0.0.1"
    allowed_calling_aets: tuple[str, ...] = ()  # empty: any calling AE
    min_free_bytes: int = 1 << 30
    forward_to: RemoteAE | None = None
    acse_timeout_s: float = 5.0  # TCP connected, no association request yet
    idle_timeout_s: float = 30.0  # an association that sends nothing
    max_associations: int = 32
    retry_interval_s: float = 30.0  # how often instances that failed on the server's side are tried again
    tls: DicomTls | None = None


class DicomGateway:
    """The C-STORE SCP and its screening worker; ``start()``/``stop()`` or a context manager."""

    def __init__(self, client: ScreeningClient, config: GatewayConfig) -> None:
        self.client, self.config = client, config
        self._queue: queue.Queue[Any] = queue.Queue()
        self._journal = ResultJournal(config.results_dir / RESULTS_FILE)
        self._server: Any = None
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._done: set[str] = set()  # SOP Instance UIDs recorded
        self._queued: set[str] = set()  # waiting in the queue (each once)
        self._pending: set[str] = set()  # failed on the server's side: tried again every retry_interval_s

    @property
    def port(self) -> int:
        """The port listened on (the one bound, when configured as 0)."""
        return int(self._server.server_address[1]) if self._server is not None else self.config.port

    def start(self) -> DicomGateway:
        dicom.pydicom_module()  # imported once, here, before the SCP's threads need it
        from pynetdicom import AE, evt

        context = (
            self.config.tls.server_context(handshake_timeout_s=self.config.idle_timeout_s) if self.config.tls else None
        )
        for folder in (self.config.incoming_dir, self.config.results_dir):
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, DIR_MODE)
        self.client.connect()
        self._done = self._journal.open()
        for path in sorted(self.config.incoming_dir.glob("*.dcm")):
            self._enqueue(path)  # received before a crash or shutdown, never recorded
        self._worker = threading.Thread(target=self._work, name="predilect-gateway-screen", daemon=True)
        self._worker.start()
        ae = AE(ae_title=self.config.ae_title)
        ae.acse_timeout = self.config.acse_timeout_s
        ae.network_timeout = self.config.idle_timeout_s
        ae.maximum_associations = self.config.max_associations
        for sop_class in reader.SUPPORTED_SOP_CLASSES:
            ae.add_supported_context(sop_class, [reader.JPEG_BASELINE, *reader.UNCOMPRESSED_SYNTAXES])
        ae.add_supported_context(reader.VERIFICATION_SOP_CLASS)
        if self.config.allowed_calling_aets:
            ae.require_calling_aet = list(self.config.allowed_calling_aets)
        self._server = ae.start_server(
            (self.config.bind_address, self.config.port),
            block=False,
            ssl_context=context,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        tls = " (TLS)" if context is not None else ""
        _log.info("gateway %s listening on %s:%d%s", self.config.ae_title, self.config.bind_address, self.port, tls)
        return self

    def _enqueue(self, path: Path) -> bool:
        """Queue a received instance unless it is recorded or already queued; whether it was queued."""
        with self._lock:
            if path.stem in self._done or path.stem in self._queued:
                return False
            self._queued.add(path.stem)
            self._pending.discard(path.stem)
        self._queue.put(path)
        return True

    def _on_store(self, event: Any) -> int:
        free = shutil.disk_usage(self.config.incoming_dir).free
        if free < self.config.min_free_bytes:
            _log.warning(
                "refusing C-STORE: %d bytes free under %s, below the %d-byte watermark",
                free,
                self.config.incoming_dir,
                self.config.min_free_bytes,
            )
            return STATUS_OUT_OF_RESOURCES
        uid = str(event.request.AffectedSOPInstanceUID or "")
        if not _UID.fullmatch(uid):
            return STATUS_CANNOT_UNDERSTAND
        with self._lock:
            if uid in self._done:
                return STATUS_SUCCESS  # stored and screened already: one result per instance
        path = self.config.incoming_dir / f"{uid}.dcm"
        _write_private(path, event.encoded_dataset())
        self._enqueue(path)
        return STATUS_SUCCESS

    def _work(self) -> None:
        next_retry = time.monotonic() + self.config.retry_interval_s
        while True:
            if time.monotonic() >= next_retry:  # also when busy: pending work is never starved
                self._retry_pending()
                next_retry = time.monotonic() + self.config.retry_interval_s
            try:
                path = self._queue.get(timeout=max(0.0, next_retry - time.monotonic()))
            except queue.Empty:
                continue
            try:
                if path is _STOP:
                    return
                with self._lock:
                    self._queued.discard(path.stem)
                self._screen_file(path)
            except Exception:  # noqa: BLE001 - the worker must outlive one bad file; the cause is logged
                _log.exception("screening %s failed", path.name)
            finally:
                self._queue.task_done()

    def _retry_pending(self) -> None:
        """Queue again what failed on the server's side (the server may be back)."""
        with self._lock:
            pending, self._pending = sorted(self._pending), set()
        for uid in pending:
            path = self.config.incoming_dir / f"{uid}.dcm"
            if path.exists():
                self._enqueue(path)

    def _screen_file(self, path: Path) -> None:
        key = path.stem  # the SOP Instance UID it was received as
        with self._lock:
            if key in self._done:
                return
        dataset: Any = None
        try:
            dataset = dicom.read_dataset(path)
        except PredilectClientError as e:
            items = [ScreeningItem(0, path, error=e)]
        else:
            items = self.client.screen_items(dataset, heatmaps=self.client.served.heatmaps)  # peaks for the SR
        transient = [i.error for i in items if i.error is not None and not is_final(i.error)]
        if transient:
            reason = type(transient[0]).__name__
            _log.warning("%s not screened (%s); tried again in %.0f s", path.name, reason, self.config.retry_interval_s)
            with self._lock:
                self._pending.add(key)
            return
        patient_id, eye = dicom.identity(dataset) if dataset is not None else (None, None)
        sr_files = self._reports(key, items, dataset) if dataset is not None else {}
        self._journal.append(
            JournalRecord.of_items(key, items, patient_id=patient_id, eye=eye, sop_instance_uid=key, sr_files=sr_files)
        )
        with self._lock:
            self._done.add(key)

    def _reports(self, key: str, items: list[ScreeningItem], dataset: Any) -> dict[int | None, str]:
        """An SR per screened frame, written (and forwarded) only once the instance is final,
        so that an instance retried later is never reported twice; their file names by frame."""
        sr_files: dict[int | None, str] = {}
        for item in items:
            if item.result is not None:
                report = structured_report(item.result, dataset, self.client.catalog)
                sr_files[item.frame] = f"{key}-{item.frame}.sr.dcm"
                buffer = io.BytesIO()
                report.save_as(buffer, enforce_file_format=True)
                _write_private(self.config.results_dir / sr_files[item.frame], buffer.getvalue())
                if self.config.forward_to is not None:
                    self._forward(report, self.config.forward_to)
        return sr_files

    def _forward(self, report: Any, target: RemoteAE) -> None:
        from pynetdicom import AE

        ae = AE(ae_title=self.config.ae_title)
        ae.add_requested_context(report.SOPClassUID, report.file_meta.TransferSyntaxUID)
        assoc = ae.associate(target.host, target.port, ae_title=target.ae_title)
        if not assoc.is_established:
            _log.warning(
                "could not forward the SR: association with %s@%s:%d refused or failed",
                target.ae_title,
                target.host,
                target.port,
            )
            return
        try:
            status = assoc.send_c_store(report)
            code = int(status.Status) if status is not None and "Status" in status else None
            if code != STATUS_SUCCESS:
                _log.warning(
                    "%s@%s:%d answered C-STORE of the SR with status %s",
                    target.ae_title,
                    target.host,
                    target.port,
                    code,
                )
        finally:
            assoc.release()

    @property
    def pending(self) -> list[str]:
        """SOP Instance UIDs that failed on the server's side and wait for the next retry."""
        with self._lock:
            return sorted(self._pending)

    def wait_idle(self, *, timeout_s: float) -> bool:
        """Wait until everything queued is screened; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> None:
        """Stop accepting associations, screen what is queued, close the journal."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._worker is not None:
            self._queue.put(_STOP)
            self._worker.join()
            self._worker = None
        self._journal.close()

    def __enter__(self) -> DicomGateway:
        return self.start()

    def __exit__(
        self, _exc_type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()


def _write_private(path: Path, data: bytes) -> None:
    """Write ``path`` owner-only (0600), durably and atomically (a reader never sees half a file)."""
    partial = path.with_name(path.name + ".part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
