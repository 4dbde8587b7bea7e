"""TLS and mutual TLS against a real tritonserver that requires a client certificate."""

from __future__ import annotations

from pathlib import Path

import pytest

from predilect.client import RetryPolicy, ScreeningClient, ServerUnavailableError, TlsConfig
from predilect.serving.server import TritonServer


def test_screen_succeeds_over_mutual_tls_when_client_certificate_given(
    mutual_tls_server: TritonServer, tls_files: dict[str, Path], fundus_jpeg
) -> None:
    tls = TlsConfig(
        root_cert_path=tls_files["ca"], client_cert_path=tls_files["client"], client_key_path=tls_files["client_key"]
    )
    with ScreeningClient(mutual_tls_server.grpc_url, tls=tls, timeout_s=60) as client:
        assert client.screen(fundus_jpeg(80)).model_name == "uopsl-tiny"


def test_connect_fails_when_client_certificate_missing_for_mutual_tls(
    mutual_tls_server: TritonServer, tls_files: dict[str, Path]
) -> None:
    client = ScreeningClient(
        mutual_tls_server.grpc_url,
        tls=TlsConfig(root_cert_path=tls_files["ca"]),
        timeout_s=5,
        retry_policy=RetryPolicy(max_attempts=2, initial_backoff_s=0.05, max_backoff_s=0.1),
    )
    with pytest.raises(ServerUnavailableError):
        client.connect()


def test_tls_config_raises_value_error_when_only_half_of_client_pair_given(tls_files: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="both client_cert_path and client_key_path"):
        TlsConfig(client_cert_path=tls_files["client"])
