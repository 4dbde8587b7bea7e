"""DICOM gateway: a C-STORE SCP that stores what it receives, screens it and writes results.

Received instances are written as received (original transfer syntax) under ``incoming/``
and queued; one worker thread screens them and writes a JSONL line per frame plus a
Comprehensive SR, optionally C-STOREd to a configured AE. The C-STORE response does not wait
for screening. ``stop()`` drains the queue; instances received but not yet recorded (e.g.
after a crash) are queued again at the next start. pynetdicom/pydicom/highdicom come from
the ``[dicom]`` extra.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from predilect.client import dicom
from predilect.client.errors import (
    DeadlineExceededError,
    ModelNotReadyError,
    PredilectClientError,
    ServerUnavailableError,
)
from predilect.client.journal import ResultJournal
from predilect.client.screening import ScreeningClient
from predilect.client.sr import structured_report

_log = logging.getLogger("predilect.client.gateway")
_UID = re.compile(r"[0-9.]{1,64}")
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
_TRANSIENT = (ServerUnavailableError, DeadlineExceededError, ModelNotReadyError)
_STOP = object()
RESULTS_FILE = "results.jsonl"


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
class GatewayConfig:
    """Where the gateway listens, who may send, where it writes, when it refuses."""

    incoming_dir: Path
    results_dir: Path
    ae_title: str = "PREDILECT"
    port: int = 11112
    bind_address: str = "0.0.0.0"
    allowed_calling_aets: tuple[str, ...] = ()  # empty: any calling AE
    min_free_bytes: int = 1 << 30
    forward_to: RemoteAE | None = None
    acse_timeout_s: float = 30.0


class DicomGateway:
    """The C-STORE SCP and its screening worker; ``start()``/``stop()`` or a context manager."""

    def __init__(self, client: ScreeningClient, config: GatewayConfig) -> None:
        self.client, self.config = client, config
        self._queue: queue.Queue[Any] = queue.Queue()
        self._journal = ResultJournal(config.results_dir / RESULTS_FILE)
        self._server: Any = None
        self._worker: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one bound, when configured as 0)."""
        return int(self._server.server_address[1]) if self._server is not None else self.config.port

    def start(self) -> DicomGateway:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import Verification

        for folder in (self.config.incoming_dir, self.config.results_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.client.connect()
        done = self._journal.open()
        for path in sorted(self.config.incoming_dir.glob("*.dcm")):
            if path.stem not in done:
                self._queue.put(path)  # received before a crash or shutdown, never recorded
        self._worker = threading.Thread(target=self._work, name="predilect-gateway-screen", daemon=True)
        self._worker.start()
        ae = AE(ae_title=self.config.ae_title)
        ae.acse_timeout = self.config.acse_timeout_s
        for sop_class in dicom.SUPPORTED_SOP_CLASSES:
            ae.add_supported_context(sop_class, [dicom.JPEG_BASELINE, *dicom.UNCOMPRESSED_SYNTAXES])
        ae.add_supported_context(Verification)
        if self.config.allowed_calling_aets:
            ae.require_calling_aet = list(self.config.allowed_calling_aets)
        self._server = ae.start_server(
            (self.config.bind_address, self.config.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        _log.info("gateway %s listening on %s:%d", self.config.ae_title, self.config.bind_address, self.port)
        return self

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
        path = self.config.incoming_dir / f"{uid}.dcm"
        partial = path.with_suffix(".part")
        with partial.open("wb") as f:
            f.write(event.encoded_dataset())
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
        self._queue.put(path)
        return STATUS_SUCCESS

    def _work(self) -> None:
        while True:
            path = self._queue.get()
            try:
                if path is _STOP:
                    return
                self._screen_file(path)
            except Exception:  # noqa: BLE001 - the worker must outlive one bad file; the cause is logged
                _log.exception("screening %s failed", path.name)
            finally:
                self._queue.task_done()

    def _screen_file(self, path: Path) -> None:
        try:
            dataset = dicom.read_dataset(path)
            results = self.client.screen_frames(dataset)
        except _TRANSIENT as e:
            _log.warning("%s not screened (%s); it is retried at the next start", path.name, type(e).__name__)
            return
        except PredilectClientError as e:
            self._journal.append(
                [
                    {
                        "key": path.stem,
                        "sop_instance_uid": path.stem,
                        "frame": None,
                        "frames": 1,
                        "result": None,
                        "error": str(e),
                        "error_type": type(e).__name__,
                    }
                ]
            )
            return
        records = []
        for result in results:
            report = structured_report(result, dataset, self.client.catalog)
            sr_path = self.config.results_dir / f"{path.stem}-{result.frame}.sr.dcm"
            report.save_as(sr_path, enforce_file_format=True)
            if self.config.forward_to is not None:
                self._forward(report, self.config.forward_to)
            records.append(
                {
                    "key": path.stem,
                    "sop_instance_uid": result.sop_instance_uid,
                    "frame": result.frame,
                    "frames": len(results),
                    "result": result.model_dump(mode="json"),
                    "error": None,
                    "error_type": None,
                    "sr": sr_path.name,
                }
            )
        self._journal.append(records)

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
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
