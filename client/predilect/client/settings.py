"""The client's options, in one place: their defaults (shared by the client classes and the
``predilect screen`` / ``predilect gateway`` options) and their validated form (``ClientSettings``)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from predilect import contract
from predilect.client import network, protocol
from predilect.client.errors import ClientConfigError
from predilect.client.protocol import TlsConfig
from predilect.client.retry import Attempts, RetryBudget, RetryPolicy
from predilect.preprocess.config import check_field_angle

DEFAULT_URL = f"localhost:{contract.DEFAULT_GRPC_PORT}"
DEFAULT_MODEL = contract.ENSEMBLE
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_IN_FLIGHT = 8
DEFAULT_KEEPALIVE_TIME_S = 60.0
DEFAULT_KEEPALIVE_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class ClientOptions:
    """The command-line options of a client (``predilect.cli.add_dataclass_options``)."""

    server: str = field(
        default=DEFAULT_URL,
        metadata={"help": f"Triton gRPC endpoint host:port (a host alone gets port {contract.DEFAULT_GRPC_PORT})"},
    )
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "ensemble name"})
    timeout_s: float = field(default=DEFAULT_TIMEOUT_S, metadata={"help": "deadline per image, retries included"})
    auth_token_env: str = field(
        default=contract.AUTH_TOKEN_ENV,
        metadata={"help": "environment variable holding the server's auth token (unset or empty: no token)"},
    )
    tls_root_cert: Path | None = field(default=None, metadata={"help": "PEM root certificate(s); enables TLS"})
    tls_client_cert: Path | None = field(default=None, metadata={"help": "PEM client certificate (mutual TLS)"})
    tls_client_key: Path | None = field(default=None, metadata={"help": "PEM client key (mutual TLS)"})
    tls_server_name: str | None = field(default=None, metadata={"help": "expected name in the server certificate"})
    camera: str | None = field(
        default=None,
        metadata={
            "help": "the camera that took the photographs (DICOM inputs name their own): per-camera shift metrics"
        },
    )
    field_angle_deg: float | None = field(
        default=None,
        metadata={
            "help": "the camera's field angle, degrees (DICOM inputs name their own): the crop is scaled to "
            "the model's field angle; without it the photographs are taken to be at the model's"
        },
    )

    def tls(self) -> TlsConfig | None:
        """The TLS settings these options ask for; None for a plaintext channel."""
        if not (self.tls_root_cert or self.tls_client_cert or self.tls_client_key or self.tls_server_name):
            return None
        return TlsConfig(
            root_cert_path=self.tls_root_cert,
            client_cert_path=self.tls_client_cert,
            client_key_path=self.tls_client_key,
            server_name_override=self.tls_server_name,
        )


class ClientSettings:
    """The options both client faces share, validated once; TLS files are read here, so a wrong
    path fails when the client is made (see ``ScreeningClient`` for the options' meaning)."""

    def __init__(
        self,
        url: str,
        *,
        model_name: str,
        timeout_s: float,
        attempt_timeout_s: float | None,
        retry_policy: RetryPolicy,
        retry_budget: RetryBudget | None,
        auth_token: str | None,
        headers: Mapping[str, str] | None,
        tls: TlsConfig | None,
        keepalive_time_s: float,
        keepalive_timeout_s: float,
        camera: str | None = None,
        field_angle_deg: float | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ClientConfigError(f"timeout_s must be > 0, got {timeout_s}")
        if attempt_timeout_s is not None and not attempt_timeout_s > 0:
            raise ClientConfigError(f"attempt_timeout_s must be > 0, got {attempt_timeout_s}")
        self.url, self.model_name, self.timeout_s = network.with_default_port(url), model_name, timeout_s
        self.camera = camera.strip() if camera and camera.strip() else None
        try:
            self.field_angle_deg = check_field_angle(field_angle_deg) if field_angle_deg is not None else None
        except ValueError as e:
            raise ClientConfigError(f"field_angle_deg: {e}") from e
        self.attempt_timeout_s = attempt_timeout_s
        self.retry_policy = retry_policy
        self.retry_budget = retry_budget if retry_budget is not None else RetryBudget()
        self.headers = protocol.request_headers(auth_token=auth_token, headers=headers)
        self.token_sent = auth_token is not None or contract.GRPC_AUTH_HEADER in (self.headers or {})
        self.channel_args = protocol.channel_args(
            keepalive_time_s=keepalive_time_s, keepalive_timeout_s=keepalive_timeout_s, tls=tls
        )
        self._credentials = tls.credentials() if tls is not None else None
        self.rng = random.Random()

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of tritonclient's (sync or aio) InferenceServerClient."""
        kwargs: dict[str, Any] = {"channel_args": self.channel_args}
        if self._credentials is not None:
            kwargs["creds"] = self._credentials
        return kwargs

    def deadline_s(self, timeout_s: float | None) -> float:
        """A call's total deadline: its own ``timeout_s``, else the client's."""
        return self.timeout_s if timeout_s is None else timeout_s

    def attempts(self, timeout_s: float | None) -> Attempts:
        return Attempts(
            self.retry_policy,
            self.retry_budget,
            timeout_s=self.deadline_s(timeout_s),
            attempt_timeout_s=self.attempt_timeout_s,
            rng=self.rng,
        )
