"""`predilect serve` says what is wrong before it starts anything (no nginx, a busy port, a token
without the front), serves a model repository whose path has spaces, and reports a Python-backend
stub that dies as the error it is."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest

from predilect import contract
from predilect.serving import serve_cli
from predilect.serving.front import FrontStartError, nginx_binary
from predilect.serving.server import ServerStartError, TritonServer, free_port


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_serve_exits_2_naming_system_deps_and_no_front_option_when_nginx_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def missing() -> str:
        raise FrontStartError("no nginx")

    monkeypatch.setattr(serve_cli, "nginx_binary", missing)
    monkeypatch.delenv(contract.AUTH_TOKEN_ENV, raising=False)
    assert serve_cli.main(["--grpc-port", str(free_port())]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "make system-deps" in line and "apt-get install nginx-light" in line and "--max-request-mb 0" in line


def test_serve_exits_2_naming_port_when_grpc_port_is_taken(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv(contract.AUTH_TOKEN_ENV, raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve_cli.main(["--grpc-port", str(port), "--metrics-port", str(free_port())]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"port {port} on 127.0.0.1 (--grpc-port) is already in use" in line


def test_serve_exits_2_when_token_set_without_front(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv(contract.AUTH_TOKEN_ENV, "t0ken")
    assert serve_cli.main(["--max-request-mb", "0", "--grpc-port", str(free_port())]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "command line, which every local user can read" in line


def test_nginx_binary_is_found_when_system_deps_ran() -> None:
    assert Path(nginx_binary()).is_file(), "make system-deps installs nginx-light"


def test_server_serves_repository_whose_path_has_spaces_when_fronted(
    tritonserver: type[TritonServer], model_repository: Path, tmp_path: Path
) -> None:
    spaced = tmp_path / "model repository with spaces"
    shutil.copytree(model_repository, spaced)
    import tritonclient.grpc as grpcclient

    with (
        tritonserver.on_free_ports(
            model_repository=spaced,
            http=False,
            max_request_bytes=1 << 20,
            log_path=tmp_path / "t.log",
            startup_timeout_s=180,
        ) as server,
        grpcclient.InferenceServerClient(server.grpc_url) as raw,
    ):
        assert raw.is_model_ready(contract.ENSEMBLE)


def test_server_start_fails_fast_naming_the_stub_crash_when_a_stub_dies(
    tritonserver: type[TritonServer], model_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spaced = tmp_path / "with spaces"
    shutil.copytree(model_repository, spaced)
    server = tritonserver.on_free_ports(model_repository=spaced, http=False, log_path=tmp_path / "t.log")
    monkeypatch.setattr(server, "_repository_arg", lambda: spaced)  # as before the link: the stubs die
    started = time.monotonic()
    with pytest.raises(ServerStartError, match="terminate called after throwing") as failed:
        server.start()
    server.stop()
    assert time.monotonic() - started < 120
    assert "what():" in str(failed.value) and "(none)" not in str(failed.value).split("last lines")[0]
