"""The auth token against a real tritonserver that enforces it.

The server is started with ``ServerSecurity(auth_token=...)``, i.e. ``--grpc-restricted-protocol=<every
protocol>:<contract.AUTH_KEY>=<token>`` and ``--http-restricted-api=<every API but health>:...``: Triton
then answers every gRPC call that lacks the
metadata header ``triton-grpc-protocol-<key>`` with that exact value by UNAVAILABLE "This
protocol is restricted, expecting header ...". The client sends ``auth_token`` under that
header (``contract.GRPC_AUTH_HEADER``) and reports a refusal as ``AuthenticationError``: never
retried, never "server unavailable, retry later". Over HTTP only health answers without the token.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from client_faces import FACES

from predilect import contract
from predilect.catalog import DEFAULT_CATALOG
from predilect.client import (
    AuthenticationError,
    ClientConfigError,
    RetryPolicy,
    ServerUnavailableError,
)
from predilect.client.protocol import request_headers
from predilect.serving.server import ServerSecurity, TritonServer

TOKEN = "s3cr3t-t0ken-for-tests"
ROOT = Path(__file__).resolve().parent.parent
RETRYING = RetryPolicy(max_attempts=5, initial_backoff_s=0.05, max_backoff_s=0.1)


@pytest.fixture(scope="module")
def guarded_server(
    tritonserver: type[TritonServer], model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    server = tritonserver.on_free_ports(
        model_repository=model_repository,
        log_path=tmp_path_factory.mktemp("triton-auth-log") / "tritonserver.log",
        startup_timeout_s=180,
        security=ServerSecurity(auth_token=TOKEN),
    )
    with server:
        yield server


@pytest.fixture(params=sorted(FACES))
def make_face(request) -> Iterator[Callable]:
    made = []

    def make(url: str, **options):
        face = FACES[request.param](url, **options)
        made.append(face)
        return face

    yield make
    for face in made:
        face.close()


def test_face_screens_when_auth_token_matches_server(make_face, guarded_server, fundus_jpeg) -> None:
    face = make_face(guarded_server.grpc_url, timeout_s=60, auth_token=TOKEN)
    result = face.screen(fundus_jpeg(60))
    assert result.model_name == "uopsl-tiny" and len(result.scores) == len(DEFAULT_CATALOG)


@pytest.mark.parametrize("token", [None, "wrong-token"], ids=["missing", "wrong"])
def test_face_raises_authentication_error_once_when_token_missing_or_wrong(
    make_face, guarded_server, token: str | None
) -> None:
    face = make_face(guarded_server.grpc_url, timeout_s=30, auth_token=token, retry_policy=RETRYING)
    with pytest.raises(AuthenticationError) as caught:
        face.connect()
    error = caught.value
    assert error.attempts == 1, "a refused token is never retried"
    assert not isinstance(error, ServerUnavailableError) and "retry later" not in str(error)
    assert contract.GRPC_AUTH_HEADER in str(error), "the message names the header the server expects"
    assert ("was refused" if token else "no auth token was sent") in str(error)
    assert type(error.__cause__).__name__ == "InferenceServerException"


def test_server_refuses_inference_without_token_when_called_directly(guarded_server, fundus_jpeg) -> None:
    """The restriction covers inference itself, not only the discovery calls before it."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    data = np.frombuffer(fundus_jpeg(61), dtype=np.uint8)[np.newaxis]
    tensor = grpcclient.InferInput(contract.IMAGE, list(data.shape), "UINT8")
    tensor.set_data_from_numpy(data)
    with grpcclient.InferenceServerClient(guarded_server.grpc_url) as raw:
        with pytest.raises(InferenceServerException, match="restricted"):
            raw.infer(contract.ENSEMBLE, [tensor])
        answer = raw.infer(contract.ENSEMBLE, [tensor], headers={contract.GRPC_AUTH_HEADER: TOKEN})
    assert answer.as_numpy(contract.PROBABILITIES).shape == (1, len(DEFAULT_CATALOG))


def _http(url: str, *, token: str | None = None, data: bytes | None = None) -> int:
    headers = {contract.AUTH_KEY: token} if token is not None else {}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def _inference_count(server: TritonServer) -> int:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(server.grpc_url) as raw:
        stats = raw.get_inference_statistics(contract.ENSEMBLE, headers={contract.GRPC_AUTH_HEADER: TOKEN})
    return int(stats.model_stats[0].inference_count)


def test_server_answers_http_health_only_when_token_missing(guarded_server, fundus_jpeg) -> None:
    base = guarded_server.http_url
    assert _http(f"{base}/v2/health/ready") == 200, "the readiness probe needs no token"
    assert _http(f"{base}/v2/models/{contract.ENSEMBLE}/ready") == 200
    for path in (f"/v2/models/{contract.ENSEMBLE}/stats", f"/v2/models/{contract.ENSEMBLE}/config", "/v2"):
        assert _http(base + path) >= 400, path
        assert _http(base + path, token="wrong") >= 400, path
        assert _http(base + path, token=TOKEN) == 200, path
    before = _inference_count(guarded_server)
    body = json.dumps(
        {"inputs": [{"name": contract.IMAGE, "shape": [1, 4], "datatype": "UINT8", "data": [1, 2, 3, 4]}]}
    ).encode()
    assert _http(f"{base}/v2/models/{contract.ENSEMBLE}/infer", data=body) >= 400
    assert _inference_count(guarded_server) == before


def test_server_security_flags_restrict_every_api_but_http_health_when_token_given() -> None:
    args = ServerSecurity(auth_token=TOKEN).args()
    grpc = next(a for a in args if a.startswith("--grpc-restricted-protocol="))
    http = next(a for a in args if a.startswith("--http-restricted-api="))
    assert grpc.endswith(f":{contract.AUTH_KEY}={TOKEN}") and "health" in grpc and "statistics" in grpc
    assert http.endswith(f":{contract.AUTH_KEY}={TOKEN}") and "health" not in http and "inference" in http
    assert ServerSecurity().args() == [], "no token, no TLS, HTTP open: the library default for tests and benchmarks"
    closed = ServerSecurity(http_api=False).args()
    (only,) = closed
    assert only.startswith("--http-restricted-api=") and TOKEN not in only and "health" not in only
    assert ServerSecurity(http_api=False).args() != closed, "a fresh random key each time, held by nobody"


def test_screen_cli_exits_2_with_one_line_when_token_is_wrong(guarded_server, fundus_jpeg, tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(fundus_jpeg(62))
    command = [
        sys.executable,
        "-m",
        "predilect.cli",
        "screen",
        str(tmp_path / "imgs"),
        "--out",
        str(tmp_path / "r"),
    ]
    command += ["--server", guarded_server.grpc_url]
    env_base = {"PATH": "/usr/bin:/bin"}
    wrong = subprocess.run(
        command, env={**env_base, contract.AUTH_TOKEN_ENV: "nope"}, capture_output=True, text=True, timeout=120
    )
    assert wrong.returncode == 2, wrong.stderr
    (line,) = [x for x in wrong.stderr.splitlines() if "refused" in x]
    assert line.startswith("predilect screen: ") and "Traceback" not in wrong.stderr
    right = subprocess.run(
        command, env={**env_base, contract.AUTH_TOKEN_ENV: TOKEN}, capture_output=True, text=True, timeout=120
    )
    assert right.returncode == 0, right.stderr


def test_request_headers_carry_token_under_enforced_header_when_auth_token_given() -> None:
    assert request_headers(auth_token="t0ken", headers={"X-Site": "clinic-7"}) == {
        contract.GRPC_AUTH_HEADER: "t0ken",
        "x-site": "clinic-7",
    }
    assert request_headers(auth_token=None, headers={"X-Site": "clinic-7"}) == {"x-site": "clinic-7"}
    for bad in ("", " padded ", "line\nbreak", "naïve"):
        with pytest.raises(ClientConfigError, match="auth_token"):
            request_headers(auth_token=bad, headers=None)
    with pytest.raises(ClientConfigError, match="not both"):
        request_headers(auth_token="a", headers={contract.GRPC_AUTH_HEADER: "b"})
