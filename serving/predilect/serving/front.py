"""nginx in front of tritonserver: the only way in, with the limits tritonserver 2.51 lacks.

tritonserver listens on Unix sockets in a folder only its user can enter (``TritonServer``
passes ``unix:`` addresses), so every call from another process goes through this front, which
nginx (C, from the distribution: ``apt-get install nginx-light``) runs on the service's ports:

* **gRPC** (``grpc_pass``): each request's body is counted as it streams in and one past
  ``max_request_bytes`` is refused before the rest is read or forwarded (INVALID_ARGUMENT of kind
  ``contract.ERROR_REQUEST_TOO_LARGE``: the client's ``ImageRejectedError``, never retried);
  only the methods the product uses pass (``GRPC_OPEN_METHODS``: health, metadata and config,
  statistics, inference); shared memory, the repository and model control, trace and logging
  are refused by RPC path (PERMISSION_DENIED) and never reach tritonserver.
* **HTTP** (KServe REST, when asked for): the same paths by API group, and bodies refused from
  ``HTTP_BODY_LIMIT_BYTES`` on -- tritonserver 2.51 dies of SIGSEGV on an HTTP body of 4 MiB or
  more (docs/RELIABILITY.md) -- with a KServe error (``{"error": ...}``, HTTP 413).
* **metrics**: ``GET /metrics`` only, no request body (the metrics port has the same crash).

The auth token, when set, is checked here (gRPC: every open method; HTTP: all but health) and is
never on tritonserver's command line, which every local user can read; the configuration that
holds it is owner-only. TLS / mutual TLS end here.

Connections are kept so that a long-lived channel never notices the front (``CONNECTION_SETTINGS``):
nginx closes an HTTP/2 connection with a single GOAWAY after ``keepalive_requests`` requests
(1,000 by default) or ``keepalive_time`` (1 h), and a client's calls that race that GOAWAY fail
with UNAVAILABLE "Stream removed (GOAWAY received)"; here neither limit is reached in practice,
idle connections are closed after ``keepalive_timeout``, and the upstream connections to
tritonserver are kept in a pool instead of one new connection per request. A stop or reload is
graceful: nginx sends GOAWAY and lets the calls in flight finish (``worker_shutdown_timeout``).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from predilect import contract

_PR_SET_PDEATHSIG = 1
_MIB = 1024 * 1024
HTTP_CRASH_BYTES = 4 * _MIB
"""The smallest HTTP request body that kills tritonserver 2.51 (SIGSEGV), measured (docs/RELIABILITY.md)."""
HTTP_BODY_LIMIT_BYTES = HTTP_CRASH_BYTES - _MIB
"""The largest HTTP body the front passes on: below the crash size, with a margin (3 MiB)."""
GRPC_SERVICE = "inference.GRPCInferenceService"
GRPC_OPEN_METHODS = (
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelConfig",
    "ModelStatistics",
    "ModelInfer",
    "ModelStreamInfer",
)
"""The gRPC methods callers may use: health, metadata (model config and statistics included), inference."""
CONNECTION_SETTINGS = {
    # HTTP/2 with the clients. nginx ends a connection with one GOAWAY at either limit, and the
    # calls a client has in flight at that moment fail: neither limit should ever be reached.
    "keepalive_requests": "1000000000000",
    "keepalive_time": "3650d",
    # An idle connection (no stream open, no frame received: a client's keepalive PING counts) is
    # closed after this; it bounds what idle connections hold, and a channel that is this idle
    # reconnects for its next call.
    "keepalive_timeout": "600s",
    # Streams one connection may run at once; clients queue the rest (SETTINGS_MAX_CONCURRENT_STREAMS).
    # Each takes one upstream connection; the ensemble's own queue refuses what it cannot hold.
    "http2_max_concurrent_streams": "128",
    "client_header_timeout": "60s",
    "client_body_timeout": "60s",
    # A stop or reload lets the calls in flight finish, this long at most.
    "worker_shutdown_timeout": "30s",
}
UPSTREAM_KEEPALIVE = 32
"""Idle connections to tritonserver kept for reuse (per upstream): no new connection per request."""
_UPSTREAM_SETTINGS = f"keepalive {UPSTREAM_KEEPALIVE}; keepalive_requests 1000000; keepalive_timeout 600s;"


class FrontStartError(RuntimeError):
    """nginx is missing, or did not start; the message says which and how to fix it."""


@dataclass(frozen=True)
class FrontTls:
    """TLS at the front: the server certificate and key; ``client_ca_path`` also requires client certificates."""

    cert_path: Path
    key_path: Path
    client_ca_path: Path | None = None


@dataclass(frozen=True)
class Upstream:
    """tritonserver's Unix sockets (``None``: that endpoint is off)."""

    grpc: Path
    http: Path | None = None
    metrics: Path | None = None


@dataclass(frozen=True)
class Listen:
    """What the front listens on: gRPC always, HTTP and metrics when given a port."""

    host: str
    grpc_port: int
    http_port: int | None = None
    metrics_port: int | None = None
    metrics_host: str | None = None


NGINX_MISSING = (
    "nginx is not installed, and `predilect serve` runs it in front of tritonserver (the request-size "
    "limit, the API allow-list, the token check): `make system-deps` (or `sudo apt-get install "
    "nginx-light`) installs it; `predilect serve --max-request-mb 0` runs tritonserver alone, without "
    "those guards"
)


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if found is None:
        raise FrontStartError(NGINX_MISSING)
    return found


def _listen_address(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _quoted(text: str) -> str:
    """``text`` as an nginx double-quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _variable(header: str) -> str:
    """The nginx variable holding a request header."""
    return "$http_" + header.lower().replace("-", "_")


def _grpc_error(name: str, status: int, message: str) -> str:
    return (
        f"    location @{name} {{\n"
        "      default_type application/grpc;\n"
        f"      add_header grpc-status {status} always;\n"
        f"      add_header grpc-message {_quoted(message)} always;\n"
        "      return 204;\n"
        "    }\n"
    )


def _kserve_error(name: str, status: int, message: str) -> str:
    body = json.dumps({"error": message})
    return (
        f"    location @{name} {{\n"
        "      default_type application/json;\n"
        f"      return {status} {_quoted(body)};\n"
        "    }\n"
    )


def _upstream(name: str, path: Path, settings: str = _UPSTREAM_SETTINGS) -> str:
    return f"  upstream {name} {{ server {_quoted('unix:' + str(path))}; {settings} }}\n"


def _ssl(tls: FrontTls | None) -> str:
    if tls is None:
        return ""
    lines = [
        f"ssl_certificate {_quoted(str(Path(tls.cert_path).resolve()))};",
        f"ssl_certificate_key {_quoted(str(Path(tls.key_path).resolve()))};",
        "ssl_protocols TLSv1.2 TLSv1.3;",
    ]
    if tls.client_ca_path is not None:
        lines += [
            f"ssl_client_certificate {_quoted(str(Path(tls.client_ca_path).resolve()))};",
            "ssl_verify_client on;",
        ]
    return "".join(f"    {line}\n" for line in lines)


_CLOSED_LOCATION = (
    "    location / {\n      return 403;\n      error_page 403 = @closed;\n      error_page 413 = @too_large;\n    }\n"
)
_CLOSED = "this API is closed on this server: it serves health, metadata and inference only"


def _grpc_server(listen: Listen, *, too_large: str, guarded: bool, tls: FrontTls | None) -> str:
    service = GRPC_SERVICE.replace(".", "\\.")
    guard = "      if ($predilect_grpc_authorized = 0) { return 401; }\n" if guarded else ""
    unauthenticated = f"this call needs the server's auth token in header {contract.GRPC_AUTH_HEADER}"
    return (
        "  server {\n"
        f"    listen {_listen_address(listen.host)}:{listen.grpc_port} {'ssl ' if tls else ''}http2;\n"
        f"{_ssl(tls)}"
        f"    location ~ ^/{service}/({'|'.join(GRPC_OPEN_METHODS)})$ {{\n"
        f"{guard}"
        "      grpc_pass grpc://triton_grpc;\n"
        "      error_page 413 = @too_large;\n"
        "      error_page 401 = @unauthenticated;\n"
        "    }\n"
        f"{_CLOSED_LOCATION}"
        f"{_grpc_error('too_large', 3, too_large)}"
        f"{_grpc_error('unauthenticated', 16, unauthenticated)}"
        f"{_grpc_error('closed', 7, _CLOSED)}"
        "  }\n"
    )


def _http_server(listen: Listen, *, body_limit: int, too_large: str, guarded: bool, health_only: bool) -> str:
    health = r"^/v2/health/(live|ready)$|^/v2/models/[^/]+(/versions/[0-9]+)?/ready$"
    apis = r"^/v2$|^/v2/models/[^/]+(/versions/[0-9]+)?(/config|/stats|/infer)?$"
    proxy = (
        "      proxy_pass http://triton_http;\n"
        "      proxy_http_version 1.1;\n"
        '      proxy_set_header Connection "";\n'
        "      error_page 413 = @too_large;\n"
        "      error_page 401 = @unauthenticated;\n"
    )
    guard = "      if ($predilect_http_authorized = 0) { return 401; }\n" if guarded else ""
    open_apis = "" if health_only else f"    location ~ {_quoted(apis)} {{\n{guard}{proxy}    }}\n"
    closed = "this API is closed on this server: it serves health only" if health_only else _CLOSED
    unauthenticated = f"this call needs the server's auth token in header {contract.AUTH_KEY}"
    return (
        "  server {\n"
        f"    listen {_listen_address(listen.host)}:{listen.http_port};\n"
        f"    client_max_body_size {body_limit};\n"
        f"    location ~ {_quoted(health)} {{\n{proxy}    }}\n"
        f"{open_apis}"
        f"{_CLOSED_LOCATION}"
        f"{_kserve_error('too_large', 413, too_large)}"
        f"{_kserve_error('unauthenticated', 401, unauthenticated)}"
        f"{_kserve_error('closed', 403, closed)}"
        "  }\n"
    )


def _metrics_server(host: str, port: int) -> str:
    return (
        "  server {\n"
        f"    listen {_listen_address(host)}:{port};\n"
        "    client_max_body_size 1;\n"
        "    location = /metrics {\n"
        "      limit_except GET { deny all; }\n"
        "      proxy_pass http://triton_metrics;\n"
        "      proxy_http_version 1.1;\n"
        '      proxy_set_header Connection "";\n'
        "    }\n"
        "    location / { return 404; }\n"
        "  }\n"
    )


def _token_maps(token: str) -> str:
    # The "k" keeps a token that spells a map keyword ("default", "include") a plain value.
    value = _quoted("k" + token)
    return "".join(
        f'  map "k{_variable(header)}" {variable} {{\n    default 0;\n    {value} 1;\n  }}\n'
        for header, variable in (
            (contract.GRPC_AUTH_HEADER, "$predilect_grpc_authorized"),
            (contract.AUTH_KEY, "$predilect_http_authorized"),
        )
    )


def render_config(
    *,
    prefix: Path,
    listen: Listen,
    upstream: Upstream,
    max_request_bytes: int,
    error_log: Path,
    auth_token: str | None = None,
    http_health_only: bool = False,
    tls: FrontTls | None = None,
    worker_user: str | None = None,
) -> str:
    """The nginx configuration of the front (one worker: the server's cores belong to tritonserver).

    ``auth_token``: required on every open gRPC method and every HTTP API but health;
    ``http_health_only``: HTTP answers health and nothing else; ``worker_user``: the user nginx's
    worker runs as when started by root (the one tritonserver runs as, so it can reach its sockets).
    """
    limit = f"{max_request_bytes / _MIB:g} MiB"
    too_large = contract.error_message(
        contract.ERROR_REQUEST_TOO_LARGE, f"request larger than {limit}, the server's limit"
    )
    guarded = auth_token is not None
    upstreams = _upstream("triton_grpc", upstream.grpc)
    servers = _grpc_server(listen, too_large=too_large, guarded=guarded, tls=tls)
    if listen.http_port is not None and upstream.http is not None:
        body_limit = min(max_request_bytes, HTTP_BODY_LIMIT_BYTES)
        http_too_large = contract.error_message(
            contract.ERROR_REQUEST_TOO_LARGE,
            f"request body larger than {body_limit / _MIB:g} MiB, the server's HTTP limit (gRPC takes up to {limit})",
        )
        upstreams += _upstream("triton_http", upstream.http)
        servers += _http_server(
            listen, body_limit=body_limit, too_large=http_too_large, guarded=guarded, health_only=http_health_only
        )
    if listen.metrics_port is not None and upstream.metrics is not None:
        upstreams += _upstream("triton_metrics", upstream.metrics, "keepalive 2;")
        servers += _metrics_server(listen.metrics_host or listen.host, listen.metrics_port)
    temp = " ".join(
        f"{name}_temp_path {_quoted(str(prefix / name))};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    settings = "".join(
        f"  {key} {value};\n" for key, value in CONNECTION_SETTINGS.items() if key != "worker_shutdown_timeout"
    )
    user = f"user {worker_user};\n" if worker_user else ""
    return (
        f"{user}worker_processes 1;\n"
        "worker_rlimit_nofile 8192;\n"
        f"worker_shutdown_timeout {CONNECTION_SETTINGS['worker_shutdown_timeout']};\n"
        f"pid {_quoted(str(prefix / 'nginx.pid'))};\n"
        f"error_log {_quoted(str(error_log))} warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        "  access_log off;\n"
        "  server_tokens off;\n"
        f"  {temp}\n"
        f"  client_max_body_size {max_request_bytes};\n"
        f"{settings}"
        "  grpc_read_timeout 3600s;\n  grpc_send_timeout 3600s;\n"
        "  proxy_read_timeout 3600s;\n  proxy_send_timeout 3600s;\n"
        f"{_token_maps(auth_token) if auth_token is not None else ''}"
        f"{upstreams}{servers}"
        "}\n"
    )


def _worker_user() -> str | None:
    """nginx started by root runs its worker as ``nobody`` unless told: keep it this process's user."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwuid(os.geteuid()).pw_name


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port`` (binding it fails with EADDRINUSE)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


class ServingFront:
    """nginx on ``listen`` passing gRPC (and HTTP, metrics) to tritonserver's Unix sockets."""

    def __init__(
        self,
        *,
        listen: Listen,
        upstream: Upstream,
        max_request_bytes: int,
        log_path: Path,
        auth_token: str | None = None,
        http_health_only: bool = False,
        tls: FrontTls | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        if max_request_bytes < 1:
            raise ValueError(f"max_request_bytes must be >= 1, got {max_request_bytes}")
        self.listen, self.upstream, self.max_request_bytes = listen, upstream, max_request_bytes
        self.log_path, self.tls, self.auth_token = Path(log_path), tls, auth_token
        self.http_health_only = http_health_only
        self.startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._prefix: Path | None = None

    def _ports(self) -> Sequence[tuple[str, int]]:
        ports = [(self.listen.host, self.listen.grpc_port)]
        if self.listen.http_port is not None and self.upstream.http is not None:
            ports.append((self.listen.host, self.listen.http_port))
        if self.listen.metrics_port is not None and self.upstream.metrics is not None:
            ports.append((self.listen.metrics_host or self.listen.host, self.listen.metrics_port))
        return ports

    def start(self) -> ServingFront:
        binary = nginx_binary()
        prefix = Path(tempfile.mkdtemp(prefix="predilect-front-"))  # 0700: the token is in its config
        self._prefix = prefix
        config = prefix / "nginx.conf"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(
                render_config(
                    prefix=prefix,
                    listen=self.listen,
                    upstream=self.upstream,
                    max_request_bytes=self.max_request_bytes,
                    error_log=self.log_path,
                    auth_token=self.auth_token,
                    http_health_only=self.http_health_only,
                    tls=self.tls,
                    worker_user=_worker_user(),
                )
            )
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        in_main_thread = threading.current_thread() is threading.main_thread()

        def die_with_parent() -> None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            [binary, "-p", str(prefix), "-c", str(config), "-e", str(self.log_path), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=die_with_parent if in_main_thread and sys.platform == "linux" else None,
        )
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        process = self._process
        if process is None:
            raise RuntimeError("start the front before waiting for it")
        pending = list(self._ports())
        while pending:
            if process.poll() is not None:
                stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
                said = "\n".join(part for part in (stderr.strip(), self._log_tail()) if part)
                raise FrontStartError(f"nginx (the front) exited with code {process.returncode}: {said}")
            host, port = pending[0]
            probe = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
            try:
                with socket.create_connection((probe, port), timeout=1):
                    pending.pop(0)
                    continue
            except OSError:
                if time.monotonic() > deadline:
                    raise FrontStartError(
                        f"nginx did not listen on port {port} within {self.startup_timeout_s:.0f} s; "
                        f"its log ({self.log_path}):\n{self._log_tail()}"
                    ) from None
                time.sleep(0.1)

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def stop(self) -> None:
        """Stop nginx gracefully (SIGQUIT: GOAWAY, the calls in flight finish; SIGKILL after the
        shutdown timeout) and remove its folder."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGQUIT)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            if process.stderr is not None:
                process.stderr.close()
        if self._prefix is not None:
            shutil.rmtree(self._prefix, ignore_errors=True)
            self._prefix = None
