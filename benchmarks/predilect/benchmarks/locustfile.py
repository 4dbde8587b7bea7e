"""Locust users for the screening benchmarks; run only in a ``python -m locust`` subprocess.

    LOCUSTFILE=benchmarks/predilect/benchmarks/locustfile.py
    python -m locust -f $LOCUSTFILE TritonGrpcUser --headless --host 127.0.0.1:8001 \
        --users 16 --spawn-rate 16 --run-time 30s --csv out/triton
    python -m locust -f $LOCUSTFILE BaselineHttpUser --headless --host http://127.0.0.1:8080 ...
    python -m locust -f $LOCUSTFILE BentoHttpUser --headless --host http://127.0.0.1:3000 ...

``PREDILECT_BENCH_IMAGES`` names a text file listing the JPEGs to send (one path per line);
each user cycles through them from its own offset, closed loop (no think time), so the
number of users is the number of requests in flight.
"""

from __future__ import annotations

import atexit
import itertools
import os
import random
import sys
import time
from pathlib import Path

# Locust has monkey-patched the standard library by now; gRPC's C core must be told to
# cooperate with gevent before any channel exists, or one blocking call stalls every user.
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

from locust import FastHttpUser, User, constant, events, task  # noqa: E402

from predilect import contract  # noqa: E402
from predilect.benchmarks.multipart import CONTENT_TYPE, multipart_image  # noqa: E402
from predilect.client import ScreeningClient  # noqa: E402
from predilect.client.errors import PredilectClientError  # noqa: E402

IMAGES_ENV = "PREDILECT_BENCH_IMAGES"
TIMEOUT_ENV = "PREDILECT_BENCH_TIMEOUT_S"
_PAYLOADS: list[bytes] = []


@events.init.add_listener
def _load_payloads(environment, **_kwargs) -> None:
    """Read the images once per process, so that file I/O never shows up in latencies."""
    listing = os.environ.get(IMAGES_ENV)
    if not listing:
        raise SystemExit(f"set {IMAGES_ENV} to a file listing the benchmark images")
    paths = [Path(line) for line in Path(listing).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not paths:
        raise SystemExit(f"{listing} lists no images")
    _PAYLOADS[:] = [p.read_bytes() for p in paths]


@events.quit.add_listener
def _leave_without_teardown(exit_code: int, **_kwargs) -> None:
    """Once Locust has printed and written its statistics, leave before the interpreter's teardown.

    At teardown gRPC's gevent integration can deadlock: its atexit hook wakes the worker it keeps in
    gevent's thread pool, which then holds gRPC's channel-count mutex while it waits for a GIL a
    finalising interpreter never gives back, and a Triton client freed by the last garbage
    collection closes its channel again from ``__del__`` and blocks on that mutex. Registered
    last, this hook runs first, after Locust has closed its CSV files.
    """
    atexit.register(_exit_now, exit_code)


def _exit_now(exit_code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


def _payload_cycle():
    start = random.randrange(len(_PAYLOADS))
    return itertools.islice(itertools.cycle(_PAYLOADS), start, None)


def _timeout_s() -> float:
    return float(os.environ.get(TIMEOUT_ENV, "120"))


class TritonGrpcUser(User):
    """Screens images on the Triton ensemble through the client SDK over gRPC (``--host host:port``)."""

    wait_time = constant(0)

    def on_start(self) -> None:
        if not self.host:
            raise ValueError("TritonGrpcUser needs --host host:port of the gRPC endpoint")
        self._client = ScreeningClient(self.host, timeout_s=_timeout_s()).connect()
        self._payloads = _payload_cycle()

    def on_stop(self) -> None:
        self._client.close()

    @task
    def screen(self) -> None:
        payload = next(self._payloads)
        start = time.perf_counter()
        error: Exception | None = None
        try:
            self._client.screen(payload)
        except PredilectClientError as e:
            error = e
        self.environment.events.request.fire(
            request_type="grpc",
            name=contract.ENSEMBLE,
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=len(payload),
            exception=error,
            context={},
        )


class BaselineHttpUser(FastHttpUser):
    """Screens images on the FastAPI + PyTorch baseline (``--host http://host:port``)."""

    wait_time = constant(0)
    network_timeout = 120.0
    connection_timeout = 120.0

    def on_start(self) -> None:
        self._payloads = _payload_cycle()

    @task
    def screen(self) -> None:
        payload = next(self._payloads)
        with self.client.post(
            "/screen",
            data=payload,
            headers={"Content-Type": "application/octet-stream"},
            name="screen",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif "probabilities" not in (response.json() or {}):
                response.failure("no probabilities in the response")


class BentoHttpUser(FastHttpUser):
    """Screens images on the BentoML baseline (``--host http://host:port``): same Preprocessor and ONNX model."""

    wait_time = constant(0)
    network_timeout = 120.0
    connection_timeout = 120.0

    def on_start(self) -> None:
        # Encoded once per image, so the load generator spends no CPU on multipart per request.
        self._bodies = itertools.cycle([multipart_image(p) for p in _PAYLOADS])
        for _ in range(random.randrange(len(_PAYLOADS))):
            next(self._bodies)

    @task
    def screen(self) -> None:
        with self.client.post(
            "/screen",
            data=next(self._bodies),  # type: ignore[arg-type]  # raw bytes are sent as they are
            headers={"Content-Type": CONTENT_TYPE},
            name="screen",
            catch_response=True,
        ) as response:
            answer = response.json() if response.status_code == 200 else None
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif not (isinstance(answer, list) and len(answer) == 1 and isinstance(answer[0], dict)):
                response.failure(f"not one probability map: {str(answer)[:200]}")
