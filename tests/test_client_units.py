"""Client pieces without a server: retry arithmetic and budget, PNG encoder, JPEG stripping, journal."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest

from predilect.client.journal import ResultJournal
from predilect.client.jpeg import JpegStructureError, strip_metadata
from predilect.client.png import encode_png
from predilect.client.retry import Attempts, RetryBudget, RetryPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_backoff_cap_grows_exponentially_until_max_when_retries_accumulate() -> None:
    policy = RetryPolicy(max_attempts=10, initial_backoff_s=0.1, max_backoff_s=1.0, multiplier=2.0)
    assert [policy.backoff_cap_s(n) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_backoff_is_jittered_within_cap_when_sampled() -> None:
    policy, rng = RetryPolicy(initial_backoff_s=0.5, max_backoff_s=4.0), random.Random(7)
    samples = [policy.backoff_s(3, rng=rng) for _ in range(2000)]
    assert min(samples) >= 0 and max(samples) <= 2.0
    assert 0.9 < float(np.mean(samples)) < 1.1, "full jitter: uniform on [0, cap]"
    assert len({round(s, 6) for s in samples}) > 1000


def test_retry_policy_raises_value_error_when_options_are_inconsistent() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(initial_backoff_s=2.0, max_backoff_s=1.0)


def test_retry_budget_limits_retries_to_ratio_of_requests_when_reserve_spent() -> None:
    budget = RetryBudget(ratio=0.1, reserve=0.0, capacity=10.0)
    granted = 0
    for _ in range(100):
        budget.record_request()
        granted += budget.try_spend()
    assert granted == pytest.approx(10, abs=1)


def test_retry_budget_caps_tokens_when_many_requests_succeed() -> None:
    budget = RetryBudget(ratio=0.5, reserve=2.0, capacity=3.0)
    for _ in range(100):
        budget.record_request()
    assert budget.tokens == 3.0
    assert [budget.try_spend() for _ in range(4)] == [True, True, True, False]


def _attempts(
    policy: RetryPolicy,
    *,
    timeout_s: float = 10.0,
    attempt_timeout_s: float | None = None,
    budget: RetryBudget | None = None,
    clock: FakeClock | None = None,
) -> Attempts:
    return Attempts(
        policy,
        budget or RetryBudget(),
        timeout_s=timeout_s,
        attempt_timeout_s=attempt_timeout_s,
        rng=random.Random(0),
        clock=clock or FakeClock(),
    )


def test_attempts_retry_unavailable_until_max_attempts_when_server_down() -> None:
    attempts = _attempts(RetryPolicy(max_attempts=3))
    delays = []
    for _ in range(3):
        attempts.begin()
        delays.append(attempts.retry_delay_s("UNAVAILABLE"))
    assert delays[0] is not None and delays[1] is not None and delays[2] is None
    assert "all 3 attempts" in attempts.gave_up_because


@pytest.mark.parametrize("code", ["INVALID_ARGUMENT", "INTERNAL", "NOT_FOUND", "UNAUTHENTICATED"])
def test_attempts_give_up_at_once_when_code_is_not_retryable(code: str) -> None:
    attempts = _attempts(RetryPolicy(max_attempts=5))
    attempts.begin()
    assert attempts.retry_delay_s(code) is None
    assert "not retryable" in attempts.gave_up_because


def test_attempts_retry_deadline_exceeded_only_when_per_attempt_timeout_cut_it() -> None:
    clock = FakeClock()
    capped = _attempts(RetryPolicy(), timeout_s=10.0, attempt_timeout_s=1.0, clock=clock)
    assert capped.begin() == 1.0
    clock.now += 1.0
    assert capped.retry_delay_s("DEADLINE_EXCEEDED") is not None
    total = _attempts(RetryPolicy(), timeout_s=10.0, clock=FakeClock())
    assert total.begin() == 10.0
    assert total.retry_delay_s("DEADLINE_EXCEEDED") is None
    assert "total deadline" in total.gave_up_because


def test_attempts_give_up_when_backoff_would_pass_deadline() -> None:
    clock = FakeClock()
    attempts = _attempts(
        RetryPolicy(initial_backoff_s=5.0, max_backoff_s=5.0, max_attempts=10), timeout_s=1.0, clock=clock
    )
    attempts.begin()
    clock.now = 0.999
    assert attempts.retry_delay_s("UNAVAILABLE") is None
    assert "deadline" in attempts.gave_up_because


def test_attempts_give_up_when_budget_is_spent() -> None:
    budget = RetryBudget(ratio=0.0, reserve=1.0, capacity=1.0)
    first = _attempts(RetryPolicy(max_attempts=5), budget=budget)
    first.begin()
    assert first.retry_delay_s("UNAVAILABLE") is not None
    first.begin()
    assert first.retry_delay_s("UNAVAILABLE") is None
    assert "budget" in first.gave_up_because


def test_encode_png_round_trips_losslessly_when_decoded_by_pillow() -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for pixels in (
        rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8),
        rng.integers(0, 256, size=(20, 11), dtype=np.uint8),
    ):
        decoded = np.asarray(Image.open(io.BytesIO(encode_png(pixels))))
        np.testing.assert_array_equal(decoded, pixels)


def test_encode_png_raises_value_error_when_array_is_not_8bit_rgb_or_grey() -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="HxWx3"):
        encode_png(np.zeros((4, 4, 4), dtype=np.uint8))


def _jpeg_with_metadata(secret: str) -> bytes:
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, size=(64, 96, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x010E] = f"patient {secret}"  # ImageDescription
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, exif=exif.tobytes(), comment=f"name {secret}".encode())
    return buffer.getvalue()


def _scan_data(jpeg: bytes) -> bytes:
    start = jpeg.index(b"\xff\xda")
    return jpeg[start:]


def test_strip_metadata_removes_exif_and_comment_keeping_scan_bytes_when_given_pillow_jpeg() -> None:
    from PIL import Image

    original = _jpeg_with_metadata("Doe^Jane")
    assert b"Doe^Jane" in original and b"Exif" in original
    stripped = strip_metadata(original, allow_truncated=False)
    assert b"Doe^Jane" not in stripped and b"Exif" not in stripped
    assert _scan_data(stripped) == _scan_data(original), "entropy-coded data must be untouched"
    np.testing.assert_array_equal(
        np.asarray(Image.open(io.BytesIO(stripped))), np.asarray(Image.open(io.BytesIO(original)))
    )


def test_strip_metadata_raises_structure_error_when_truncated_and_not_allowed() -> None:
    original = _jpeg_with_metadata("x")
    truncated = original[: len(original) - 200]
    with pytest.raises(JpegStructureError):
        strip_metadata(truncated, allow_truncated=False)
    kept = strip_metadata(truncated, allow_truncated=True)
    assert kept.endswith(truncated[-100:])
    with pytest.raises(JpegStructureError):
        strip_metadata(b"GIF89a", allow_truncated=True)


def test_journal_drops_torn_line_and_incomplete_group_when_reopened(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    journal = ResultJournal(path)
    assert journal.open() == set()
    journal.append([{"key": "a", "frames": 1}])
    journal.append([{"key": "b", "frames": 2, "frame": 1}, {"key": "b", "frames": 2, "frame": 2}])
    journal.close()
    complete = path.read_bytes()
    with path.open("ab") as f:  # a crash in the middle of a 2-frame group: one full line, one torn
        f.write(b'{"key":"c","frames":2,"frame":1}\n{"key":"c","fra')
    reopened = ResultJournal(path)
    assert reopened.open() == {"a", "b"}
    reopened.close()
    assert path.read_bytes() == complete
    assert [r["key"] for r in reopened.records] == ["a", "b", "b"]
