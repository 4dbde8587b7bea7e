"""What the sync and async clients share: channel options, discovery, requests, error mapping.

Nothing here performs I/O; the clients call tritonclient and hand the answers to these helpers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from predilect import contract
from predilect.catalog import Catalog
from predilect.client.errors import (
    AuthenticationError,
    ClientConfigError,
    DeadlineExceededError,
    ImageRejectedError,
    IncompatibleModelError,
    ModelNotReadyError,
    PredilectClientError,
    ServerBusyError,
    ServerUnavailableError,
)
from predilect.client.results import ScreeningResult
from predilect.contract import IMAGE, PROBABILITIES
from predilect.referral import ReferralRules

_MAX_MESSAGE_BYTES = 2**31 - 1
INVALID_ARGUMENT = "INVALID_ARGUMENT"
UNAUTHENTICATED = "UNAUTHENTICATED"
UNAVAILABLE = "UNAVAILABLE"
_FINAL_KINDS = frozenset({contract.ERROR_IMAGE_REJECTED, contract.ERROR_REQUEST_TOO_LARGE})
"""Error kinds (``contract.ERROR_KINDS``) that say the input itself is bad: an ``ImageRejectedError``."""

BUSY, RESTRICTED = "busy", "restricted"
# Triton's refusals that no gRPC code tells apart. tritonserver sends all three with UNAVAILABLE, the code
# gRPC itself gives a call that reached no server, and no other field: an error response carries a
# status and a message only. So these, and nothing else, are read from the message text, here, against
# Triton's own wording (tritonserver 2.51; tests/test_client_units.py pins the strings, and the real-server
# tests test_overload.py and test_client_auth.py fail if a Triton release rewords them).
_TRITON_UNAVAILABLE_REASONS = {
    "Exceeds maximum queue size": BUSY,  # the dynamic batcher's bounded queue is full (queue policy REJECT)
    "Request timeout expired": BUSY,  # the request waited in that queue past its timeout
    "This protocol is restricted": RESTRICTED,  # --grpc-restricted-protocol: the token header is missing/wrong
}


def triton_unavailable_reason(message: str) -> str | None:
    """Why Triton answered UNAVAILABLE, when the message is one of its refusals: ``BUSY`` (at capacity) or
    ``RESTRICTED`` (credentials refused); None otherwise (then no server answered, or it is going away)."""
    return next((reason for text, reason in _TRITON_UNAVAILABLE_REASONS.items() if text in message), None)


@dataclass(frozen=True)
class ServedModelInfo:
    """What the server says about the model it screens with: the catalog, the referral rules it
    applies (with their digests), and whether it can return heatmaps."""

    catalog: Catalog
    model_name: str
    model_version: str
    preprocess: dict[str, Any]
    rules: ReferralRules
    heatmaps: bool = False
    reference: str | None = None
    """The model's reference distributions (``predilect.drift.Reference`` JSON) when the repository has them."""
    heatmap_kind: str | None = None
    """Which map HEATMAPS holds (``contract.HEATMAP_KINDS``); None when the repository does not say."""

    @property
    def rules_digest(self) -> str:
        return self.rules.digest()

    @property
    def catalog_digest(self) -> str:
        return self.catalog.digest()


@dataclass(frozen=True)
class TlsConfig:
    """TLS for the gRPC channel: PEM files; client certificate and key together give mutual TLS.

    ``root_cert_path`` None uses the system roots; ``server_name_override`` checks the server
    certificate against that name instead of the URL's host (e.g. a cert for a service name).
    """

    root_cert_path: Path | None = None
    client_cert_path: Path | None = None
    client_key_path: Path | None = None
    server_name_override: str | None = None

    def __post_init__(self) -> None:
        if (self.client_cert_path is None) != (self.client_key_path is None):
            raise ClientConfigError("mutual TLS needs both client_cert_path and client_key_path, or neither")

    def credentials(self) -> Any:
        """The ``grpc.ChannelCredentials`` (reads the PEM files now, so a wrong path fails at once)."""
        import grpc

        def read(path: Path | None) -> bytes | None:
            if path is None:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as e:
                raise ClientConfigError(f"cannot read TLS file {path}: {e.strerror}") from e

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.root_cert_path),
            private_key=read(self.client_key_path),
            certificate_chain=read(self.client_cert_path),
        )


def channel_args(
    *, keepalive_time_s: float, keepalive_timeout_s: float, tls: TlsConfig | None
) -> list[tuple[str, Any]]:
    """gRPC channel arguments: unlimited message size (like tritonclient's default) and keepalive."""
    if keepalive_time_s <= 0 or keepalive_timeout_s <= 0:
        raise ValueError(f"keepalive times must be > 0, got {keepalive_time_s}, {keepalive_timeout_s}")
    args: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", int(keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive_timeout_s * 1000)),
        # Pings only while calls are in flight: Triton's default policy answers idle pings with GOAWAY.
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 2),
    ]
    if tls is not None and tls.server_name_override:
        args.append(("grpc.ssl_target_name_override", tls.server_name_override))
    return args


def request_headers(*, auth_token: str | None, headers: Mapping[str, str] | None) -> dict[str, str] | None:
    """gRPC metadata of every call: the caller's headers plus the token under the header Triton
    enforces (``contract.GRPC_AUTH_HEADER``, see ``contract.AUTH_KEY``)."""
    merged = {key.lower(): value for key, value in (headers or {}).items()}
    if auth_token is not None:
        printable = auth_token.isascii() and auth_token.isprintable()
        if not auth_token or auth_token != auth_token.strip() or not printable:
            raise ClientConfigError(
                "auth_token must be non-empty printable ASCII without surrounding spaces (gRPC metadata)"
            )
        if contract.GRPC_AUTH_HEADER in merged:
            raise ClientConfigError(f"give the token as auth_token or as header {contract.GRPC_AUTH_HEADER}, not both")
        merged[contract.GRPC_AUTH_HEADER] = auth_token
    return merged or None


def status_code(error: InferenceServerException) -> str:
    """The gRPC code name of an error ("StatusCode.UNAVAILABLE" -> "UNAVAILABLE") as retries see it: a
    final error kind of ours (``contract.parse_error_message``) is INVALID_ARGUMENT whatever code it was
    forwarded with, and Triton's refusal of a restricted protocol is UNAUTHENTICATED, not the UNAVAILABLE
    it is sent with."""
    code = str(error.status() or "").rsplit(".", 1)[-1]
    message = str(error.message() or error)
    if _final_kind(message) is not None:
        return INVALID_ARGUMENT
    if code == UNAVAILABLE and triton_unavailable_reason(message) == RESTRICTED:
        return UNAUTHENTICATED
    return code


def _final_kind(message: str) -> tuple[str, str] | None:
    parsed = contract.parse_error_message(message)
    return parsed if parsed is not None and parsed[0] in _FINAL_KINDS else None


def translate(
    error: InferenceServerException,
    *,
    url: str,
    model_name: str,
    timeout_s: float | None,
    attempts: int = 1,
    gave_up_because: str = "",
    token_sent: bool = False,
) -> PredilectClientError:
    """The client error for a tritonclient error, with a message that says what to do: by the error kind
    our steps tag their errors with, else by the gRPC status code."""
    status, message = status_code(error), str(error.message() or error)
    tried = f" after {attempts} attempts ({gave_up_because})" if attempts > 1 else ""
    final = _final_kind(message)
    if final is not None:
        kind, cause = final
        return ImageRejectedError(
            f"the server rejected the image: {cause}; send the bytes of a colour fundus photograph (JPEG or PNG)",
            cause=cause,
            kind=kind,
            attempts=attempts,
        )
    if status in (UNAUTHENTICATED, "PERMISSION_DENIED"):
        sent = "the auth token sent was refused" if token_sent else "no auth token was sent"
        return AuthenticationError(
            f"{url} refused the call ({message}): {sent}; give the server's token (auth_token, or "
            f"${contract.AUTH_TOKEN_ENV} for the predilect commands)",
            attempts=attempts,
        )
    if status == "DEADLINE_EXCEEDED":
        return DeadlineExceededError(
            f"no answer from {url} within {timeout_s} s{tried}; raise timeout_s or check the server's load",
            attempts=attempts,
        )
    if status == "NOT_FOUND":  # Triton: an unknown model, or one with no version loaded (not ready)
        return ModelNotReadyError(
            f"model {model_name!r} is not ready on {url}: {message}; wait for the server "
            "to finish loading it or check the model name",
            attempts=attempts,
        )
    if status == UNAVAILABLE and triton_unavailable_reason(message) == BUSY:
        return ServerBusyError(
            f"{url} is at capacity and refused the request{tried}: {message}; retry later, or send fewer "
            "requests at once (--max-in-flight)",
            attempts=attempts,
        )
    if status in (UNAVAILABLE, "RESOURCE_EXHAUSTED"):
        return ServerUnavailableError(
            f"no Triton server answers at {url}{tried}: {message}; start one with "
            "`predilect serve`, check the address, or retry later",
            attempts=attempts,
        )
    return PredilectClientError(f"request to {url} failed ({status or 'no status'}): {message}", attempts=attempts)


def _expected_outputs(classes: int) -> dict[str, list[int]]:
    return {
        PROBABILITIES: [classes],
        contract.QUALITY: [1 + len(contract.QUALITY_REASONS)],
        contract.QUALITY_MEASURES_TENSOR: [len(contract.QUALITY_MEASURES)],
        contract.FINDINGS: [classes],
        contract.REFERRAL: [1],
        contract.FIELD_BOX: [4],
    }


def served_info(config: Any, *, model_name: str, url: str) -> ServedModelInfo:
    """Model discovery: the catalog, identity and referral rules from the ensemble's config parameters.

    The rules must be the catalog's (thresholds, referrals) and both digests must match what is
    served: a repository assembled before result schema 2, or edited by hand, is refused.
    """
    params = {key: value.string_value for key, value in config.parameters.items()}
    missing = [key for key in (*contract.DISCOVERY_KEYS, *contract.RULES_KEYS) if not params.get(key)]
    if missing:
        raise IncompatibleModelError(
            f"model {model_name!r} on {url} lacks config parameters {missing}; is it a Predilect "
            "repository made by `predilect assemble` of this version (result schema "
            f"{contract.RESULT_SCHEMA_VERSION})?"
        )
    try:
        catalog = Catalog.from_json(params[contract.KEY_CATALOG])
        preprocess = json.loads(params[contract.KEY_PREPROCESS])
        rules = ReferralRules.from_json(params[contract.KEY_RULES])
        rules.check_catalog(catalog)
    except (ValueError, KeyError, TypeError) as e:
        raise IncompatibleModelError(f"model {model_name!r} on {url} serves an unreadable catalog or rules: {e}") from e
    digests = {contract.KEY_RULES_DIGEST: rules.digest(), contract.KEY_CATALOG_DIGEST: catalog.digest()}
    wrong = {k: params[k] for k, v in digests.items() if params[k] != v}
    if wrong:
        raise IncompatibleModelError(
            f"model {model_name!r} on {url} advertises digests {wrong} that do not match its catalog and rules "
            f"({digests}); re-assemble the repository"
        )
    outputs = {o.name: list(o.dims) for o in config.output}
    expected = _expected_outputs(len(catalog))
    if any(outputs.get(name) != dims for name, dims in expected.items()) or IMAGE not in {i.name for i in config.input}:
        raise IncompatibleModelError(
            f"model {model_name!r} on {url} does not take {IMAGE} and return {expected}; its outputs are {outputs}"
        )
    return ServedModelInfo(
        catalog=catalog,
        model_name=params[contract.KEY_MODEL_NAME],
        model_version=params[contract.KEY_MODEL_VERSION],
        preprocess=preprocess,
        rules=rules,
        heatmaps=contract.HEATMAPS in outputs,
        reference=params.get(contract.KEY_REFERENCE) or None,
        heatmap_kind=params.get(contract.KEY_HEATMAP) or None,
    )


def infer_inputs(payload: bytes) -> list[grpcclient.InferInput]:
    """The request tensors: the encoded image bytes and nothing else (no names, no UIDs)."""
    data = np.frombuffer(payload, dtype=np.uint8)
    tensor = grpcclient.InferInput(IMAGE, [1, data.size], "UINT8")
    tensor.set_data_from_numpy(data[np.newaxis])
    return [tensor]


RESULT_OUTPUTS = (
    PROBABILITIES,
    contract.QUALITY,
    contract.QUALITY_MEASURES_TENSOR,
    contract.FINDINGS,
    contract.REFERRAL,
    contract.FIELD_BOX,
)
"""What every request asks for; HEATMAPS only when asked (``requested_outputs(heatmaps=True)``)."""


def requested_outputs(*, heatmaps: bool = False) -> list[grpcclient.InferRequestedOutput]:
    names = (*RESULT_OUTPUTS, contract.HEATMAPS) if heatmaps else RESULT_OUTPUTS
    return [grpcclient.InferRequestedOutput(name) for name in names]


def check_heatmaps(served: ServedModelInfo, *, url: str, model_name: str) -> None:
    """IncompatibleModelError unless the served model can return heatmaps."""
    if not served.heatmaps:
        raise IncompatibleModelError(
            f"model {model_name!r} on {url} returns no {contract.HEATMAPS}: either its exported model has no "
            f"{contract.ATTENTION} output (re-export it with `predilect export` and re-assemble), or it is "
            "the GPU profile, whose TensorRT engine keeps the attention map on chip (serve the CPU profile)"
        )


def _output(response: Any, name: str, shape: tuple[int, ...], *, url: str, model_name: str) -> np.ndarray:
    value = response.as_numpy(name)
    if value is None or value.shape != shape:
        got = None if value is None else value.shape
        raise IncompatibleModelError(f"{model_name!r} on {url} returned {name} of shape {got}, expected {shape}")
    return value


def parse_result(
    response: Any,
    served: ServedModelInfo,
    *,
    url: str,
    model_name: str,
    latency_s: float,
    sop_instance_uid: str | None,
    frame: int | None,
    heatmaps: bool = False,
    camera: str | None = None,
) -> ScreeningResult:
    """The ScreeningResult of an infer response; the DICOM correlation fields are filled locally."""
    classes = len(served.catalog)

    def output(name: str, *shape: int) -> np.ndarray:
        return _output(response, name, (1, *shape), url=url, model_name=model_name)[0]

    maps = None
    if heatmaps:
        value = response.as_numpy(contract.HEATMAPS)
        if value is None or value.ndim != 4 or value.shape[:2] != (1, classes):
            raise IncompatibleModelError(f"{model_name!r} on {url} returned no usable {contract.HEATMAPS}")
        maps = value[0]
    return ScreeningResult.from_outputs(
        probabilities=output(PROBABILITIES, classes).tolist(),
        quality=output(contract.QUALITY, 1 + len(contract.QUALITY_REASONS)).tolist(),
        measures=output(contract.QUALITY_MEASURES_TENSOR, len(contract.QUALITY_MEASURES)).tolist(),
        findings=output(contract.FINDINGS, classes).astype(bool).tolist(),
        decision_code=int(output(contract.REFERRAL, 1)[0]),
        catalog=served.catalog,
        rules=served.rules,
        model_name=served.model_name,
        model_version=served.model_version,
        latency_s=latency_s,
        field_box=output(contract.FIELD_BOX, 4).tolist(),
        heatmaps=maps,
        heatmap_kind=served.heatmap_kind,
        sop_instance_uid=sop_instance_uid,
        frame=frame,
        camera=camera,
    )
