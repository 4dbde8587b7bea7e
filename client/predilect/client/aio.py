"""``AsyncScreeningClient``: the asyncio face of the client core (``tritonclient.grpc.aio``).

It performs the same plans as ``ScreeningClient`` (``core``): same options, discovery, retries,
frame iteration and errors. Local work (file reads, DICOM decoding, PNG encoding) runs in
worker threads so the event loop stays responsive.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from types import TracebackType
from typing import Any, TypeVar

import tritonclient.grpc.aio as aioclient

from predilect.catalog import Catalog
from predilect.client import core
from predilect.client.core import THROWN_INTO_PLANS, ClientBase, Plan, Rpc, Sleep
from predilect.client.inputs import ImageInput
from predilect.client.protocol import ServedModelInfo
from predilect.client.results import ScreeningItem, ScreeningResult
from predilect.client.settings import DEFAULT_MAX_IN_FLIGHT

T = TypeVar("T")


async def run(plan: Plan[T], client: Any) -> T:
    """Perform ``plan``'s effects one after the other without blocking the loop; its return value."""
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
                method = getattr(client, effect.method)
                answer = await method(*effect.args, **effect.kwargs, client_timeout=effect.timeout_s)
            elif isinstance(effect, Sleep):
                await asyncio.sleep(effect.seconds)
            else:
                answer = await asyncio.to_thread(effect.work)
        except THROWN_INTO_PLANS as e:
            error = e


async def _aiter(images: Iterable[ImageInput] | AsyncIterable[ImageInput]) -> AsyncIterator[ImageInput]:
    if isinstance(images, AsyncIterable):
        async for image in images:
            yield image
    else:
        for image in images:
            yield image


class AsyncScreeningClient(ClientBase):
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
                    served = await run(core.discover(self._settings), client)
                except BaseException:
                    await client.close()
                    raise
                self._client, self._served = client, served
            return self._client, self._served

    async def served(self) -> ServedModelInfo:
        """The discovered catalog and model identity (connects if needed)."""
        return (await self._connection())[1]

    async def catalog(self) -> Catalog:
        return (await self.served()).catalog

    async def screen(
        self, image: ImageInput, *, timeout_s: float | None = None, heatmaps: bool = False
    ) -> ScreeningResult:
        """Screen one single-frame input (see ``ScreeningClient.screen``)."""
        client, served = await self._connection()
        return await run(core.screen_one(self._settings, served, image, timeout_s=timeout_s, heatmaps=heatmaps), client)

    async def screen_frames(
        self, image: ImageInput, *, timeout_s: float | None = None, heatmaps: bool = False
    ) -> list[ScreeningResult]:
        """Screen every frame of an input, one request per frame, in order (see ``ScreeningClient.screen_frames``)."""
        client, served = await self._connection()
        return await run(
            core.screen_frames(self._settings, served, image, timeout_s=timeout_s, heatmaps=heatmaps), client
        )

    async def screen_items(
        self, image: ImageInput, *, timeout_s: float | None = None, heatmaps: bool = False
    ) -> list[ScreeningItem]:
        """Every frame of one input as items with results or errors (see ``ScreeningClient.screen_items``)."""
        return await self._items(0, image, timeout_s, heatmaps)

    async def _items(
        self, index: int, image: ImageInput, timeout_s: float | None, heatmaps: bool = False
    ) -> list[ScreeningItem]:
        client, served = await self._connection()
        return await run(
            core.screen_items(self._settings, served, index, image, timeout_s=timeout_s, heatmaps=heatmaps), client
        )

    async def screen_many(
        self,
        images: Iterable[ImageInput] | AsyncIterable[ImageInput],
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        timeout_s: float | None = None,
        heatmaps: bool = False,
    ) -> AsyncIterator[ScreeningItem]:
        """Screen a (sync or async) stream with at most ``max_in_flight`` inputs in flight; yields
        ``ScreeningItem`` as inputs complete (see ``ScreeningClient.screen_many``)."""
        core.check_max_in_flight(max_in_flight)
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
                    pending.add(asyncio.create_task(self._items(index, image, timeout_s, heatmaps)))
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
        self, _exc_type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.close()
