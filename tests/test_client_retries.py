"""Retries against real failure modes the faces test does not cover: the client's retry budget.

Retries on UNAVAILABLE, per-attempt deadlines and rejected images sent once run through both
faces in ``test_client_faces.py``; the arithmetic is unit-tested in ``test_client_units.py``.
"""

from __future__ import annotations

import pytest

from predilect.client import RetryBudget, RetryPolicy, ScreeningClient, ServerUnavailableError
from predilect.serving.server import free_port

FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.05, max_backoff_s=0.2)


def test_connect_does_not_retry_when_retry_budget_is_spent() -> None:
    budget = RetryBudget(ratio=0.0, reserve=0.0, capacity=1.0)
    client = ScreeningClient(f"127.0.0.1:{free_port()}", timeout_s=10, retry_policy=FAST, retry_budget=budget)
    with pytest.raises(ServerUnavailableError) as caught:
        client.connect()
    assert caught.value.attempts == 1
    assert type(caught.value.__cause__).__name__ == "InferenceServerException"
