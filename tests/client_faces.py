"""Test helpers: the sync and asyncio client faces behind one blocking interface, DICOM builders,
and a real TCP proxy that can start listening late (a server that comes up during retries).

Imported by name from the client tests (``tests/`` is on sys.path, see conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from predilect import contract
from predilect.catalog import Catalog
from predilect.client import AsyncScreeningClient, ScreeningClient, ScreeningItem, ScreeningResult
from predilect.client.results import QualityReport
from predilect.client.retry import RetryPolicy
from predilect.client.settings import DEFAULT_TIMEOUT_S, ClientSettings
from predilect.referral import ReferralRules

OP_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"


def decided_result(
    probabilities: list[float],
    catalog: Catalog,
    *,
    quality: list[float] | None = None,
    rules: ReferralRules | None = None,
    latency_s: float = 0.01,
    sop_instance_uid: str | None = None,
    frame: int | None = None,
) -> ScreeningResult:
    """The result the server would send for ``probabilities``: ``rules`` (default: the catalog's, no
    gradability thresholds) decide as the server's step does, ``ScreeningResult.from_outputs`` reads
    the outputs; ``quality`` defaults to a gradable photograph of score 1."""
    rules = rules or ReferralRules.from_catalog(catalog, {})
    row = list(quality) if quality is not None else [1.0] + [0.0] * len(contract.QUALITY_REASONS)
    decided = rules.decide(probabilities, gradable=QualityReport.from_row(row).gradable)
    return ScreeningResult.from_outputs(
        probabilities=probabilities,
        quality=row,
        findings=[d.id in decided.findings for d in catalog],
        decision_code=decided.code,
        catalog=catalog,
        rules=rules,
        model_name="m",
        model_version="1",
        latency_s=latency_s,
        sop_instance_uid=sop_instance_uid,
        frame=frame,
    )


class SyncFace:
    """``ScreeningClient`` as is."""

    name = "sync"

    def __init__(self, url: str, **options: Any) -> None:
        self.client = ScreeningClient(url, **options)

    def connect(self) -> None:
        self.client.connect()

    def catalog(self) -> Catalog:
        return self.client.catalog

    def screen(self, image: Any, **kw: Any) -> ScreeningResult:
        return self.client.screen(image, **kw)

    def screen_frames(self, image: Any, **kw: Any) -> list[ScreeningResult]:
        return self.client.screen_frames(image, **kw)

    def screen_items(self, image: Any, **kw: Any) -> list[ScreeningItem]:
        return self.client.screen_items(image, **kw)

    def screen_many(
        self, images: Iterable[Any], *, on_item: Callable[[ScreeningItem], None] = lambda _: None, **kw: Any
    ) -> list[ScreeningItem]:
        items = []
        for item in self.client.screen_many(images, **kw):
            on_item(item)
            items.append(item)
        return items

    def close(self) -> None:
        self.client.close()


class AsyncFace:
    """``AsyncScreeningClient`` run on one private event loop, call by call."""

    name = "async"

    def __init__(self, url: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()

        async def make() -> AsyncScreeningClient:
            return AsyncScreeningClient(url, **options)

        self.client = self._loop.run_until_complete(make())

    def _run(self, awaitable: Any) -> Any:
        return self._loop.run_until_complete(awaitable)

    def connect(self) -> None:
        self._run(self.client.connect())

    def catalog(self) -> Catalog:
        return self._run(self.client.catalog())

    def screen(self, image: Any, **kw: Any) -> ScreeningResult:
        return self._run(self.client.screen(image, **kw))

    def screen_frames(self, image: Any, **kw: Any) -> list[ScreeningResult]:
        return self._run(self.client.screen_frames(image, **kw))

    def screen_items(self, image: Any, **kw: Any) -> list[ScreeningItem]:
        return self._run(self.client.screen_items(image, **kw))

    def screen_many(
        self, images: Iterable[Any], *, on_item: Callable[[ScreeningItem], None] = lambda _: None, **kw: Any
    ) -> list[ScreeningItem]:
        async def collect() -> list[ScreeningItem]:
            items = []
            async for item in self.client.screen_many(images, **kw):
                on_item(item)
                items.append(item)
            return items

        return self._run(collect())

    def close(self) -> None:
        self._run(self.client.close())
        self._loop.close()


FACES = {"sync": SyncFace, "async": AsyncFace}


def pixels_of(jpeg: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def tiny_jpeg(side_px: int = 8) -> bytes:
    """A well-formed baseline JPEG far below the service's minimum size: the server rejects it."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side_px, side_px), (120, 60, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def jpeg_multiframe_dicom(frames: list[bytes], path: Path) -> Path:
    """An Ophthalmic Photography instance whose JPEG-baseline frames are ``frames`` as given
    (so a test can make frame 2 bad); the client sends the frames' bytes without decoding them."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = OP_8BIT, generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = OP_8BIT, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.ImageLaterality, ds.Modality = "PID-2F", "L", "OP"
    ds.Rows, ds.Columns = 768, 1024
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = len(frames)
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return path


def uncompressed_multiframe_dicom(frames: list[np.ndarray], path: Path) -> Path:
    """An Ophthalmic Photography instance with uncompressed RGB frames."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = OP_8BIT, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = OP_8BIT, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "PID-MF", "OP"
    ds.Rows, ds.Columns = frames[0].shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = len(frames)
    ds.PixelData = np.stack(frames).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


class LateProxy:
    """A TCP forwarder to ``target`` on a port of its own that accepts only after ``listen()``:
    until then a client meets a closed port (gRPC UNAVAILABLE), as when a server restarts."""

    def __init__(self, target_host: str, target_port: int, *, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))  # bound, not listening: connections are refused
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._closed = threading.Event()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def listen(self) -> None:
        self._listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._sockets += [downstream, upstream]
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop accepting and cut every forwarded connection (shutdown wakes the pumps' recv)."""
        self._closed.set()
        for s in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def core_settings(url: str = "host:1", **overrides: Any) -> ClientSettings:
    """The client core's settings as a face would make them with its defaults, ``overrides`` applied."""
    options: dict[str, Any] = dict(
        model_name=contract.ENSEMBLE,
        timeout_s=DEFAULT_TIMEOUT_S,
        attempt_timeout_s=None,
        retry_policy=RetryPolicy(),
        retry_budget=None,
        auth_token=None,
        headers=None,
        tls=None,
        keepalive_time_s=60.0,
        keepalive_timeout_s=20.0,
    )
    options.update(overrides)
    return ClientSettings(url, **options)
