"""``ScreeningClient``: screens fundus photographs on the Triton ``fundus_screen`` ensemble.

At connect the client reads the ensemble's config parameters (catalog with ids, names and
thresholds; model name and version): this is the only source of labels and thresholds.
Calls retry on UNAVAILABLE / RESOURCE_EXHAUSTED (and a per-attempt timeout) with jittered
exponential backoff inside the total deadline ``timeout_s`` and the client's retry budget.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from types import TracebackType
from typing import TypeVar

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from predilect import contract
from predilect.catalog import Catalog
from predilect.client import protocol
from predilect.client.errors import (
    DeadlineExceededError,
    ModelNotReadyError,
    PredilectClientError,
    ServerUnavailableError,
)
from predilect.client.inputs import ImageInput, Prepared, prepare, single_frame
from predilect.client.protocol import ServedModelInfo, TlsConfig
from predilect.client.results import ScreeningItem, ScreeningResult
from predilect.client.retry import Attempts, RetryBudget, RetryPolicy

_log = logging.getLogger("predilect.client")
T = TypeVar("T")


class ClientSettings:
    """The options both clients share; validated once (see ``ScreeningClient`` for their meaning)."""

    def __init__(
        self,
        url: str,
        *,
        model_name: str,
        timeout_s: float,
        attempt_timeout_s: float | None,
        retry_policy: RetryPolicy,
        retry_budget: RetryBudget | None,
        auth_token: str | None,
        headers: Mapping[str, str] | None,
        tls: TlsConfig | None,
        keepalive_time_s: float,
        keepalive_timeout_s: float,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if attempt_timeout_s is not None and attempt_timeout_s <= 0:
            raise ValueError(f"attempt_timeout_s must be > 0, got {attempt_timeout_s}")
        self.url, self.model_name, self.timeout_s = url, model_name, timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self.retry_policy = retry_policy
        self.retry_budget = retry_budget if retry_budget is not None else RetryBudget()
        self.headers = protocol.request_headers(auth_token=auth_token, headers=headers)
        self.tls = tls
        self.channel_args = protocol.channel_args(
            keepalive_time_s=keepalive_time_s, keepalive_timeout_s=keepalive_timeout_s, tls=tls
        )
        self.rng = random.Random()

    def client_kwargs(self) -> dict:
        """Keyword arguments of tritonclient's (sync or aio) InferenceServerClient."""
        kwargs: dict = {"channel_args": self.channel_args}
        if self.tls is not None:
            kwargs["creds"] = self.tls.credentials()
        return kwargs

    def attempts(self, timeout_s: float | None) -> Attempts:
        return Attempts(
            self.retry_policy,
            self.retry_budget,
            timeout_s=self.timeout_s if timeout_s is None else timeout_s,
            attempt_timeout_s=self.attempt_timeout_s,
            rng=self.rng,
        )

    def failure(
        self, error: InferenceServerException, attempts: Attempts, timeout_s: float | None
    ) -> PredilectClientError:
        return protocol.translate(
            error,
            url=self.url,
            model_name=self.model_name,
            timeout_s=self.timeout_s if timeout_s is None else timeout_s,
            attempts=attempts.number,
            gave_up_because=attempts.gave_up_because,
        )

    def deadline_passed(self, attempts: Attempts, timeout_s: float | None) -> DeadlineExceededError:
        return DeadlineExceededError(
            f"no answer from {self.url} within {self.timeout_s if timeout_s is None else timeout_s}"
            f" s ({attempts.number - 1} attempts); raise timeout_s or check the server's load",
            attempts=attempts.number - 1,
        )


class _ClientCore:
    """Options and connection state shared by the sync and asyncio clients (see ``ScreeningClient``)."""

    _new_lock: Callable[[], object] = threading.Lock

    def __init__(
        self,
        url: str = "localhost:8001",
        *,
        model_name: str = contract.ENSEMBLE,
        timeout_s: float = 30.0,
        attempt_timeout_s: float | None = None,
        retry_policy: RetryPolicy = RetryPolicy(),
        retry_budget: RetryBudget | None = None,
        auth_token: str | None = None,
        headers: Mapping[str, str] | None = None,
        tls: TlsConfig | None = None,
        keepalive_time_s: float = 60.0,
        keepalive_timeout_s: float = 20.0,
    ) -> None:
        self._settings = ClientSettings(
            url,
            model_name=model_name,
            timeout_s=timeout_s,
            attempt_timeout_s=attempt_timeout_s,
            retry_policy=retry_policy,
            retry_budget=retry_budget,
            auth_token=auth_token,
            headers=headers,
            tls=tls,
            keepalive_time_s=keepalive_time_s,
            keepalive_timeout_s=keepalive_timeout_s,
        )
        self.url, self.model_name, self.timeout_s = url, model_name, timeout_s
        self._client = None
        self._served: ServedModelInfo | None = None
        self._lock = self._new_lock()

    @property
    def retry_budget(self) -> RetryBudget:
        return self._settings.retry_budget


class ScreeningClient(_ClientCore):
    """Client of the ``fundus_screen`` ensemble over gRPC; thread-safe, a context manager.

    Args:
        url: ``host:port`` of Triton's gRPC endpoint.
        model_name: the ensemble to call.
        timeout_s: default total deadline of a call, retries included.
        attempt_timeout_s: optional deadline of each attempt; an attempt that passes it is retried
            while the total deadline leaves time.
        retry_policy: attempts and backoff (``RetryPolicy(max_attempts=1)`` disables retries).
        retry_budget: token bucket limiting retries to a fraction of requests; one per client by default.
        auth_token: sent as ``authorization: Bearer <token>`` metadata on every call.
        headers: further gRPC metadata sent on every call.
        tls: TLS / mutual TLS settings; None for a plaintext channel.
        keepalive_time_s, keepalive_timeout_s: HTTP/2 keepalive pings while calls are in flight.
    """

    def connect(self) -> ScreeningClient:
        """Check the server and the model, and discover the catalog; idempotent."""
        self._connection()
        return self

    def _connection(self) -> tuple[grpcclient.InferenceServerClient, ServedModelInfo]:
        with self._lock:
            if self._client is None or self._served is None:
                client = grpcclient.InferenceServerClient(self.url, **self._settings.client_kwargs())
                try:
                    served = self._discover(client)
                except BaseException:
                    client.close()
                    raise
                self._client, self._served = client, served
            return self._client, self._served

    def _call(self, what: str, call: Callable[[float], T], *, timeout_s: float | None) -> T:
        """``call(attempt_timeout_s)`` with retries; tritonclient errors become client errors."""
        attempts = self._settings.attempts(timeout_s)
        while True:
            attempt_timeout_s = attempts.begin()
            if attempt_timeout_s <= 0:
                raise self._settings.deadline_passed(attempts, timeout_s)
            try:
                return call(attempt_timeout_s)
            except InferenceServerException as e:
                code = protocol.status_code(e)
                delay_s = attempts.retry_delay_s(code)
                if delay_s is None:
                    raise self._settings.failure(e, attempts, timeout_s) from e
                _log.debug("%s: attempt %d failed with %s; retrying in %.3f s", what, attempts.number, code, delay_s)
                time.sleep(delay_s)

    def _discover(self, client: grpcclient.InferenceServerClient) -> ServedModelInfo:
        settings, headers = self._settings, self._settings.headers
        if not self._call(
            "is_server_live", lambda t: client.is_server_live(headers=headers, client_timeout=t), timeout_s=None
        ):
            raise ServerUnavailableError(f"the Triton server at {self.url} is not live; check `predilect serve`")
        if not self._call(
            "is_model_ready",
            lambda t: client.is_model_ready(self.model_name, headers=headers, client_timeout=t),
            timeout_s=None,
        ):
            raise ModelNotReadyError(
                f"model {self.model_name!r} is not ready on {self.url}; wait for the server "
                "to finish loading it or check the model name"
            )
        config = self._call(
            "get_model_config",
            lambda t: client.get_model_config(self.model_name, headers=headers, client_timeout=t),
            timeout_s=None,
        ).config
        served = protocol.served_info(config, model_name=self.model_name, url=self.url)
        _log.debug(
            "connected to %s: %s %s, %d diseases",
            settings.url,
            served.model_name,
            served.model_version,
            len(served.catalog),
        )
        return served

    @property
    def served(self) -> ServedModelInfo:
        """The discovered catalog and model identity (connects if needed)."""
        return self._connection()[1]

    @property
    def catalog(self) -> Catalog:
        return self.served.catalog

    def _screen_prepared(self, prepared: Prepared, *, timeout_s: float | None) -> ScreeningResult:
        client, served = self._connection()
        inputs, outputs = protocol.infer_inputs(prepared.payload), protocol.requested_outputs()
        start = time.perf_counter()
        response = self._call(
            "infer",
            lambda t: client.infer(
                self.model_name, inputs, outputs=outputs, headers=self._settings.headers, client_timeout=t
            ),
            timeout_s=timeout_s,
        )
        latency_s = time.perf_counter() - start
        _log.debug("screened a %d-byte payload in %.3f s", len(prepared.payload), latency_s)
        return protocol.parse_result(
            response,
            served,
            url=self.url,
            model_name=self.model_name,
            latency_s=latency_s,
            sop_instance_uid=prepared.sop_instance_uid,
            frame=prepared.frame,
        )

    def screen(self, image: ImageInput, *, timeout_s: float | None = None) -> ScreeningResult:
        """Screen one fundus photograph: JPEG/PNG bytes, a path, an HxWx3 uint8 RGB array, or a
        single-frame DICOM (pydicom Dataset, file or bytes).

        Raises ``ImageRejectedError`` when the server rejects the payload (never retried),
        ``DeadlineExceededError`` past ``timeout_s`` (default the client's), ``InputError`` for
        local input problems; multi-frame DICOM needs ``screen_frames``.
        """
        return self._screen_prepared(single_frame(image), timeout_s=timeout_s)

    def screen_frames(self, image: ImageInput, *, timeout_s: float | None = None) -> list[ScreeningResult]:
        """Screen every frame of an input (one request per frame, in order); one result for a plain image."""
        return [self._screen_prepared(prepared, timeout_s=timeout_s) for prepared in prepare(image)]

    def _screen_item(self, index: int, image: ImageInput, timeout_s: float | None) -> list[ScreeningItem]:
        items: list[ScreeningItem] = []
        try:
            for prepared in prepare(image):
                try:
                    items.append(
                        ScreeningItem(index, image, result=self._screen_prepared(prepared, timeout_s=timeout_s))
                    )
                except PredilectClientError as e:
                    items.append(ScreeningItem(index, image, error=e))
        except PredilectClientError as e:  # the input itself could not be read or prepared
            items.append(ScreeningItem(index, image, error=e))
        return [replace(item, frames=len(items)) for item in items]

    def screen_many(
        self, images: Iterable[ImageInput], *, max_in_flight: int = 8, timeout_s: float | None = None
    ) -> Iterator[ScreeningItem]:
        """Screen a stream of inputs with at most ``max_in_flight`` inputs in flight.

        Yields one ``ScreeningItem`` per image (per frame for DICOM) as they complete; a failed
        input yields an item with ``error`` and the stream goes on. Inputs are pulled from
        ``images`` only when a slot is free, so a slow server slows the reading (back-pressure).
        """
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
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
                            pending.add(pool.submit(self._screen_item, index, image, timeout_s))
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
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


_END = object()
