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
screened once; a *different* instance under a UID already used (other bytes) is refused
(0x0111, duplicate SOP instance) with the reason logged, never acknowledged and dropped.
Concurrent stores of one UID are serialised; each write goes through its own partial file. UIDs
must be well-formed (digits and single dots: ``.`` and ``..`` are not UIDs), instances at most
``max_instance_bytes`` (received into a temporary file, never held in memory).

Associations are bounded: the handshake (TCP accepted to association established) must end within
``handshake_timeout_s``, however slowly the peer trickles its request; an idle association ends
after ``idle_timeout_s``; at most ``max_associations`` run at once and ``max_associations_per_peer``
from one address, so neither a flood of slow handshakes nor one sender's idle associations lock
the others out; the called AE title must be this gateway's. ``screen_workers`` threads screen, so a
large instance does not hold up the others. Everything written is owner-only (folders 0700, files
0600). ``tls`` turns on DICOM TLS (optionally requiring client certificates); the gateway listens
on loopback unless told otherwise. pynetdicom/pydicom/highdicom come from the ``[dicom]`` extra.

The log (logger ``predilect.dicom.gateway``) has one line per instance per stage -- ``received``,
``screened``, ``sr-sent`` -- with the calling AE, the peer, a hash of the SOP Instance UID (never a
patient identifier), the outcome and the duration, and one line per refused association naming
the AE and the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import queue
import re
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from predilect.client import dicom, results_folder
from predilect.client.errors import ClientConfigError, PredilectClientError, is_final
from predilect.client.journal import FILE_MODE, ResultJournal
from predilect.client.records import JournalRecord
from predilect.client.results import ScreeningItem
from predilect.client.screening import ScreeningClient
from predilect.dicom import reader
from predilect.dicom.sr import structured_report

_log = logging.getLogger("predilect.dicom.gateway")
_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
_UID_MAX_CHARS = 64
STATUS_SUCCESS = 0x0000
STATUS_DUPLICATE_SOP_INSTANCE = 0x0111
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
_MIB = 1024 * 1024
_LOCK_STRIPES = 64
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
    handshake_timeout_s: float = 10.0  # TCP accepted to association established, however slow the peer
    idle_timeout_s: float = 30.0  # an association that sends nothing
    max_associations: int = 32
    max_associations_per_peer: int = 4  # from one IP address
    max_instance_bytes: int = 512 * _MIB
    screen_workers: int = 2
    retry_interval_s: float = 30.0  # how often instances that failed on the server's side are tried again
    tls: DicomTls | None = None


def uid_hash(uid: str) -> str:
    """What the log names an instance by: a short hash of its SOP Instance UID."""
    return hashlib.sha256(uid.encode()).hexdigest()[:12]


def valid_uid(uid: str) -> bool:
    """A well-formed UID: numeric components (no leading zero) joined by single dots, at most 64 characters."""
    return len(uid) <= _UID_MAX_CHARS and _UID.fullmatch(uid) is not None


def _fields(**fields: object) -> str:
    """``key=value`` pairs, a value with spaces in double quotes: one line a log reader can split."""
    return " ".join(f'{key}="{value}"' if " " in str(value) else f"{key}={value}" for key, value in fields.items())


class DicomGateway:
    """The C-STORE SCP and its screening worker; ``start()``/``stop()`` or a context manager."""

    def __init__(self, client: ScreeningClient, config: GatewayConfig) -> None:
        self.client, self.config = client, config
        self._queue: queue.Queue[Any] = queue.Queue()
        self._journal = ResultJournal(config.results_dir / RESULTS_FILE)
        self._server: Any = None
        self._lock = threading.Lock()
        self._journal_lock = threading.Lock()
        self._uid_locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]  # stores of one UID, one at a time
        self._done: set[str] = set()  # SOP Instance UIDs recorded
        self._queued: set[str] = set()  # waiting in the queue (each once)
        self._screening: set[str] = set()  # being screened by a worker now
        self._pending: set[str] = set()  # failed on the server's side: tried again every retry_interval_s
        self._received_by: dict[str, str] = {}  # UID -> calling AE, for the screening log line
        self._workers: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one bound, when configured as 0)."""
        return int(self._server.server_address[1]) if self._server is not None else self.config.port

    def start(self) -> DicomGateway:
        dicom.pydicom_module()  # imported once, here, before the SCP's threads need it
        from pynetdicom import AE, _config, evt

        # Received datasets go to a temporary file as they arrive, never whole into memory.
        _config.STORE_RECV_CHUNKED_DATASET = True

        context = (
            self.config.tls.server_context(handshake_timeout_s=self.config.idle_timeout_s) if self.config.tls else None
        )
        for folder in (self.config.incoming_dir, self.config.results_dir):
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, DIR_MODE)
        self.client.connect()
        catalog_json = results_folder.catalog_text(self.client.catalog).encode("utf-8")
        _write_private(self.config.results_dir / results_folder.CATALOG_FILE, catalog_json)
        self._done = self._journal.open()
        for partial in self.config.incoming_dir.glob(".*.part"):
            partial.unlink(missing_ok=True)  # a write cut short by a crash
        for path in sorted(self.config.incoming_dir.glob("*.dcm")):
            self._enqueue(path)  # received before a crash or shutdown, never recorded
        self._stopping.clear()
        self._workers = [
            threading.Thread(target=self._work, name=f"predilect-gateway-screen-{i}", daemon=True)
            for i in range(max(1, self.config.screen_workers))
        ]
        for worker in self._workers:
            worker.start()
        ae = AE(ae_title=self.config.ae_title)
        ae.acse_timeout = self.config.acse_timeout_s
        ae.network_timeout = self.config.idle_timeout_s
        ae.maximum_associations = self.config.max_associations
        ae.require_called_aet = True
        for sop_class in reader.SUPPORTED_SOP_CLASSES:
            ae.add_supported_context(sop_class, [reader.JPEG_BASELINE, *reader.UNCOMPRESSED_SYNTAXES])
        ae.add_supported_context(reader.VERIFICATION_SOP_CLASS)
        if self.config.allowed_calling_aets:
            ae.require_calling_aet = list(self.config.allowed_calling_aets)
        self._server = ae.start_server(
            (self.config.bind_address, self.config.port),
            block=False,
            ssl_context=context,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_REJECTED, self._on_rejected)],
        )
        self._server.verify_request = self._admit
        self._watchdog = threading.Thread(target=self._watch_handshakes, name="predilect-gateway-watch", daemon=True)
        self._watchdog.start()
        tls = " (TLS)" if context is not None else ""
        _log.info("gateway %s listening on %s:%d%s", self.config.ae_title, self.config.bind_address, self.port, tls)
        return self

    def _admit(self, _request: Any, client_address: Any) -> bool:
        """Whether to take a new connection: not past ``max_associations_per_peer`` from its address."""
        peer = str(client_address[0])
        server = self._server
        if server is None:
            return False
        open_from_peer = sum(1 for a in server.active_associations if a.requestor.address == peer)
        if open_from_peer >= self.config.max_associations_per_peer:
            _log.warning(
                "association refused %s",
                _fields(
                    peer=peer,
                    reason=f"{open_from_peer} associations already open from this address "
                    f"(the per-peer limit, {self.config.max_associations_per_peer})",
                ),
            )
            return False
        return True

    def _watch_handshakes(self) -> None:
        """End every connection whose association is not established ``handshake_timeout_s`` after it
        was accepted: a peer trickling its request a byte at a time cannot hold a slot."""
        first_seen: dict[int, float] = {}
        while not self._stopping.wait(0.25):
            server = self._server
            if server is None:
                return
            now, alive = time.monotonic(), set()
            for assoc in server.active_associations:
                key = id(assoc)
                alive.add(key)
                seen = first_seen.setdefault(key, now)
                if assoc.is_established or assoc.is_released or assoc.is_aborted:
                    continue
                if now - seen > self.config.handshake_timeout_s:
                    _log.warning(
                        "association refused %s",
                        _fields(
                            peer=assoc.requestor.address,
                            reason=f"no association established within {self.config.handshake_timeout_s:g} s "
                            "of connecting (the handshake timeout)",
                        ),
                    )
                    _cut(assoc)
                    first_seen[key] = float("inf")  # cut once
            for key in set(first_seen) - alive:
                del first_seen[key]

    def _on_rejected(self, event: Any) -> None:
        requestor = event.assoc.requestor
        calling = str(requestor.ae_title).strip()
        called = str(getattr(requestor.primitive, "called_ae_title", "")).strip()
        allowed = self.config.allowed_calling_aets
        if allowed and calling not in allowed:
            reason = f"calling AE {calling!r} is not allowed (--allow-aet {' '.join(allowed)})"
        elif called != self.config.ae_title:
            reason = f"called AE title {called!r} is not this gateway's ({self.config.ae_title!r})"
        else:
            reason = f"{self.config.max_associations} associations already open (the limit)"
        _log.warning("association refused %s", _fields(aet=calling, peer=requestor.address, reason=reason))

    def _enqueue(self, path: Path) -> bool:
        """Queue a received instance unless it is recorded, queued or being screened; whether it was queued."""
        with self._lock:
            if path.stem in self._done or path.stem in self._queued or path.stem in self._screening:
                return False
            self._queued.add(path.stem)
            self._pending.discard(path.stem)
        self._queue.put(path)
        return True

    def _on_store(self, event: Any) -> int:
        started = time.monotonic()
        aet, peer = str(event.assoc.requestor.ae_title).strip(), event.assoc.requestor.address
        uid = str(event.request.AffectedSOPInstanceUID or "")
        received = Path(event.dataset_path)
        size = received.stat().st_size

        def answer(status: int, outcome: str, *, warn: bool = False) -> int:
            line = _fields(
                uid=uid_hash(uid),
                aet=aet,
                peer=peer,
                bytes=size,
                outcome=outcome,
                status=f"0x{status:04X}",
                duration_ms=round(1000 * (time.monotonic() - started)),
            )
            (_log.warning if warn else _log.info)("received %s", line)
            return status

        free = shutil.disk_usage(self.config.incoming_dir).free
        if free < self.config.min_free_bytes:
            return answer(
                STATUS_OUT_OF_RESOURCES,
                f"refused: {free} bytes free under {self.config.incoming_dir}, below the "
                f"{self.config.min_free_bytes}-byte watermark",
                warn=True,
            )
        if not valid_uid(uid):
            return answer(STATUS_CANNOT_UNDERSTAND, "refused: not a well-formed SOP Instance UID", warn=True)
        if size > self.config.max_instance_bytes:
            return answer(
                STATUS_OUT_OF_RESOURCES,
                f"refused: larger than the {self.config.max_instance_bytes}-byte instance limit",
                warn=True,
            )
        path = self.config.incoming_dir / f"{uid}.dcm"
        digest = _dataset_digest(received)
        with self._uid_locks[hash(uid) % _LOCK_STRIPES]:
            if path.exists():
                if _dataset_digest(path) != digest:
                    return answer(
                        STATUS_DUPLICATE_SOP_INSTANCE,
                        "refused: a different instance under a SOP Instance UID already received "
                        "(the first one is kept; send the new one under its own UID)",
                        warn=True,
                    )
                queued = self._enqueue(path)
                return answer(STATUS_SUCCESS, "queued again" if queued else "already received, ignored")
            with self._lock:
                recorded = uid in self._done
            if recorded:  # recorded, its stored file since removed: one result per instance
                return answer(STATUS_SUCCESS, "already recorded, ignored")
            _store_private(received, path)
            with self._lock:
                self._received_by[uid] = aet
            self._enqueue(path)
        return answer(STATUS_SUCCESS, "stored, queued")

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
                    self._screening.add(path.stem)
                self._screen_file(path)
            except Exception:  # noqa: BLE001 - the worker must outlive one bad file; the cause is logged
                _log.exception("screening %s failed", uid_hash(path.stem))
            finally:
                if path is not _STOP:
                    with self._lock:
                        self._screening.discard(path.stem)
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
        started = time.monotonic()
        with self._lock:
            if key in self._done:
                return
            aet = self._received_by.pop(key, "-")

        def logged(outcome: str, *, warn: bool = False) -> None:
            line = _fields(
                uid=uid_hash(key), aet=aet, outcome=outcome, duration_ms=round(1000 * (time.monotonic() - started))
            )
            (_log.warning if warn else _log.info)("screened %s", line)

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
            logged(f"not screened ({reason}), tried again in {self.config.retry_interval_s:g} s", warn=True)
            with self._lock:
                self._pending.add(key)
            return
        patient_id, eye = dicom.identity(dataset) if dataset is not None else (None, None)
        study = dicom.study_uid(dataset) if dataset is not None else None
        sr_files = self._reports(key, items, dataset) if dataset is not None else {}
        record = JournalRecord.of_items(
            key, items, patient_id=patient_id, eye=eye, study=study, sop_instance_uid=key, sr_files=sr_files
        )
        with self._journal_lock:
            self._journal.append(record)
        with self._lock:
            self._done.add(key)
        outcomes = [
            i.result.decision if i.result is not None else f"rejected ({type(i.error).__name__})" for i in items
        ]
        logged(f"recorded frames={len(items)} decisions={','.join(outcomes)} srs={len(sr_files)}")

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
                    self._forward(report, self.config.forward_to, uid=key)
        return sr_files

    def _forward(self, report: Any, target: RemoteAE, *, uid: str) -> None:
        from pynetdicom import AE

        started = time.monotonic()
        destination = f"{target.ae_title}@{target.host}:{target.port}"

        def logged(outcome: str, *, warn: bool) -> None:
            line = _fields(
                uid=uid_hash(uid),
                to=destination,
                outcome=outcome,
                duration_ms=round(1000 * (time.monotonic() - started)),
            )
            (_log.warning if warn else _log.info)("sr-sent %s", line)

        ae = AE(ae_title=self.config.ae_title)
        ae.add_requested_context(report.SOPClassUID, report.file_meta.TransferSyntaxUID)
        assoc = ae.associate(target.host, target.port, ae_title=target.ae_title)
        if not assoc.is_established:
            logged("not sent: association refused or failed", warn=True)
            return
        try:
            status = assoc.send_c_store(report)
            code = int(status.Status) if status is not None and "Status" in status else None
            if code != STATUS_SUCCESS:
                logged(f"not accepted: status {code}", warn=True)
            else:
                logged("accepted", warn=False)
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
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._watchdog is not None:
            self._watchdog.join()
            self._watchdog = None
        for _ in self._workers:
            self._queue.put(_STOP)
        for worker in self._workers:
            worker.join()
        self._workers = []
        self._journal.close()

    def __enter__(self) -> DicomGateway:
        return self.start()

    def __exit__(
        self, _exc_type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()


def _cut(assoc: Any) -> None:
    """End an association's connection from another thread: shutdown wakes its blocked read."""
    raw = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    if raw is not None:
        with contextlib.suppress(OSError):  # already closed
            raw.shutdown(socket.SHUT_RDWR)


def _dataset_digest(path: Path) -> str:
    """SHA-256 of a stored instance's dataset, after the preamble and file meta (which name the sender)."""
    with open(path, "rb") as f:
        head = f.read(144)  # preamble, "DICM", (0002,0000) UL group length
        offset = 132
        if len(head) == 144 and head[128:132] == b"DICM" and head[132:136] == b"\x02\x00\x00\x00":
            offset = 144 + int.from_bytes(head[140:144], "little")
        f.seek(offset)
        digest = hashlib.sha256()
        for block in iter(lambda: f.read(_MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def _partial(path: Path) -> tuple[int, Path]:
    """A new owner-only partial file beside ``path`` (its own name: concurrent writers never share one)."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.fchmod(fd, FILE_MODE)
    return fd, Path(name)


def _replace_private(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` owner-only (0600) through ``write``, durably and atomically (a reader never sees
    half a file; concurrent writers never share a partial file)."""
    fd, partial = _partial(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _store_private(source: Path, path: Path) -> None:
    """Copy ``source`` to ``path``, owner-only, durably and atomically."""
    with open(source, "rb") as src:
        _replace_private(path, lambda f: shutil.copyfileobj(src, f, _MIB))


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, owner-only, durably and atomically."""
    _replace_private(path, lambda f: f.write(data))
