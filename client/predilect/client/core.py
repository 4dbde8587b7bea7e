"""The one client core: every decision of a call, as a plan that two drivers perform.

A *plan* is a generator that yields *effects* -- one gRPC attempt (``Rpc``), a back-off pause
(``Sleep``), a piece of local work such as reading a file or decoding a DICOM frame (``Local``)
-- and is sent each effect's answer back, or has its error thrown back in. Discovery, the
retry loop, the per-input frame iteration and the per-frame error handling are written here
once; ``ScreeningClient`` (blocking, also under gevent) and ``AsyncScreeningClient`` (asyncio)
only perform effects, so the two cannot behave differently.

Errors thrown back into a plan are the ones it may handle (``THROWN_INTO_PLANS``); anything
else leaves the driver as it is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TypeVar, Union

from tritonclient.utils import InferenceServerException

from predilect import contract
from predilect.client import network, protocol
from predilect.client.errors import (
    DeadlineExceededError,
    ModelNotReadyError,
    PredilectClientError,
    ServerNotFoundError,
    ServerUnavailableError,
)
from predilect.client.inputs import ImageInput, Prepared, prepare, single_frame
from predilect.client.protocol import ServedModelInfo, TlsConfig
from predilect.client.results import ScreeningItem, ScreeningResult
from predilect.client.retry import RetryBudget, RetryPolicy
from predilect.client.settings import (
    DEFAULT_KEEPALIVE_TIME_S,
    DEFAULT_KEEPALIVE_TIMEOUT_S,
    DEFAULT_MODEL,
    DEFAULT_TIMEOUT_S,
    DEFAULT_URL,
    ClientSettings,
)

_log = logging.getLogger("predilect.client")
T = TypeVar("T")


@dataclass(frozen=True)
class Rpc:
    """One attempt of a tritonclient call: ``client.<method>(*args, **kwargs, client_timeout=timeout_s)``."""

    method: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    timeout_s: float = 0.0


@dataclass(frozen=True)
class Sleep:
    """Back off before the next attempt."""

    seconds: float


@dataclass(frozen=True)
class Local:
    """Local work (file reads, DICOM decoding, PNG encoding): inline when blocking, a worker thread in asyncio."""

    work: Callable[[], Any]


Effect = Union[Rpc, Sleep, Local]
Plan = Generator[Effect, Any, T]
THROWN_INTO_PLANS = (InferenceServerException, PredilectClientError)
"""The errors a driver throws back into the plan whose effect raised them."""


def check_max_in_flight(max_in_flight: int) -> None:
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")


def call(
    settings: ClientSettings,
    method: str,
    *args: Any,
    timeout_s: float | None,
    server_timeout: bool = False,
    **kwargs: Any,
) -> Plan[Any]:
    """``client.<method>(...)`` with the client's headers, retried as ``settings.attempts`` decides;
    a tritonclient error that is not retried becomes the client error that says what to do.

    ``server_timeout``: also tell the server the attempt's timeout (Triton's request ``timeout``, in
    us), so that a request still queued when this client has given up on it is dropped, not run.
    """
    attempts = settings.attempts(timeout_s)
    while True:
        attempt_timeout_s = attempts.begin()
        if attempt_timeout_s <= 0:
            raise DeadlineExceededError(
                f"no answer from {settings.url} within {settings.deadline_s(timeout_s)} s "
                f"({attempts.number - 1} attempts); raise timeout_s or check the server's load",
                attempts=attempts.number - 1,
            )
        options = {**kwargs, "headers": settings.headers}
        if server_timeout:
            options["timeout"] = max(1, int(attempt_timeout_s * 1_000_000))
        try:
            return (yield Rpc(method, args, options, timeout_s=attempt_timeout_s))
        except InferenceServerException as e:
            code = protocol.status_code(e)
            delay_s = attempts.retry_delay_s(code)
            if delay_s is None:
                raise protocol.translate(
                    e,
                    url=settings.url,
                    model_name=settings.model_name,
                    timeout_s=settings.deadline_s(timeout_s),
                    attempts=attempts.number,
                    gave_up_because=attempts.gave_up_because,
                    token_sent=settings.token_sent,
                ) from e
            _log.debug("%s: attempt %d failed with %s; retrying in %.3f s", method, attempts.number, code, delay_s)
            yield Sleep(delay_s)


def discover(settings: ClientSettings) -> Plan[ServedModelInfo]:
    """Model discovery: the server is live, the model ready, and its config names the catalog."""
    url, name = settings.url, settings.model_name
    unresolved = yield Local(partial(network.resolve_error, url))
    if unresolved is not None:
        raise ServerNotFoundError(f"no Triton server at {url}: {unresolved}")
    try:
        live = yield from call(settings, "is_server_live", timeout_s=None)
    except ServerUnavailableError as e:
        cause = yield Local(partial(network.connect_error, url))
        if cause is None:
            raise
        tried = f" after {e.attempts} attempts" if e.attempts > 1 else ""
        raise ServerUnavailableError(
            f"no Triton server answers at {url}{tried}: {cause}; start one with `predilect serve`, "
            "or check the address",
            attempts=e.attempts,
        ) from (e.__cause__ or e)  # the gRPC error that gave up, as for every other client error
    if not live:
        raise ServerUnavailableError(f"the Triton server at {url} is not live; check `predilect serve`")
    if not (yield from call(settings, "is_model_ready", name, timeout_s=None)):
        raise ModelNotReadyError(
            f"model {name!r} is not ready on {url}; wait for the server to finish loading it or check the model name"
        )
    response = yield from call(settings, "get_model_config", name, timeout_s=None)
    served = protocol.served_info(response.config, model_name=name, url=url)
    _log.debug("connected to %s: %s %s, %d diseases", url, served.model_name, served.model_version, len(served.catalog))
    return served


def screen_prepared(
    settings: ClientSettings,
    served: ServedModelInfo,
    prepared: Prepared,
    *,
    timeout_s: float | None,
    heatmaps: bool = False,
) -> Plan[ScreeningResult]:
    """One request: the payload in, the server's decision out (with each finding's heatmap when asked)."""
    if heatmaps:
        protocol.check_heatmaps(served, url=settings.url, model_name=settings.model_name)
    inputs, outputs = protocol.infer_inputs(prepared.payload), protocol.requested_outputs(heatmaps=heatmaps)
    camera = prepared.camera or settings.camera
    angle = prepared.field_angle_deg if prepared.field_angle_deg is not None else settings.field_angle_deg
    parameters: dict[str, str | float] = {contract.REQUEST_CAMERA: camera} if camera else {}
    if angle is not None:
        parameters[contract.REQUEST_FIELD_ANGLE_DEG] = angle
    extra = {"parameters": parameters} if parameters else {}
    start = time.perf_counter()
    response = yield from call(
        settings,
        "infer",
        settings.model_name,
        inputs,
        outputs=outputs,
        timeout_s=timeout_s,
        server_timeout=True,
        **extra,
    )
    latency_s = time.perf_counter() - start
    _log.debug("screened a %d-byte payload in %.3f s", len(prepared.payload), latency_s)
    return protocol.parse_result(
        response,
        served,
        url=settings.url,
        model_name=settings.model_name,
        latency_s=latency_s,
        sop_instance_uid=prepared.sop_instance_uid,
        frame=prepared.frame,
        heatmaps=heatmaps,
        camera=camera,
    )


def screen_one(
    settings: ClientSettings,
    served: ServedModelInfo,
    image: ImageInput,
    *,
    timeout_s: float | None,
    heatmaps: bool = False,
) -> Plan[ScreeningResult]:
    """A single-frame input; InputError for a multi-frame DICOM instance."""
    prepared = yield Local(partial(single_frame, image))
    return (yield from screen_prepared(settings, served, prepared, timeout_s=timeout_s, heatmaps=heatmaps))


def _frames(image: ImageInput) -> Plan[Iterator[Prepared]]:
    """The input's payloads, one per frame, each prepared only when the plan asks for it."""
    frames: Iterator[Prepared] = yield Local(partial(prepare, image))
    return frames


def _next_frame(frames: Iterator[Prepared]) -> Plan[Prepared | None]:
    prepared: Prepared | None = yield Local(partial(next, frames, None))
    return prepared


def screen_frames(
    settings: ClientSettings,
    served: ServedModelInfo,
    image: ImageInput,
    *,
    timeout_s: float | None,
    heatmaps: bool = False,
) -> Plan[list[ScreeningResult]]:
    """Every frame, in order, one request each; the first failure is raised (frames before it
    have been sent). Frames are prepared one at a time, never all at once."""
    frames = yield from _frames(image)
    results = []
    while (prepared := (yield from _next_frame(frames))) is not None:
        results.append((yield from screen_prepared(settings, served, prepared, timeout_s=timeout_s, heatmaps=heatmaps)))
    return results


def screen_items(
    settings: ClientSettings,
    served: ServedModelInfo,
    index: int,
    image: ImageInput,
    *,
    timeout_s: float | None,
    heatmaps: bool = False,
) -> Plan[list[ScreeningItem]]:
    """Every frame of one input as items, never raising a client error: a frame that fails --
    rejected by the server, or not decodable here -- is an item with its error. A frame that
    cannot be prepared ends the input (the frames after it cannot be reached); the frames
    before it keep their results. ``frames`` of every item is the number of items."""
    items: list[ScreeningItem] = []
    last_frame: int | None = None
    try:
        frames = yield from _frames(image)
        while (prepared := (yield from _next_frame(frames))) is not None:
            last_frame = prepared.frame
            try:
                result = yield from screen_prepared(settings, served, prepared, timeout_s=timeout_s, heatmaps=heatmaps)
            except PredilectClientError as e:
                items.append(ScreeningItem(index, image, error=e, frame=prepared.frame))
            else:
                items.append(ScreeningItem(index, image, result=result, frame=prepared.frame))
    except PredilectClientError as e:  # the input, or its next frame, could not be read or prepared
        failed_frame = last_frame + 1 if last_frame is not None else None
        items.append(ScreeningItem(index, image, error=e, frame=failed_frame))
    return [replace(item, frames=len(items)) for item in items]


class ClientBase:
    """Options and connection state of both faces (see ``ScreeningClient`` for the options)."""

    _new_lock: Callable[[], Any]
    """The lock guarding the connection: a ``threading.Lock`` or an ``asyncio.Lock``."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        model_name: str = DEFAULT_MODEL,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        attempt_timeout_s: float | None = None,
        retry_policy: RetryPolicy = RetryPolicy(),
        retry_budget: RetryBudget | None = None,
        auth_token: str | None = None,
        headers: Mapping[str, str] | None = None,
        tls: TlsConfig | None = None,
        keepalive_time_s: float = DEFAULT_KEEPALIVE_TIME_S,
        keepalive_timeout_s: float = DEFAULT_KEEPALIVE_TIMEOUT_S,
        camera: str | None = None,
        field_angle_deg: float | None = None,
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
            camera=camera,
            field_angle_deg=field_angle_deg,
        )
        self.url, self.model_name, self.timeout_s = self._settings.url, model_name, timeout_s
        self._client: Any = None  # the face's tritonclient InferenceServerClient, once connected
        self._served: ServedModelInfo | None = None
        self._lock = self._new_lock()

    @property
    def retry_budget(self) -> RetryBudget:
        return self._settings.retry_budget
