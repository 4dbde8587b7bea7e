"""Client pieces without a server: retry arithmetic and budget, PNG encoder, JPEG stripping, the
journal and its records, the final/transient split, and the core's plans driven step by step."""

from __future__ import annotations

import io
import random
import re
from pathlib import Path

import numpy as np
import pytest
from client_faces import core_settings, decided_result

from predilect import contract
from predilect.catalog import DEFAULT_CATALOG
from predilect.client import core, protocol
from predilect.client.errors import (
    AuthenticationError,
    ClientConfigError,
    DeadlineExceededError,
    DicomSupportMissingError,
    ImageRejectedError,
    IncompatibleModelError,
    InputError,
    ModelNotReadyError,
    PredilectClientError,
    ServerUnavailableError,
    UnsupportedDicomError,
    is_final,
)
from predilect.client.journal import JournalError, ResultJournal
from predilect.client.protocol import ServedModelInfo, TlsConfig
from predilect.client.records import JournalRecord
from predilect.client.results import ScreeningItem, ScreeningResult
from predilect.client.retry import Attempts, RetryBudget, RetryPolicy
from predilect.client.settings import ClientSettings
from predilect.errors import UserError
from predilect.jpeg import JpegStructureError, strip_metadata
from predilect.png import encode_png
from predilect.referral import ReferralRules


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


def _result(frame: int | None = None) -> ScreeningResult:
    return decided_result(
        [0.1] * len(DEFAULT_CATALOG),
        DEFAULT_CATALOG,
        latency_s=0.01,
        sop_instance_uid="1.2.3" if frame else None,
        frame=frame,
    )


def _record(key: str, frames: int = 1, frame: int | None = None) -> JournalRecord:
    return JournalRecord(key=key, frames=frames, frame=frame, result=_result(frame))


def test_journal_drops_torn_line_and_incomplete_group_when_reopened(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    journal = ResultJournal(path)
    assert journal.open() == set()
    journal.append([_record("a")])
    journal.append([_record("b", 2, 1), _record("b", 2, 2)])
    journal.close()
    complete = path.read_bytes()
    with path.open("ab") as f:  # a crash in the middle of a 2-frame group: one full line, one torn
        f.write(_record("c", 2, 1).model_dump_json().encode() + b"\n" + b'{"key":"c","fra')
    reopened = ResultJournal(path)
    assert reopened.open() == {"a", "b"}
    reopened.close()
    assert path.read_bytes() == complete
    assert [r.key for r in reopened.records] == ["a", "b", "b"]
    assert all(r.schema_version == contract.RESULT_SCHEMA_VERSION for r in reopened.records)
    assert reopened.records[0] == _record("a"), "a record reads back as written"


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda lines: [lines[0].replace(b'"schema_version":"2"', b'"schema_version":"1"'), *lines[1:]], "version"),
        (lambda lines: [lines[0], b"garbage\n", *lines[1:]], "line 2 is damaged and records follow"),
        (lambda lines: [b"path,patient_id,eye\n", b"a.jpg,P1,R\n"], "not a screening journal.*looks like a CSV"),
        (lambda lines: [b"garbage\n", *lines], "not a screening journal.*first line is not a JSON record"),
        (lambda lines: [lines[0], lines[2], lines[1]], "before the one above it is complete"),
    ],
    ids=["other_schema_version", "damaged_in_the_middle", "a_manifest", "another_file", "interleaved_groups"],
)
def test_journal_refuses_file_and_keeps_it_when_damage_is_not_a_torn_tail(tmp_path: Path, tamper, message) -> None:
    path = tmp_path / "results.jsonl"
    journal = ResultJournal(path)
    journal.open()
    journal.append([_record("b", 2, 1), _record("b", 2, 2)])
    journal.append([_record("a")])
    journal.close()
    path.write_bytes(b"".join(tamper(path.read_bytes().splitlines(keepends=True))))
    before = path.read_bytes()
    with pytest.raises(JournalError, match=message):
        ResultJournal(path).open()
    assert path.read_bytes() == before, "a refused journal is left untouched"
    assert issubclass(JournalError, UserError)


@pytest.mark.parametrize(
    "fields",
    [
        {"key": "k", "frames": 1},  # neither result nor error
        {"key": "k", "frames": 1, "error": "bad", "error_type": "InputError", "result": "<result>"},
        {"key": "k", "frames": 1, "error": "bad"},  # error without its type
        {"key": "k", "frames": 0, "error": "bad", "error_type": "InputError"},
        {"key": "k", "frames": 1, "eye": "right", "error": "bad", "error_type": "InputError"},
        {"key": "k", "frames": 1, "error": "bad", "error_type": "InputError", "unknown": 1},
    ],
    ids=["empty", "both", "untyped_error", "no_frames", "eye_not_canonical", "unknown_field"],
)
def test_journal_record_raises_validation_error_when_fields_are_inconsistent(fields: dict) -> None:
    from pydantic import ValidationError

    if fields.get("result") == "<result>":
        fields = {**fields, "result": _result()}
    with pytest.raises(ValidationError):
        JournalRecord(**fields)


def test_journal_record_of_items_keeps_frame_result_and_error_when_frame_2_failed() -> None:
    error = UnsupportedDicomError("frame 2 is not a well-formed baseline JPEG")
    items = [
        ScreeningItem(0, "x.dcm", result=_result(1), frames=2, frame=1),
        ScreeningItem(0, "x.dcm", error=error, frames=2, frame=2),
    ]
    first, second = JournalRecord.of_items("x", items, patient_id="P", eye="L", sr_files={1: "x-1.sr.dcm"})
    assert (first.frame, first.frames, first.sr, first.ok) == (1, 2, "x-1.sr.dcm", True)
    assert (second.frame, second.error_type, second.sr, second.ok) == (2, "UnsupportedDicomError", None, False)
    assert second.sop_instance_uid == "1.2.3", "a failed frame names its instance"
    assert JournalRecord.model_validate_json(second.model_dump_json()) == second


@pytest.mark.parametrize(
    ("error", "final"),
    [
        (ImageRejectedError("r", cause="truncated JPEG"), True),
        (InputError("unreadable"), True),
        (UnsupportedDicomError("CT"), True),
        (ServerUnavailableError("down"), False),
        (DeadlineExceededError("slow"), False),
        (ModelNotReadyError("loading"), False),
        (IncompatibleModelError("old repository"), False),
        (PredilectClientError("request failed (INTERNAL)"), False),
        (AuthenticationError("refused"), False),
        (DicomSupportMissingError("pip install"), False),
    ],
)
def test_is_final_only_when_input_itself_is_bad(error: PredilectClientError, final: bool) -> None:
    assert is_final(error) is final


def test_user_errors_are_the_ones_a_user_fixes_when_classified() -> None:
    for cls in (InputError, UnsupportedDicomError, ImageRejectedError, AuthenticationError, ClientConfigError):
        assert issubclass(cls, UserError), cls
    for cls in (ServerUnavailableError, DeadlineExceededError, ModelNotReadyError):
        assert not issubclass(cls, UserError), cls


def test_tls_config_raises_client_config_error_naming_file_when_unreadable(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ClientConfigError, match=f"cannot read TLS file {missing}: No such file"):
        TlsConfig(root_cert_path=missing).credentials()


# --------------------------------------------------------------------------- the core's plans


def _settings(**overrides) -> ClientSettings:
    fast = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)
    return core_settings(**{"timeout_s": 10.0, "retry_policy": fast, **overrides})


def _grpc_error(status: str, message: str):
    from tritonclient.utils import InferenceServerException

    return InferenceServerException(msg=message, status=f"StatusCode.{status}")


def _drive(plan, answers):
    """Run ``plan`` answering each effect from ``answers`` (a value, or an error to throw in); the
    effects it yielded and its return value (or the error it raised)."""
    effects, answer, error = [], None, None
    answers = iter(answers)
    try:
        while True:
            effect = plan.send(answer) if error is None else plan.throw(error)
            effects.append(effect)
            answer, error = None, None
            if isinstance(effect, core.Local):
                try:
                    answer = effect.work()
                except core.THROWN_INTO_PLANS as e:
                    error = e
            elif isinstance(effect, core.Rpc):
                reply = next(answers)
                if isinstance(reply, BaseException):
                    error = reply
                else:
                    answer = reply
    except StopIteration as done:
        return effects, done.value
    except PredilectClientError as e:
        return effects, e


def test_call_plan_sleeps_then_retries_when_unavailable_then_answers() -> None:
    effects, value = _drive(
        core.call(_settings(), "is_server_live", timeout_s=None), [_grpc_error("UNAVAILABLE", "down"), True]
    )
    assert value is True
    assert [type(e).__name__ for e in effects] == ["Rpc", "Sleep", "Rpc"]
    assert effects[0].method == "is_server_live" and 0 < effects[0].timeout_s <= 10.0


def test_call_plan_raises_authentication_error_without_retry_when_triton_restricts_protocol() -> None:
    refused = _grpc_error("UNAVAILABLE", f"This protocol is restricted, expecting header '{contract.GRPC_AUTH_HEADER}'")
    effects, error = _drive(core.call(_settings(auth_token="t"), "infer", timeout_s=None), [refused])
    assert isinstance(error, AuthenticationError) and error.attempts == 1 and error.__cause__ is refused
    assert "was refused" in str(error) and len(effects) == 1


@pytest.mark.parametrize("status", ["UNAUTHENTICATED", "PERMISSION_DENIED"])
def test_call_plan_raises_authentication_error_when_a_proxy_refuses_credentials(status: str) -> None:
    effects, error = _drive(core.call(_settings(), "infer", timeout_s=None), [_grpc_error(status, "token not found")])
    assert isinstance(error, AuthenticationError) and "no auth token was sent" in str(error) and len(effects) == 1


def test_call_plan_sends_token_under_enforced_header_when_auth_token_set() -> None:
    effects, _ = _drive(core.call(_settings(auth_token="t0ken"), "is_server_live", timeout_s=None), [True])
    assert effects[0].kwargs["headers"] == {contract.GRPC_AUTH_HEADER: "t0ken"}


def test_screen_items_plan_yields_frame1_result_and_frame2_error_when_frame_2_fails(tmp_path: Path) -> None:
    from client_faces import jpeg_multiframe_dicom, tiny_jpeg

    classes = len(DEFAULT_CATALOG)
    outputs = {
        contract.PROBABILITIES: np.full((1, classes), 0.2, dtype=np.float32),
        contract.QUALITY: np.array([[0.9] + [0.0] * len(contract.QUALITY_REASONS)], dtype=np.float32),
        contract.QUALITY_MEASURES_TENSOR: np.ones((1, len(contract.QUALITY_MEASURES)), dtype=np.float32),
        contract.FINDINGS: np.zeros((1, classes), dtype=bool),
        contract.REFERRAL: np.array([[contract.DECISIONS.index("no_referral")]], dtype=np.int32),
        contract.FIELD_BOX: np.array([[0.1, 0.0, 0.9, 1.0]], dtype=np.float32),
    }

    class Response:
        def as_numpy(self, name: str) -> np.ndarray:
            return outputs[name]

    path = jpeg_multiframe_dicom([tiny_jpeg(), b"\xff\xd8\xff\xe0" + bytes(20)], tmp_path / "frame2.dcm")
    rules = ReferralRules.from_catalog(DEFAULT_CATALOG, {})
    served = ServedModelInfo(catalog=DEFAULT_CATALOG, model_name="m", model_version="1", preprocess={}, rules=rules)
    effects, items = _drive(core.screen_items(_settings(), served, 7, path, timeout_s=None), [Response()])
    assert [(i.index, i.frame, i.frames, i.ok) for i in items] == [(7, 1, 2, True), (7, 2, 2, False)]
    assert isinstance(items[1].error, UnsupportedDicomError) and "frame 2" in str(items[1].error)
    assert [type(e).__name__ for e in effects] == ["Local", "Local", "Rpc", "Local"], "frames prepared one by one"
    result = items[0].result
    assert result is not None and result.decision == "no_referral" and result.probabilities is not None
    assert result.rules_digest == rules.digest() and result.catalog_digest == DEFAULT_CATALOG.digest()


@pytest.mark.parametrize("status", ["INVALID_ARGUMENT", "INTERNAL", "UNAVAILABLE"])
@pytest.mark.parametrize("kind", [contract.ERROR_IMAGE_REJECTED, contract.ERROR_REQUEST_TOO_LARGE])
def test_translate_raises_image_rejected_by_error_kind_when_any_code_carries_it(kind: str, status: str) -> None:
    from predilect.client.errors import ImageRejectedError, is_final

    raw = _grpc_error(status, f"in ensemble 'e', {contract.error_message(kind, 'truncated JPEG')}")
    error = protocol.translate(raw, url="u", model_name="m", timeout_s=1)
    assert isinstance(error, ImageRejectedError) and error.kind == kind and error.cause == "truncated JPEG"
    assert is_final(error) and protocol.status_code(raw) == "INVALID_ARGUMENT", "never retried"


def test_translate_classifies_untagged_message_by_code_when_it_only_reads_like_a_rejection() -> None:
    from predilect.client.errors import ImageRejectedError, ModelNotReadyError

    for text in ("image rejected: not a JPEG", "model not found", "[predilect-error teapot] short"):
        error = protocol.translate(_grpc_error("INTERNAL", text), url="u", model_name="m", timeout_s=1)
        assert type(error) is PredilectClientError, (text, error)
        assert not isinstance(error, (ImageRejectedError, ModelNotReadyError))


def test_translate_raises_model_not_ready_when_status_not_found() -> None:
    from predilect.client.errors import ModelNotReadyError

    message = "Request for unknown model: 'm' has no available versions"
    error = protocol.translate(_grpc_error("NOT_FOUND", message), url="u", model_name="m", timeout_s=1)
    assert isinstance(error, ModelNotReadyError) and "'m' is not ready" in str(error)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("Exceeds maximum queue size", protocol.BUSY),
        ("Request timeout expired", protocol.BUSY),
        (f"This protocol is restricted, expecting header '{contract.GRPC_AUTH_HEADER}'", protocol.RESTRICTED),
        ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Connection refused", None),
        ("Socket closed", None),
    ],
)
def test_triton_unavailable_reason_reads_triton_refusals_only_when_message_is_one(message: str, reason) -> None:
    assert protocol.triton_unavailable_reason(message) == reason


def test_translate_raises_server_busy_when_triton_queue_refuses() -> None:
    from predilect.client.errors import ServerBusyError, ServerUnavailableError, is_final

    for message in ("Exceeds maximum queue size", "Request timeout expired"):
        error = protocol.translate(_grpc_error("UNAVAILABLE", message), url="u", model_name="m", timeout_s=1)
        assert isinstance(error, ServerBusyError) and isinstance(error, ServerUnavailableError)
        assert "at capacity" in str(error) and not is_final(error)
    down = protocol.translate(_grpc_error("UNAVAILABLE", "failed to connect"), url="u", model_name="m", timeout_s=1)
    assert type(down) is ServerUnavailableError
    internal = protocol.translate(_grpc_error("INTERNAL", "stub died"), url="u", model_name="m", timeout_s=1)
    assert not is_final(internal), "an internal server error is retried by a later run"


def test_call_tells_server_the_attempt_timeout_when_inferring() -> None:
    effects, _ = _drive(core.call(_settings(), "infer", timeout_s=2.0, server_timeout=True), ["answer"])
    (rpc,) = effects
    assert 1_000_000 < rpc.kwargs["timeout"] <= 2_000_000 and rpc.kwargs["timeout"] == int(rpc.timeout_s * 1e6)
    effects, _ = _drive(core.call(_settings(), "is_server_live", timeout_s=2.0), [True])
    assert "timeout" not in effects[0].kwargs


def test_journal_refuses_second_writer_when_first_holds_it(tmp_path: Path) -> None:
    from predilect.client.journal import JournalLockedError, ResultJournal

    first, second = ResultJournal(tmp_path / "j.jsonl"), ResultJournal(tmp_path / "j.jsonl")
    first.open()
    with pytest.raises(JournalLockedError, match="another process"):
        second.open()
    first.close()
    assert second.open() == set()
    second.close()
    assert (tmp_path / "j.jsonl").stat().st_mode & 0o777 == 0o600


def test_dicom_frames_prepare_in_threads_when_pydicom_not_yet_imported(tmp_path: Path, dicom_from_jpeg) -> None:
    """The ``partially initialized module 'pydicom'`` race needs a fresh interpreter to show."""
    import subprocess
    import sys

    from PIL import Image

    Image.new("RGB", (256, 256), (180, 80, 30)).save(tmp_path / "f.jpg", quality=90)
    path = dicom_from_jpeg(tmp_path / "f.jpg", tmp_path / "f.dcm")
    script = (
        "import sys\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from predilect.client.inputs import prepare\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "with ThreadPoolExecutor(8) as pool:\n"
        "    print(sorted(set(pool.map(lambda _: len(list(prepare(data))), range(16)))))\n"
    )
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == "[1]"


def _exif_jpeg(orientation: int | None, **fields: str) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    tags = {"artist": 0x013B, "description": 0x010E, "serial": 0xA431}
    for name, value in fields.items():
        exif[tags[name]] = value
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 90, 30)).save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_strip_metadata_keeps_only_orientation_when_exif_carries_identifiers(orientation: int) -> None:
    from PIL import Image

    from predilect.preprocess import PreprocessCfg, inspect_image

    data = _exif_jpeg(orientation, artist="Doe^Jane", description="PID-123", serial="CAM-0042")
    out = strip_metadata(data, allow_truncated=False)
    for identifier in (b"Doe^Jane", b"PID-123", b"CAM-0042"):
        assert identifier in data and identifier not in out
    assert Image.open(io.BytesIO(out)).getexif() == {0x0112: orientation}, "nothing but the orientation"
    header = inspect_image(np.frombuffer(out, np.uint8), PreprocessCfg(min_side_px=16))
    assert header.orientation == orientation, "the server reads the kept tag"


def test_strip_metadata_drops_exif_whole_when_orientation_is_upright_or_absent() -> None:
    for orientation in (None, 1):
        out = strip_metadata(_exif_jpeg(orientation, artist="Doe^Jane"), allow_truncated=False)
        assert b"Exif" not in out and b"Doe^Jane" not in out


def test_exif_orientation_is_none_when_exif_is_malformed() -> None:
    from predilect.jpeg import exif_orientation, orientation_segment

    good = orientation_segment(6)[4:]
    assert exif_orientation(good) == 6
    for bad in (b"Exif\x00\x00", good[:12], good[:6] + b"XX" + good[8:], good[:-8], b"JFIF" + good[4:]):
        assert exif_orientation(bad) is None


@pytest.mark.parametrize(
    ("pattern", "relative", "expected"),
    [
        ("{patient}_{eye}", "P001_left", ("P001", "L", None)),
        ("{patient}_{eye}", "P001_OD", ("P001", "R", None)),
        ("{patient}_{eye}", "site/P002_r", ("P002", "R", None)),
        ("{patient}_{eye}", "p00", None),  # no eye: a patient of its own
        ("{patient}/{eye}", "P003/left", ("P003", "L", None)),
        ("{study}/{patient}-{eye}-{*}", "2026-01/P004-OS-002", ("P004", "L", "2026-01")),
        (r"(?P<patient>\d+)(?P<eye>[LR])", "0042L", ("0042", "L", None)),
    ],
)
def test_filename_pattern_reads_patient_eye_and_study_when_path_matches(pattern, relative, expected) -> None:
    from predilect.client.batch_inputs import FilenamePattern

    assert FilenamePattern.parse(pattern).identity(relative) == expected


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("{patient}_{side}", "unknown placeholder {side}"),
        ("{eye}", "names no patient"),
        ("(?P<patient>[", "not a valid"),
    ],
)
def test_filename_pattern_raises_naming_the_problem_when_unusable(pattern, message) -> None:
    from predilect.client.batch_inputs import FilenamePattern, FilenamePatternError

    with pytest.raises(FilenamePatternError, match=re.escape(message)):
        FilenamePattern.parse(pattern)


def test_local_identity_groups_two_eyes_of_one_patient_when_files_follow_default_pattern(tmp_path: Path) -> None:
    from predilect.client.batch_inputs import DEFAULT_FILENAME_PATTERN, FilenamePattern, collect_entries, local_identity

    for name in ("P001_left.jpg", "P001_right.jpg", "other.jpg"):
        (tmp_path / name).write_bytes(b"x")
    pattern = FilenamePattern.parse(DEFAULT_FILENAME_PATTERN)
    found = {Path(e.key).name: local_identity(e, pattern) for e in collect_entries([tmp_path])}
    assert (found["P001_left.jpg"].patient_id, found["P001_left.jpg"].eye) == ("P001", "L")
    assert (found["P001_right.jpg"].patient_id, found["P001_right.jpg"].eye) == ("P001", "R")
    assert (found["other.jpg"].patient_id, found["other.jpg"].eye, found["other.jpg"].source) == (
        "other",
        None,
        "file name",
    )
