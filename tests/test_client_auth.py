"""Auth metadata reaches the server: a real tritonserver that refuses gRPC calls lacking a
header (Triton's --grpc-restricted-protocol) serves the client only when it sends it.

Triton checks the header ``triton-grpc-protocol-<key>``; a deployment that checks
``authorization`` does so in a proxy in front of Triton, so the bearer token itself is checked
here as the metadata the client attaches to every call."""

from __future__ import annotations

from pathlib import Path

import pytest

from predilect.client import NO_RETRIES, PredilectClientError, ScreeningClient
from predilect.client.protocol import request_headers
from predilect.serving.server import TritonServer, free_port

KEY, SECRET = "x-api-key", "s3cr3t-key"
HEADER = f"triton-grpc-protocol-{KEY}"


@pytest.fixture(scope="module")
def guarded_server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    protocols = "health,metadata,inference,model-config,statistics"
    server = TritonServer(
        model_repository=model_repository,
        grpc_port=free_port(),
        http_port=free_port(),
        metrics_port=free_port(),
        bind_address="127.0.0.1",
        log_path=tmp_path_factory.mktemp("triton-auth-log") / "tritonserver.log",
        extra_args=[f"--grpc-restricted-protocol={protocols}:{KEY}={SECRET}"],
    )
    with server:
        yield server


def test_screen_succeeds_when_header_matches_server_restriction(guarded_server, fundus_jpeg):
    with ScreeningClient(guarded_server.grpc_url, timeout_s=30, auth_token="t0ken", headers={HEADER: SECRET}) as client:
        result = client.screen(fundus_jpeg(60))
    assert result.model_name == "uopsl-tiny" and len(result.probabilities) == 6


@pytest.mark.parametrize("headers", [None, {HEADER: "wrong"}])
def test_connect_fails_when_header_missing_or_wrong(guarded_server, headers):
    client = ScreeningClient(guarded_server.grpc_url, timeout_s=10, headers=headers, retry_policy=NO_RETRIES)
    with pytest.raises(PredilectClientError, match="restricted") as caught:
        client.connect()
    assert caught.value.__cause__ is not None


def test_request_headers_carry_bearer_token_when_auth_token_given():
    assert request_headers(auth_token="t0ken", headers={"X-Site": "clinic-7"}) == {
        "authorization": "Bearer t0ken",
        "x-site": "clinic-7",
    }
    with pytest.raises(ValueError, match="empty"):
        request_headers(auth_token=" ", headers=None)
