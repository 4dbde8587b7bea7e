"""The front (nginx) that `predilect serve` puts before tritonserver, against the real server.

tritonserver listens on owner-only Unix sockets behind it, so what the front refuses never
reaches the server: an oversized gRPC request (``ImageRejectedError`` naming the limit, never
retried, the first step runs nothing, /dev/shm does not grow), an HTTP body of the size that kills
tritonserver 2.51, a call without the token, and every API group the product does not use --
registering the server's own shared-memory region, which crashes tritonserver when it is reached,
included. Valid calls, the token and mutual TLS pass through; a long-lived channel keeps its one
connection past nginx's default 1,000 requests, and nginx reuses its connections to tritonserver.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from predilect import contract
from predilect.benchmarks import reliability
from predilect.catalog import DEFAULT_CATALOG
from predilect.client import AuthenticationError, ImageRejectedError, RetryPolicy, ScreeningClient, TlsConfig
from predilect.serving.front import (
    CONNECTION_SETTINGS,
    HTTP_BODY_LIMIT_BYTES,
    HTTP_CRASH_BYTES,
    FrontTls,
    Listen,
    Upstream,
    render_config,
)
from predilect.serving.server import SHM_DIR, ServerSecurity, ServerTls, TritonServer

TOKEN = "front-t0ken"
LIMIT = 8 * 1024 * 1024
HEADERS = {contract.GRPC_AUTH_HEADER: TOKEN}

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


@pytest.fixture(scope="module")
def open_front(
    tritonserver: type[TritonServer], model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    """`predilect serve`'s defaults with a token and HTTP on: plain gRPC and KServe HTTP through the front."""
    server = tritonserver.on_free_ports(
        model_repository=model_repository,
        http=True,
        security=ServerSecurity(auth_token=TOKEN, http_api=True),
        max_request_bytes=32 * 1024 * 1024,
        log_path=tmp_path_factory.mktemp("open-front-log") / "tritonserver.log",
        startup_timeout_s=180,
    )
    with server:
        yield server


def _client(server: TritonServer, tls_files: dict[str, Path], **options) -> ScreeningClient:
    tls = TlsConfig(
        root_cert_path=tls_files["ca"], client_cert_path=tls_files["client"], client_key_path=tls_files["client_key"]
    )
    return ScreeningClient(f"localhost:{server.grpc_port}", timeout_s=120, tls=tls, **options)


def _image_input(jpeg: bytes) -> grpcclient.InferInput:
    array = np.frombuffer(jpeg, np.uint8)[None]
    image = grpcclient.InferInput(contract.IMAGE, list(array.shape), "UINT8")
    image.set_data_from_numpy(array)
    return image


def _http(server: TritonServer, method: str, path: str, body: bytes | None = None, **headers: str):
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_front_refuses_oversized_request_before_server_sees_it_when_limit_set(
    fronted_server: TritonServer, tls_files: dict[str, Path], fundus_jpeg
) -> None:
    retrying = RetryPolicy(max_attempts=4, initial_backoff_s=0.05, max_backoff_s=0.1)
    with _client(fronted_server, tls_files, auth_token=TOKEN, retry_policy=retrying) as client:
        expected = client.screen(fundus_jpeg(990)).scores
        step = reliability.first_step(fronted_server.model_repository)
        inner = fronted_server.inner_grpc_url  # tritonserver itself, behind the front
        ran_before = reliability.executed_count(inner, step)
        shm_before = reliability.shm_bytes(fronted_server.shm_prefix)
        for size in (LIMIT + 1, 3 * LIMIT):
            with pytest.raises(ImageRejectedError, match="larger than 8 MiB") as caught:
                client.screen(random.Random(size).randbytes(size))
            assert caught.value.attempts == 1, "a refusal of the request itself is never retried"
            assert caught.value.kind == contract.ERROR_REQUEST_TOO_LARGE
        assert reliability.executed_count(inner, step) == ran_before
        assert reliability.shm_bytes(fronted_server.shm_prefix) == shm_before
        assert client.screen(fundus_jpeg(990)).scores == expected


def test_front_refuses_call_without_token_when_token_set(fronted_server: TritonServer, tls_files) -> None:
    with pytest.raises(AuthenticationError):
        _client(fronted_server, tls_files).connect()


def test_front_keeps_token_and_patient_bytes_from_other_users_when_serving(
    open_front: TritonServer, fundus_jpeg
) -> None:
    with grpcclient.InferenceServerClient(open_front.grpc_url) as raw:
        raw.infer(contract.ENSEMBLE, [_image_input(fundus_jpeg(3))], headers=HEADERS)
    pids = [open_front.pid, open_front._front.pid]
    for pid in pids:
        assert TOKEN not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    sockets = Path(open_front.inner_grpc_url.removeprefix("unix:")).parent
    assert stat.S_IMODE(sockets.stat().st_mode) == 0o700
    regions = list(SHM_DIR.glob(f"{open_front.shm_prefix}*"))
    assert regions and all(stat.S_IMODE(r.stat().st_mode) == 0o600 for r in regions)
    listening = {line.split()[1].split(":")[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]}
    ours = {f"{p:04X}" for p in (open_front.grpc_port, open_front.http_port, open_front.metrics_port)}
    assert ours <= listening  # the front's ports; tritonserver has none of its own
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        unix.connect(open_front.inner_grpc_url.removeprefix("unix:"))  # reachable by its own user only


def test_front_refuses_shared_memory_and_control_apis_and_server_survives_when_called_with_token(
    open_front: TritonServer, fundus_jpeg
) -> None:
    region = next(SHM_DIR.glob(f"{open_front.shm_prefix}*"))
    with grpcclient.InferenceServerClient(open_front.grpc_url) as raw:
        attempts = {
            "register the server's own region": lambda: raw.register_system_shared_memory(
                "own", f"/{region.name}", 1024 * 1024, headers=HEADERS
            ),
            "shared-memory status": lambda: raw.get_system_shared_memory_status(headers=HEADERS),
            "repository index": lambda: raw.get_model_repository_index(headers=HEADERS),
            "model unload": lambda: raw.unload_model(contract.ENSEMBLE, headers=HEADERS),
            "log settings": lambda: raw.update_log_settings({"log_verbose_level": 1}, headers=HEADERS),
            "trace settings": lambda: raw.get_trace_settings(headers=HEADERS),
        }
        for what, attempt in attempts.items():
            with pytest.raises(InferenceServerException, match="closed on this server") as refused:
                attempt()
            assert refused.value.status() == "StatusCode.PERMISSION_DENIED", what
        output = grpcclient.InferRequestedOutput(contract.PROBABILITIES)
        output.set_shared_memory("own", 1024)
        with pytest.raises(InferenceServerException):
            raw.infer(contract.ENSEMBLE, [_image_input(fundus_jpeg(4))], outputs=[output], headers=HEADERS)
        time.sleep(2.0)  # the crash this used to cause came about a second later
        assert open_front.is_running
        answer = raw.infer(contract.ENSEMBLE, [_image_input(fundus_jpeg(4))], headers=HEADERS)
        assert answer.as_numpy(contract.PROBABILITIES).shape[0] == 1
        assert raw.get_model_metadata(contract.ENSEMBLE, headers=HEADERS).name == contract.ENSEMBLE
        assert raw.get_model_config(contract.ENSEMBLE, headers=HEADERS).config.name == contract.ENSEMBLE
    with grpcclient.InferenceServerClient(open_front.inner_grpc_url) as inner:
        assert inner.is_model_ready(contract.ENSEMBLE)


def test_front_answers_kserve_http_and_refuses_crash_size_body_before_server_when_http_on(
    open_front: TritonServer, fundus_jpeg
) -> None:
    assert _http(open_front, "GET", "/v2/health/ready")[0] == 200
    status, body = _http(open_front, "GET", f"/v2/models/{contract.ENSEMBLE}")
    assert status == 401 and contract.AUTH_KEY in json.loads(body)["error"]
    status, body = _http(open_front, "GET", f"/v2/models/{contract.ENSEMBLE}", **{contract.AUTH_KEY: TOKEN})
    assert status == 200 and json.loads(body)["name"] == contract.ENSEMBLE
    jpeg = fundus_jpeg(5)
    request = {
        "inputs": [
            {
                "name": contract.IMAGE,
                "shape": [1, len(jpeg)],
                "datatype": "UINT8",
                "parameters": {"binary_data_size": len(jpeg)},
            }
        ],
        "outputs": [{"name": contract.PROBABILITIES, "parameters": {"binary_data": False}}],
    }
    header = json.dumps(request).encode()
    status, body = _http(
        open_front,
        "POST",
        f"/v2/models/{contract.ENSEMBLE}/infer",
        header + jpeg,
        **{contract.AUTH_KEY: TOKEN, "Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 200, body
    assert len(json.loads(body)["outputs"][0]["data"]) == len(DEFAULT_CATALOG)
    for path in (f"/v2/models/{contract.ENSEMBLE}/infer", "/v2/health/ready", "/v2/nowhere"):
        status, body = _http(open_front, "POST", path, b"x" * HTTP_CRASH_BYTES, **{contract.AUTH_KEY: TOKEN})
        assert status == 413 and "larger than 3 MiB" in json.loads(body)["error"], (path, body)
    status, body = _http(open_front, "POST", "/v2/repository/index", b"{}", **{contract.AUTH_KEY: TOKEN})
    assert status == 403 and "closed" in json.loads(body)["error"]
    status, _ = _http(open_front, "POST", "/v2/health/ready", b"x" * HTTP_BODY_LIMIT_BYTES)
    assert status in (400, 405)  # the largest body passed on reaches tritonserver, which lives
    time.sleep(1.0)
    assert open_front.is_running and _http(open_front, "GET", "/v2/health/ready")[0] == 200
    metrics = http.client.HTTPConnection("127.0.0.1", open_front.metrics_port, timeout=30)
    metrics.request("GET", "/metrics")
    assert metrics.getresponse().status == 200
    metrics.close()


def _client_connections(port: int) -> set[int]:
    """The socket inodes of this process's established TCP connections to 127.0.0.1:``port``."""
    ours = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            ours.add(int(target[8:-1]))
    found = set()
    for table in ("tcp", "tcp6"):  # gRPC's sockets are dual-stack: 127.0.0.1 as a mapped IPv6 address
        for line in Path(f"/proc/self/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], int(fields[9])
            if remote.endswith(f"0100007F:{port:04X}") and state == "01" and inode in ours:
                found.add(inode)
    return found


def _upstream_connections(server: TritonServer) -> set[int]:
    """The inodes of the Unix-socket connections tritonserver has accepted on its gRPC socket."""
    path = server.inner_grpc_url.removeprefix("unix:")
    return {
        int(line.split()[6])
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]
        if line.endswith(path) and line.split()[5] == "03"  # connected, not the listening socket
    }


def test_front_keeps_one_client_connection_and_reuses_upstream_ones_when_channel_makes_1100_calls(
    open_front: TritonServer, fundus_jpeg
) -> None:
    jpeg, samples = fundus_jpeg(6), []
    with grpcclient.InferenceServerClient(open_front.grpc_url) as raw:
        raw.infer(contract.ENSEMBLE, [_image_input(jpeg)], headers=HEADERS)
        first = _client_connections(open_front.grpc_port)
        assert len(first) == 1
        for call in range(1100):  # past nginx's default keepalive_requests (1,000), which ends with a GOAWAY
            raw.is_model_ready(contract.ENSEMBLE, headers=HEADERS)
            if call % 50 == 0:
                samples.append(_upstream_connections(open_front))
        assert _client_connections(open_front.grpc_port) == first, "the channel had to reconnect: a GOAWAY"
    # Kept upstream connections stay open from sample to sample; one per request would close each
    # after its call. Under CPU load nginx may open a few more (a call arriving before the last one's
    # connection is back in the pool) and let an old one go, so the test asks that a connection serves
    # calls from more than one sample (50 calls apart), which a connection per request never does.
    lasting = max((sum(inode in sample for sample in samples) for inode in set().union(*samples)), default=0)
    assert lasting >= 2, f"no upstream connection outlived one of {len(samples)} samples: one per request"


def test_front_config_names_limits_allow_list_and_connection_settings_when_rendered(tmp_path: Path) -> None:
    text = render_config(
        prefix=tmp_path,
        listen=Listen("::", 8001, http_port=8000, metrics_port=8002, metrics_host="127.0.0.1"),
        upstream=Upstream(tmp_path / "grpc.sock:0", tmp_path / "http.sock", tmp_path / "metrics.sock"),
        max_request_bytes=LIMIT,
        error_log=tmp_path / "e.log",
        auth_token='tok"en',
        tls=FrontTls(tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"),
    )
    assert f"client_max_body_size {LIMIT};" in text and f"client_max_body_size {HTTP_BODY_LIMIT_BYTES};" in text
    assert f'server "unix:{tmp_path}/grpc.sock:0"; keepalive 32;' in text
    assert "listen [::]:8001 ssl http2;" in text and "ssl_verify_client on;" in text
    assert "listen 127.0.0.1:8002;" in text and "listen [::]:8000;" in text
    assert '"ktok\\"en" 1;' in text
    too_large = contract.error_message(contract.ERROR_REQUEST_TOO_LARGE, "request larger than 8 MiB")
    assert f'grpc-message "{too_large}' in text
    assert "ModelInfer|ModelStreamInfer" in text and "SharedMemory" not in text and "Repository" not in text
    for key, value in CONNECTION_SETTINGS.items():
        assert f"{key} {value};" in text
    assert "add_header grpc-status 3 always;" in text and "access_log off;" in text


def _plain_calls(url: str, jpeg: bytes, *, threads: int, calls_per_thread: int, deadline_s: float) -> dict[str, int]:
    """``threads`` x ``calls_per_thread`` inferences on one tritonclient channel, no retries; outcome counts."""
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    stop_at = time.monotonic() + deadline_s
    with grpcclient.InferenceServerClient(url) as raw:

        def run() -> None:
            for _ in range(calls_per_thread):
                if time.monotonic() > stop_at:
                    outcome = "not sent: out of time"
                else:
                    try:
                        raw.infer(contract.ENSEMBLE, [_image_input(jpeg)], headers=HEADERS, client_timeout=60)
                        outcome = "ok"
                    except InferenceServerException as e:
                        outcome = f"{e.status()}: {e.message()}"[:200]
                with lock:
                    outcomes[outcome] = outcomes.get(outcome, 0) + 1

        workers = [threading.Thread(target=run) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    return outcomes


@pytest.mark.parametrize(
    "threads,calls_per_thread",
    [pytest.param(4, 300, id="1200-calls"), pytest.param(8, 650, id="5200-calls", marks=pytest.mark.bench)],
)
def test_front_answers_every_call_of_plain_tritonclient_without_retries_when_channel_is_long_lived(
    open_front: TritonServer, fundus_jpeg, threads: int, calls_per_thread: int
) -> None:
    jpeg = fundus_jpeg(7, size=(512, 384))
    outcomes = _plain_calls(
        open_front.grpc_url, jpeg, threads=threads, calls_per_thread=calls_per_thread, deadline_s=900
    )
    assert outcomes == {"ok": threads * calls_per_thread}
