"""Retries against real failure modes: nobody listening, per-attempt deadlines, rejected images."""

from __future__ import annotations

import asyncio
import time

import pytest

from predilect import contract
from predilect.client import (
    AsyncScreeningClient,
    DeadlineExceededError,
    ImageRejectedError,
    RetryBudget,
    RetryPolicy,
    ScreeningClient,
    ServerUnavailableError,
)
from predilect.serving.server import TritonServer, free_port

FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.05, max_backoff_s=0.2)


def _executed(triton_server: TritonServer, model: str) -> int:
    """How many requests the model has run (a rejected image still runs ``preprocess`` once)."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(triton_server.grpc_url) as raw:
        return raw.get_inference_statistics(model).model_stats[0].inference_count


def test_connect_raises_server_unavailable_after_all_attempts_when_port_has_no_server() -> None:
    client = ScreeningClient(f"127.0.0.1:{free_port()}", timeout_s=10, retry_policy=FAST)
    with pytest.raises(ServerUnavailableError, match="after 3 attempts") as caught:
        client.connect()
    assert caught.value.attempts == 3
    assert type(caught.value.__cause__).__name__ == "InferenceServerException"


def test_async_connect_raises_server_unavailable_after_all_attempts_when_port_has_no_server() -> None:
    async def run() -> None:
        await AsyncScreeningClient(f"127.0.0.1:{free_port()}", timeout_s=10, retry_policy=FAST).connect()

    with pytest.raises(ServerUnavailableError) as caught:
        asyncio.run(run())
    assert caught.value.attempts == 3


def test_connect_does_not_retry_when_retry_budget_is_spent() -> None:
    budget = RetryBudget(ratio=0.0, reserve=0.0, capacity=1.0)
    client = ScreeningClient(f"127.0.0.1:{free_port()}", timeout_s=10, retry_policy=FAST, retry_budget=budget)
    with pytest.raises(ServerUnavailableError) as caught:
        client.connect()
    assert caught.value.attempts == 1


def test_screen_sends_rejected_image_once_when_server_rejects_it(triton_server: TritonServer) -> None:
    with ScreeningClient(triton_server.grpc_url, timeout_s=30, retry_policy=FAST) as client:
        before = _executed(triton_server, contract.PREPROCESS_MODEL)
        with pytest.raises(ImageRejectedError) as caught:
            client.screen(b"GIF89a" + bytes(600))
        assert caught.value.attempts == 1
        assert _executed(triton_server, contract.PREPROCESS_MODEL) - before == 1, "a rejected image must not be retried"


def test_screen_retries_per_attempt_deadline_until_total_deadline_when_attempts_time_out(
    triton_server: TritonServer, fundus_jpeg
) -> None:
    policy = RetryPolicy(max_attempts=50, initial_backoff_s=0.01, max_backoff_s=0.02)
    with ScreeningClient(triton_server.grpc_url, timeout_s=30, attempt_timeout_s=1e-4, retry_policy=policy) as client:
        start = time.monotonic()
        with pytest.raises(DeadlineExceededError) as caught:
            client.screen(fundus_jpeg(50), timeout_s=0.5)
        assert caught.value.attempts > 1
        assert time.monotonic() - start < 5


def test_screen_succeeds_with_bearer_token_when_auth_token_given(triton_server: TritonServer, fundus_jpeg) -> None:
    with ScreeningClient(
        triton_server.grpc_url, timeout_s=30, auth_token="s3cr3t-token", headers={"x-site": "eye-clinic-7"}
    ) as client:
        assert client.screen(fundus_jpeg(51)).model_name == "uopsl-tiny"
