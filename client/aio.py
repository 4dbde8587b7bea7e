"""``AsyncScreeningClient``: the asyncio twin of ``ScreeningClient`` (tritonclient.grpc.aio).

Same options, discovery, retries and errors; local preparation (file reads, DICOM decoding,
PNG encoding) runs in worker threads so the event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import replace
from types import TracebackType
from typing import TypeVar

import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from predilect.catalog import Catalog
from predilect.client import protocol
from predilect.client.errors import ModelNotReadyError, PredilectClientError, ServerUnavailableError
from predilect.client.inputs import ImageInput, Prepared, prepare, single_frame
from predilect.client.protocol import ServedModelInfo
from predilect.client.results import ScreeningItem, ScreeningResult
from predilect.client.screening import _ClientCore

_log = logging.getLogger("predilect.client")
T = TypeVar("T")


async def _aiter(images: Iterable[ImageInput] | AsyncIterable[ImageInput]) -> AsyncIterator[ImageInput]:
    if isinstance(images, AsyncIterable):
        async for image in images:
            yield image
    else:
        for image in images:
            yield image


class AsyncScreeningClient(_ClientCore):
    """Asyncio client of the ``fundus_screen`` ensemble; an async context manager.

    Takes the options of ``ScreeningClient``. Create and use it inside one running event loop.
    """

    _new_lock = asyncio.Lock

    async def connect(self) -> AsyncScreeningClient:
        """Check the server and the model, and discover the catalog; idempotent."""
        await self._connection()
        return self

    async def _connection(self) -> tuple[aioclient.InferenceServerClient, ServedModelInfo]:
        async with self._lock:
            if self._client is None or self._served is None:
                client = aioclient.InferenceServerClient(self.url, **self._settings.client_kwargs())
                try:
                    served = await self._discover(client)
                except BaseException:
                    await client.close()
                    raise
                self._client, self._served = client, served
            return self._client, self._served

    async def _call(self, what: str, call: Callable[[float], Awaitable[T]], *, timeout_s: float | None) -> T:
        """``await call(attempt_timeout_s)`` with retries; tritonclient errors become client errors."""
        attempts = self._settings.attempts(timeout_s)
        while True:
            attempt_timeout_s = attempts.begin()
            if attempt_timeout_s <= 0:
                raise self._settings.deadline_passed(attempts, timeout_s)
            try:
                return await call(attempt_timeout_s)
            except InferenceServerException as e:
                code = protocol.status_code(e)
                delay_s = attempts.retry_delay_s(code)
                if delay_s is None:
                    raise self._settings.failure(e, attempts, timeout_s) from e
                _log.debug("%s: attempt %d failed with %s; retrying in %.3f s", what, attempts.number, code, delay_s)
                await asyncio.sleep(delay_s)

    async def _discover(self, client: aioclient.InferenceServerClient) -> ServedModelInfo:
        headers, name = self._settings.headers, self.model_name
        if not await self._call(
            "is_server_live", lambda t: client.is_server_live(headers=headers, client_timeout=t), timeout_s=None
        ):
            raise ServerUnavailableError(f"the Triton server at {self.url} is not live; check `predilect serve`")
        if not await self._call(
            "is_model_ready", lambda t: client.is_model_ready(name, headers=headers, client_timeout=t), timeout_s=None
        ):
            raise ModelNotReadyError(
                f"model {name!r} is not ready on {self.url}; wait for the server to finish "
                "loading it or check the model name"
            )
        response = await self._call(
            "get_model_config",
            lambda t: client.get_model_config(name, headers=headers, client_timeout=t),
            timeout_s=None,
        )
        return protocol.served_info(response.config, model_name=name, url=self.url)

    async def served(self) -> ServedModelInfo:
        """The discovered catalog and model identity (connects if needed)."""
        return (await self._connection())[1]

    async def catalog(self) -> Catalog:
        return (await self.served()).catalog

    async def _screen_prepared(self, prepared: Prepared, *, timeout_s: float | None) -> ScreeningResult:
        client, served = await self._connection()
        inputs, outputs = protocol.infer_inputs(prepared.payload), protocol.requested_outputs()
        start = time.perf_counter()
        response = await self._call(
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

    async def screen(self, image: ImageInput, *, timeout_s: float | None = None) -> ScreeningResult:
        """Screen one single-frame input (see ``ScreeningClient.screen``)."""
        prepared = await asyncio.to_thread(single_frame, image)
        return await self._screen_prepared(prepared, timeout_s=timeout_s)

    async def screen_frames(self, image: ImageInput, *, timeout_s: float | None = None) -> list[ScreeningResult]:
        """Screen every frame of an input, one request per frame, in order."""
        prepared = await asyncio.to_thread(lambda: list(prepare(image)))
        return [await self._screen_prepared(p, timeout_s=timeout_s) for p in prepared]

    async def _screen_item(self, index: int, image: ImageInput, timeout_s: float | None) -> list[ScreeningItem]:
        try:
            prepared = await asyncio.to_thread(lambda: list(prepare(image)))
        except PredilectClientError as e:
            return [ScreeningItem(index, image, error=e)]
        items = []
        for p in prepared:
            try:
                items.append(ScreeningItem(index, image, result=await self._screen_prepared(p, timeout_s=timeout_s)))
            except PredilectClientError as e:
                items.append(ScreeningItem(index, image, error=e))
        return [replace(item, frames=len(items)) for item in items]

    async def screen_many(
        self,
        images: Iterable[ImageInput] | AsyncIterable[ImageInput],
        *,
        max_in_flight: int = 8,
        timeout_s: float | None = None,
    ) -> AsyncIterator[ScreeningItem]:
        """Screen a (sync or async) stream with at most ``max_in_flight`` inputs in flight; yields
        ``ScreeningItem`` as they complete (see ``ScreeningClient.screen_many``)."""
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        await self._connection()
        source = _aiter(images)
        pending: set[asyncio.Task[list[ScreeningItem]]] = set()
        try:
            index, exhausted = 0, False
            while True:
                while not exhausted and len(pending) < max_in_flight:
                    try:
                        image = await source.__anext__()
                    except StopAsyncIteration:
                        exhausted = True
                        break
                    pending.add(asyncio.create_task(self._screen_item(index, image, timeout_s)))
                    index += 1
                if not pending:
                    return
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    for item in task.result():
                        yield item
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def close(self) -> None:
        """Close the gRPC channel; a later call reconnects."""
        client, self._client, self._served = self._client, None, None
        if client is not None:
            await client.close()

    async def __aenter__(self) -> AsyncScreeningClient:
        return await self.connect()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
