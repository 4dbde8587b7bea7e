"""A request-size limit in front of tritonserver's gRPC endpoint: nginx with ``grpc_pass``.

tritonserver 2.51 has no request-size limit on gRPC (it sets the gRPC message limit to INT32_MAX
and offers no flag), so an oversized request reaches the first step's Python-backend stub, whose
shared-memory region grows to hold it and never shrinks (docs/RELIABILITY.md). nginx (C, from the
distribution: ``apt-get install nginx-light``) in front of it counts each request's body as it
streams in and refuses one past ``client_max_body_size`` before a byte of the rest is read or
forwarded: the caller gets INVALID_ARGUMENT naming the limit (of kind ``contract.ERROR_REQUEST_TOO_LARGE``,
so the client reports an ``ImageRejectedError`` and never retries it), and the server never sees a
complete message. The front also terminates TLS / mutual TLS when the server is given any; the
auth token travels on as gRPC metadata and tritonserver itself checks it.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from predilect import contract

_PR_SET_PDEATHSIG = 1
_MIB = 1024 * 1024


class FrontStartError(RuntimeError):
    """nginx is missing, or did not start; the message says which and how to fix it."""


@dataclass(frozen=True)
class FrontTls:
    """TLS at the front: the server certificate and key; ``client_ca_path`` also requires client certificates."""

    cert_path: Path
    key_path: Path
    client_ca_path: Path | None = None


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if found is None:
        raise FrontStartError(
            "the request-size limit runs nginx in front of tritonserver and nginx is not installed: "
            "apt-get install nginx-light (`make system-deps`), or turn the limit off"
        )
    return found


def _listen_address(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def render_config(
    *,
    prefix: Path,
    listen_host: str,
    listen_port: int,
    upstream_port: int,
    max_request_bytes: int,
    error_log: Path,
    tls: FrontTls | None = None,
) -> str:
    """The nginx configuration of the front (one worker: the server's cores belong to tritonserver)."""
    limit = f"{max_request_bytes / _MIB:g} MiB"
    message = contract.error_message(
        contract.ERROR_REQUEST_TOO_LARGE, f"request larger than {limit}, the server's limit"
    )
    ssl = ""
    if tls is not None:
        ssl = (
            f"    ssl_certificate {Path(tls.cert_path).resolve()};\n"
            f"    ssl_certificate_key {Path(tls.key_path).resolve()};\n"
            "    ssl_protocols TLSv1.2 TLSv1.3;\n"
        )
        if tls.client_ca_path is not None:
            ssl += f"    ssl_client_certificate {Path(tls.client_ca_path).resolve()};\n    ssl_verify_client on;\n"
    temp = " ".join(
        f"{name}_temp_path {prefix / name};" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {error_log} warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  {temp}
  client_max_body_size {max_request_bytes};
  client_body_timeout 60s;
  grpc_read_timeout 3600s;
  grpc_send_timeout 3600s;
  http2_max_concurrent_streams 256;
  server {{
    listen {_listen_address(listen_host)}:{listen_port} {"ssl " if tls else ""}http2;
{ssl}    location / {{
      grpc_pass grpc://127.0.0.1:{upstream_port};
      error_page 413 = @too_large;
    }}
    location @too_large {{
      default_type application/grpc;
      add_header grpc-status 3 always;
      add_header grpc-message "{message}" always;
      return 204;
    }}
  }}
}}
"""


class GrpcFront:
    """nginx on ``listen_host:listen_port`` passing gRPC to ``127.0.0.1:upstream_port`` under a size limit."""

    def __init__(
        self,
        *,
        listen_host: str,
        listen_port: int,
        upstream_port: int,
        max_request_bytes: int,
        log_path: Path,
        tls: FrontTls | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        if max_request_bytes < 1:
            raise ValueError(f"max_request_bytes must be >= 1, got {max_request_bytes}")
        self.listen_host, self.listen_port, self.upstream_port = listen_host, listen_port, upstream_port
        self.max_request_bytes, self.log_path, self.tls = max_request_bytes, Path(log_path), tls
        self.startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._prefix: Path | None = None

    def start(self) -> GrpcFront:
        binary = nginx_binary()
        prefix = Path(tempfile.mkdtemp(prefix="predilect-front-"))
        os.chmod(prefix, 0o711)  # nginx's workers (user nobody under root) create their temp folders here
        self._prefix = prefix
        config = prefix / "nginx.conf"
        config.write_text(
            render_config(
                prefix=prefix,
                listen_host=self.listen_host,
                listen_port=self.listen_port,
                upstream_port=self.upstream_port,
                max_request_bytes=self.max_request_bytes,
                error_log=self.log_path,
                tls=self.tls,
            )
        )
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        in_main_thread = threading.current_thread() is threading.main_thread()

        def die_with_parent() -> None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

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

    def _wait_listening(self) -> None:
        host = (
            "127.0.0.1"
            if self.listen_host in ("0.0.0.0", "")
            else "::1"
            if self.listen_host == "::"
            else self.listen_host
        )
        deadline = time.monotonic() + self.startup_timeout_s
        process = self._process
        if process is None:
            raise RuntimeError("start the front before waiting for it")
        while True:
            if process.poll() is not None:
                stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
                raise FrontStartError(f"nginx exited with code {process.returncode}: {stderr.strip()}")
            try:
                with socket.create_connection((host, self.listen_port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise FrontStartError(
                        f"nginx did not listen on port {self.listen_port} within "
                        f"{self.startup_timeout_s:.0f} s; log: {self.log_path}"
                    ) from None
                time.sleep(0.1)

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Stop nginx (SIGQUIT: let in-flight calls finish; SIGKILL after 10 s) and remove its folder."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGQUIT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            if process.stderr is not None:
                process.stderr.close()
        if self._prefix is not None:
            shutil.rmtree(self._prefix, ignore_errors=True)
            self._prefix = None
