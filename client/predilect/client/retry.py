"""Retries: which gRPC codes, how long to back off, how many retries the budget allows.

Pure and clock-injectable, so the arithmetic is unit-tested without a server; the client
core's call plan (``core.call``) only asks ``Attempts`` what to do next.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# Safe to resend: the server did not take the request (down, overloaded). INVALID_ARGUMENT
# (an image rejected, a request too large) and the rest would fail the same way again.
RETRYABLE_CODES = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})
DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"


@dataclass(frozen=True)
class RetryPolicy:
    """Jittered exponential backoff ("full jitter"): retry ``n`` (1-based) sleeps a uniform
    random time in ``[0, min(max_backoff_s, initial_backoff_s * multiplier ** (n - 1))]``.

    ``max_attempts`` counts the first call; 1 disables retries.
    """

    max_attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError(
                f"need 0 < initial_backoff_s <= max_backoff_s, got {self.initial_backoff_s}, {self.max_backoff_s}"
            )
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")

    def backoff_cap_s(self, retry: int) -> float:
        """The upper bound of the sleep before retry ``retry`` (1-based)."""
        if retry < 1:
            raise ValueError(f"retry numbers start at 1, got {retry}")
        return min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))

    def backoff_s(self, retry: int, *, rng: random.Random) -> float:
        return rng.uniform(0.0, self.backoff_cap_s(retry))


NO_RETRIES = RetryPolicy(max_attempts=1)


class RetryBudget:
    """Token bucket bounding retries to a fraction of requests, shared by all calls of a client.

    Every request deposits ``ratio`` tokens (up to ``capacity``); every retry spends one whole
    token, so in steady state at most ``ratio`` retries per request. The bucket starts with
    ``reserve`` tokens so that a fresh client can retry a few times. Thread-safe.
    """

    def __init__(self, *, ratio: float = 0.2, reserve: float = 10.0, capacity: float = 20.0) -> None:
        if not 0 <= ratio <= 1:
            raise ValueError(f"ratio must lie in [0, 1], got {ratio}")
        if not 0 <= reserve <= capacity:
            raise ValueError(f"need 0 <= reserve <= capacity, got {reserve}, {capacity}")
        self.ratio, self.capacity = ratio, capacity
        self._tokens = reserve
        self._lock = threading.Lock()

    @property
    def tokens(self) -> float:
        return self._tokens

    def record_request(self) -> None:
        with self._lock:
            self._tokens = min(self.capacity, self._tokens + self.ratio)

    def try_spend(self) -> bool:
        """Take one token for a retry; False (and nothing taken) when fewer than one is left."""
        with self._lock:
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True


class Attempts:
    """The retry state of one call: total deadline, per-attempt timeout, attempt count.

    Usage: ``timeout = attempts.begin()`` before each attempt; after a failure with gRPC code
    ``code``, ``attempts.retry_delay_s(code)`` is the sleep before the next attempt, or None
    to give up (``gave_up_because`` then says why).
    """

    def __init__(
        self,
        policy: RetryPolicy,
        budget: RetryBudget,
        *,
        timeout_s: float,
        attempt_timeout_s: float | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy, self.budget, self._clock = policy, budget, clock
        self._rng = rng if rng is not None else random.Random()
        self.deadline = clock() + timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self.number = 0
        self.gave_up_because = ""
        self._capped = False  # the current attempt's timeout is the per-attempt one, not the deadline
        budget.record_request()

    def remaining_s(self) -> float:
        return self.deadline - self._clock()

    def begin(self) -> float:
        """Start an attempt; its timeout in seconds (<= 0 when the deadline has passed)."""
        self.number += 1
        remaining = self.remaining_s()
        cap = self.attempt_timeout_s
        self._capped = cap is not None and cap < remaining
        return cap if cap is not None and self._capped else remaining

    def retry_delay_s(self, code: str) -> float | None:
        """The backoff before retrying after ``code``, or None when the call must fail now."""
        if code == DEADLINE_EXCEEDED and not self._capped:
            self.gave_up_because = "the total deadline passed"
            return None
        if code not in RETRYABLE_CODES and code != DEADLINE_EXCEEDED:
            self.gave_up_because = f"{code or 'this error'} is not retryable"
            return None
        if self.number >= self.policy.max_attempts:
            self.gave_up_because = f"all {self.policy.max_attempts} attempts failed"
            return None
        delay = self.policy.backoff_s(self.number, rng=self._rng)
        if delay >= self.remaining_s():
            self.gave_up_because = "the deadline leaves no time for another attempt"
            return None
        if not self.budget.try_spend():
            self.gave_up_because = "the client's retry budget is spent (too many retries recently)"
            return None
        return delay
