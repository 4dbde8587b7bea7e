"""Locust users for the experiment: the product's TritonGrpcUser under three ways of pairing gevent and gRPC.

PREDILECT_BENCH_GRPC_MODE:
  gevent       grpc.experimental.gevent.init_gevent() (what the product's locustfile does), nothing else
  gevent-exit  the same, and once Locust has written its statistics (its ``quit`` event) the process leaves
               with os._exit: no interpreter teardown, so no channel is closed by the garbage collector
  threadpool   no gRPC gevent integration: each call runs on a real OS thread of gevent's hub thread pool
               (sized to the users), the greenlet waits for it; channels are plain gRPC
"""

from __future__ import annotations

import atexit
import itertools
import os
import random
import time
from pathlib import Path

MODE = os.environ.get("PREDILECT_BENCH_GRPC_MODE", "gevent")
if MODE.startswith("gevent"):
    import grpc.experimental.gevent as grpc_gevent

    grpc_gevent.init_gevent()

import gevent  # noqa: E402
from locust import User, constant, events, task  # noqa: E402

from predilect import contract  # noqa: E402
from predilect.client import ScreeningClient  # noqa: E402
from predilect.client.errors import PredilectClientError  # noqa: E402

_PAYLOADS: list[bytes] = []


@events.init.add_listener
def _load(environment, **_kwargs) -> None:
    paths = [Path(p) for p in Path(os.environ["PREDILECT_BENCH_IMAGES"]).read_text().splitlines() if p.strip()]
    _PAYLOADS[:] = [p.read_bytes() for p in paths]


@events.test_start.add_listener
def _size_pool(environment, **_kwargs) -> None:
    if MODE == "threadpool":
        gevent.get_hub().threadpool.maxsize = max(16, environment.parsed_options.num_users + 4)


@events.quit.add_listener
def _leave(exit_code, **_kwargs) -> None:
    if MODE == "gevent-exit":
        atexit.register(os._exit, exit_code)


class TritonGrpcUser(User):
    wait_time = constant(0)

    def on_start(self) -> None:
        self._client = self._call(lambda: ScreeningClient(self.host, timeout_s=120).connect())
        start = random.randrange(len(_PAYLOADS))
        self._payloads = itertools.islice(itertools.cycle(_PAYLOADS), start, None)

    def _call(self, fn):
        return gevent.get_hub().threadpool.apply(fn) if MODE == "threadpool" else fn()

    def on_stop(self) -> None:
        self._call(self._client.close)

    @task
    def screen(self) -> None:
        payload = next(self._payloads)
        start = time.perf_counter()
        error = None
        try:
            self._call(lambda: self._client.screen(payload))
        except PredilectClientError as e:
            error = e
        self.environment.events.request.fire(
            request_type="grpc", name=contract.ENSEMBLE, response_time=(time.perf_counter() - start) * 1000.0,
            response_length=len(payload), exception=error, context={},
        )
