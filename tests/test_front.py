"""The request-size limit in front of tritonserver's gRPC port (nginx), against the real server.

An oversized request is refused by the front before the server sees a complete message: the
client gets ``ImageRejectedError`` naming the limit (never retried), the first step runs nothing,
and the Python-backend regions in /dev/shm do not grow. Valid requests, the auth token and mutual
TLS pass through unchanged.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from predilect import contract
from predilect.benchmarks import reliability
from predilect.client import AuthenticationError, ImageRejectedError, RetryPolicy, ScreeningClient, TlsConfig
from predilect.serving.front import FrontTls, render_config
from predilect.serving.server import ServerSecurity, ServerTls, TritonServer

TOKEN = "front-t0ken"
LIMIT = 8 * 1024 * 1024

if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
    raise RuntimeError("nginx is missing: `make system-deps` installs it (apt-get install nginx-light)")


@pytest.fixture(scope="module")
def fronted_server(
    tritonserver: type[TritonServer],
    model_repository: Path,
    tls_files: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TritonServer]:
    tls = ServerTls(tls_files["server"], tls_files["server_key"], root_cert_path=tls_files["ca"], mutual=True)
    server = tritonserver.on_free_ports(
        model_repository=model_repository,
        http=False,
        security=ServerSecurity(auth_token=TOKEN, tls=tls),
        max_request_bytes=LIMIT,
        log_path=tmp_path_factory.mktemp("front-log") / "tritonserver.log",
        startup_timeout_s=180,
    )
    with server:
        yield server


def _client(server: TritonServer, tls_files: dict[str, Path], **options) -> ScreeningClient:
    tls = TlsConfig(
        root_cert_path=tls_files["ca"], client_cert_path=tls_files["client"], client_key_path=tls_files["client_key"]
    )
    return ScreeningClient(f"localhost:{server.grpc_port}", timeout_s=120, tls=tls, **options)


def test_front_refuses_oversized_request_before_server_sees_it_when_limit_set(
    fronted_server: TritonServer, tls_files: dict[str, Path], fundus_jpeg
) -> None:
    retrying = RetryPolicy(max_attempts=4, initial_backoff_s=0.05, max_backoff_s=0.1)
    headers = {contract.GRPC_AUTH_HEADER: TOKEN}
    with _client(fronted_server, tls_files, auth_token=TOKEN, retry_policy=retrying) as client:
        expected = client.screen(fundus_jpeg(990)).scores
        step = reliability.first_step(fronted_server.model_repository)
        inner = f"127.0.0.1:{fronted_server._triton_grpc_port}"  # tritonserver itself, behind the front
        ran_before = reliability.executed_count(inner, step, headers=headers)
        shm_before = reliability.shm_bytes(fronted_server.shm_prefix)
        for size in (LIMIT + 1, 3 * LIMIT):
            with pytest.raises(ImageRejectedError, match="larger than 8 MiB") as caught:
                client.screen(random.Random(size).randbytes(size))
            assert caught.value.attempts == 1, "a refusal of the request itself is never retried"
            assert caught.value.kind == contract.ERROR_REQUEST_TOO_LARGE
        assert reliability.executed_count(inner, step, headers=headers) == ran_before
        assert reliability.shm_bytes(fronted_server.shm_prefix) == shm_before
        assert client.screen(fundus_jpeg(990)).scores == expected


def test_front_passes_token_check_through_to_server_when_token_missing(
    fronted_server: TritonServer, tls_files: dict[str, Path]
) -> None:
    with pytest.raises(AuthenticationError):
        _client(fronted_server, tls_files).connect()


def test_front_config_names_limit_with_its_error_kind_when_rendered(tmp_path: Path) -> None:
    text = render_config(
        prefix=tmp_path,
        listen_host="::",
        listen_port=8001,
        upstream_port=9001,
        max_request_bytes=LIMIT,
        error_log=tmp_path / "e.log",
        tls=FrontTls(tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"),
    )
    assert f"client_max_body_size {LIMIT};" in text and "grpc_pass grpc://127.0.0.1:9001;" in text
    assert "listen [::]:8001 ssl http2;" in text and "ssl_verify_client on;" in text
    too_large = contract.error_message(contract.ERROR_REQUEST_TOO_LARGE, "request larger than 8 MiB")
    assert f'grpc-message "{too_large}' in text
    assert "add_header grpc-status 3 always;" in text and "access_log off;" in text
