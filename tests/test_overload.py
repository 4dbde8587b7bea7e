"""Overload against a real tritonserver whose first step has a tiny bounded queue.

Excess requests are refused at once (``ServerBusyError``, never a wrong or late answer), the
accepted ones are answered exactly, a request whose client has given up is dropped before it is
decoded (the client sends its timeout; the queue policy lets it override the default), and the
server answers normally right after. The load figures live in ``predilect bench overload``.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from predilect import contract
from predilect.client import NO_RETRIES, DeadlineExceededError, RetryPolicy, ScreeningClient, ServerBusyError
from predilect.serving.server import TritonServer


@pytest.fixture(scope="module")
def small_queue_server(
    tritonserver: type[TritonServer], tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    from predilect.serving.configs import ServingOptions
    from predilect.serving.repository import assemble

    options = ServingOptions(
        layout="fused", fused_instances=1, max_batch_size=2, max_queue_size=2, queue_timeout_us=2_000_000
    )
    repository = assemble(tiny_onnx, tmp_path_factory.mktemp("overload") / "model_repository", options)
    server = tritonserver.on_free_ports(
        model_repository=repository,
        log_path=tmp_path_factory.mktemp("overload-log") / "tritonserver.log",
        # Through the front, as `predilect serve` runs it: tritonserver 2.51 reached directly died of SIGSEGV
        # in about 1 run of 5 under this module's load (experiments/2026-12-07-abandoned-requests-crash).
        max_request_bytes=32 * 1024 * 1024,
        http=False,
        startup_timeout_s=180,
    )
    with server:
        yield server


def _executed(server: TritonServer) -> int:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(server.grpc_url) as raw:
        stats = raw.get_inference_statistics(contract.FUSED_MODEL)
    return int(stats.model_stats[0].inference_count)


def _outcome(client: ScreeningClient, payload: bytes, timeout_s: float) -> object:
    try:
        return client.screen(payload, timeout_s=timeout_s).scores
    except (ServerBusyError, DeadlineExceededError) as e:
        return type(e)


def test_server_refuses_excess_at_once_and_answers_the_rest_exactly_when_overloaded(
    small_queue_server: TritonServer, fundus_jpeg
) -> None:
    payload = fundus_jpeg(900, size=(2048, 1536))
    with ScreeningClient(small_queue_server.grpc_url, timeout_s=60, retry_policy=NO_RETRIES) as client:
        expected = client.screen(payload).scores
        with ThreadPoolExecutor(32) as pool:
            outcomes = list(pool.map(lambda _: _outcome(client, payload, 60.0), range(64)))
        refused = outcomes.count(ServerBusyError)
        answered = [o for o in outcomes if o is not ServerBusyError]
        assert refused > 0, "a queue of 2 cannot hold 32 concurrent requests"
        assert answered and all(o == expected for o in answered), "accepted requests are answered exactly"
        assert client.screen(payload).scores == expected, "recovery is immediate"


def test_server_drops_queued_requests_unrun_when_their_client_gave_up(
    small_queue_server: TritonServer, fundus_jpeg
) -> None:
    payload = fundus_jpeg(901, size=(2048, 1536))
    with ScreeningClient(small_queue_server.grpc_url, timeout_s=60, retry_policy=NO_RETRIES) as client:
        client.screen(payload)
        before = _executed(small_queue_server)
        with ThreadPoolExecutor(3) as pool:  # within the queue bound: every request is accepted, then abandoned
            outcomes = list(pool.map(lambda _: _outcome(client, payload, 0.02), range(24)))
        given_up = sum(o is DeadlineExceededError for o in outcomes)
        assert given_up > 0
        executed = _executed(small_queue_server) - before
        assert executed < len(outcomes), "requests whose client timed out in the queue were never decoded"
    # Expired requests hold their queue slots until the batcher next looks at them: a few retries.
    patient = RetryPolicy(max_attempts=10, initial_backoff_s=0.1, max_backoff_s=0.5)
    with ScreeningClient(small_queue_server.grpc_url, timeout_s=60, retry_policy=patient) as retrying:
        assert retrying.screen(payload).scores, "and the server answers right after"
