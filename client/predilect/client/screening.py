"""``ScreeningClient``: screens fundus photographs on the Triton ``fundus_screen`` ensemble.

The blocking face of the client core (``core``): it performs the core's plans with
``tritonclient.grpc`` and ``time.sleep``, so it also runs under gevent (Locust, after
``grpc.experimental.gevent.init_gevent()``). At connect the client reads the ensemble's config
parameters (catalog with ids, names and thresholds; model name and version): the only source
of labels and thresholds. Calls retry on UNAVAILABLE / RESOURCE_EXHAUSTED (and a per-attempt
timeout) with jittered exponential backoff inside the total deadline ``timeout_s`` and the
client's retry budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from types import TracebackType
from typing import Any, TypeVar

import tritonclient.grpc as grpcclient

from predilect.catalog import Catalog
from predilect.client import core
from predilect.client.core import THROWN_INTO_PLANS, ClientBase, Plan, Rpc, Sleep
from predilect.client.inputs import ImageInput
from predilect.client.protocol import ServedModelInfo
from predilect.client.results import ScreeningItem, ScreeningResult
from predilect.client.settings import DEFAULT_MAX_IN_FLIGHT

T = TypeVar("T")
_END = object()


def run(plan: Plan[T], client: Any) -> T:
    """Perform ``plan``'s effects one after the other, blocking; its return value."""
    answer: Any = None
    error: BaseException | None = None
    while True:
        try:
            effect = plan.send(answer) if error is None else plan.throw(error)
        except StopIteration as done:
            return done.value
        answer, error = None, None
        try:
            if isinstance(effect, Rpc):
                answer = getattr(client, effect.method)(*effect.args, **effect.kwargs, client_timeout=effect.timeout_s)
            elif isinstance(effect, Sleep):
                time.sleep(effect.seconds)
            else:
                answer = effect.work()
        except THROWN_INTO_PLANS as e:
            error = e


class ScreeningClient(ClientBase):
    """Client of the ``fundus_screen`` ensemble over gRPC; thread-safe, a context manager.

    Args:
        url: ``host:port`` of Triton's gRPC endpoint.
        model_name: the ensemble to call.
        timeout_s: default total deadline of a call, retries included.
        attempt_timeout_s: optional deadline of each attempt; an attempt that passes it is retried
            while the total deadline leaves time.
        retry_policy: attempts and backoff (``RetryPolicy(max_attempts=1)`` disables retries).
        retry_budget: token bucket limiting retries to a fraction of requests; one per client by default.
        auth_token: the server's token, sent on every call under the header Triton checks
            (``contract.GRPC_AUTH_HEADER``); a refused token raises ``AuthenticationError``.
        headers: further gRPC metadata sent on every call.
        tls: TLS / mutual TLS settings; None for a plaintext channel.
        keepalive_time_s, keepalive_timeout_s: HTTP/2 keepalive pings while calls are in flight.
        camera: the camera these photographs come from, sent with each request (``contract.REQUEST_CAMERA``)
            for the server's per-camera shift metrics; a DICOM instance's own Manufacturer and model win.
        field_angle_deg: the camera's field angle in degrees, sent with each request
            (``contract.REQUEST_FIELD_ANGLE_DEG``): the server scales its crop so that the model sees the
            retina at the scale it was trained at (a wide-field photograph's posterior pole); a DICOM
            instance's own Horizontal Field of View wins. Without it the camera is taken to have the
            model's field angle (``PreprocessCfg.field_angle_deg``, 45 degrees by default).
    """

    _new_lock = threading.Lock

    def connect(self) -> ScreeningClient:
        """Check the server and the model, and discover the catalog; idempotent."""
        self._connection()
        return self

    def _connection(self) -> tuple[grpcclient.InferenceServerClient, ServedModelInfo]:
        with self._lock:
            if self._client is None or self._served is None:
                client = grpcclient.InferenceServerClient(self.url, **self._settings.client_kwargs())
                try:
                    served = run(core.discover(self._settings), client)
                except BaseException:
                    client.close()
                    raise
                self._client, self._served = client, served
            return self._client, self._served

    @property
    def served(self) -> ServedModelInfo:
        """The discovered catalog and model identity (connects if needed)."""
        return self._connection()[1]

    @property
    def catalog(self) -> Catalog:
        return self.served.catalog

    def screen(self, image: ImageInput, *, timeout_s: float | None = None, heatmaps: bool = False) -> ScreeningResult:
        """Screen one fundus photograph: JPEG/PNG bytes, a path, an HxWx3 uint8 RGB array, or a
        single-frame DICOM (pydicom Dataset, file or bytes).

        ``heatmaps``: also return each positive finding's attention map (``ScreeningResult.heatmaps``);
        IncompatibleModelError when the served model exports none.

        Raises ``ImageRejectedError`` when the server rejects the payload (never retried),
        ``DeadlineExceededError`` past ``timeout_s`` (default the client's), ``InputError`` for
        local input problems; multi-frame DICOM needs ``screen_frames`` or ``screen_items``.
        """
        client, served = self._connection()
        return run(core.screen_one(self._settings, served, image, timeout_s=timeout_s, heatmaps=heatmaps), client)

    def screen_frames(
        self, image: ImageInput, *, timeout_s: float | None = None, heatmaps: bool = False
    ) -> list[ScreeningResult]:
        """Screen every frame of an input (one request per frame, in order); one result for a plain
        image. The first failure is raised; ``screen_items`` reports each frame instead."""
        client, served = self._connection()
        return run(core.screen_frames(self._settings, served, image, timeout_s=timeout_s, heatmaps=heatmaps), client)

    def screen_items(
        self, image: ImageInput, *, timeout_s: float | None = None, heatmaps: bool = False
    ) -> list[ScreeningItem]:
        """Screen every frame of one input, one item per frame with its result or its error
        (never raising a client error); see ``ScreeningItem``."""
        client, served = self._connection()
        return run(core.screen_items(self._settings, served, 0, image, timeout_s=timeout_s, heatmaps=heatmaps), client)

    def _items(
        self, index: int, image: ImageInput, timeout_s: float | None, heatmaps: bool = False
    ) -> list[ScreeningItem]:
        client, served = self._connection()
        return run(
            core.screen_items(self._settings, served, index, image, timeout_s=timeout_s, heatmaps=heatmaps), client
        )

    def screen_many(
        self,
        images: Iterable[ImageInput],
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        timeout_s: float | None = None,
        heatmaps: bool = False,
    ) -> Iterator[ScreeningItem]:
        """Screen a stream of inputs with at most ``max_in_flight`` inputs in flight.

        Yields the ``ScreeningItem`` of each image (of each frame, for DICOM) as inputs complete
        -- not in input order; ``index`` says which input -- and a failed input yields items
        with ``error`` while the stream goes on. Inputs are pulled from ``images`` only when a
        slot is free, so a slow server slows the reading (back-pressure).
        """
        core.check_max_in_flight(max_in_flight)
        self._connection()
        source = iter(images)
        pending: set[Future[list[ScreeningItem]]] = set()
        with ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="predilect-screen") as pool:
            try:
                index, exhausted = 0, False
                while True:
                    while not exhausted and len(pending) < max_in_flight:
                        image = next(source, _END)
                        if image is _END:
                            exhausted = True
                        else:
                            pending.add(pool.submit(self._items, index, image, timeout_s, heatmaps))
                            index += 1
                    if not pending:
                        return
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield from future.result()
            finally:
                for future in pending:
                    future.cancel()

    def close(self) -> None:
        """Close the gRPC channel; a later call reconnects."""
        with self._lock:
            client, self._client, self._served = self._client, None, None
        if client is not None:
            client.close()

    def __enter__(self) -> ScreeningClient:
        return self.connect()

    def __exit__(
        self, _exc_type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()
