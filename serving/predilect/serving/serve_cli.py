"""`predilect serve`: the real tritonserver on a model repository, until Ctrl+C or SIGTERM.

Secure by default: gRPC only, on loopback; another address needs the screening token
(``$PREDILECT_AUTH_TOKEN``, see ``contract.AUTH_TOKEN_ENV``) or an explicit
``--allow-unauthenticated``. nginx runs in front of tritonserver (``serving/predilect/serving/front.py``)
and is the only way in: tritonserver listens on Unix sockets only its user reaches. The front
refuses a gRPC request larger than ``--max-request-mb`` (32) before it reaches the server, passes
only health, metadata and inference (shared memory, repository and model control, trace and
logging are closed), checks the token (every gRPC call must carry it) and ends TLS (``--tls-cert`` /
``--tls-key``, ``--tls-mutual`` for client certificates). ``--http`` adds KServe over HTTP through
the front, every API but health under the token (health only with TLS), bodies refused from 3 MiB
(tritonserver 2.51 dies of SIGSEGV on one of 4 MiB: docs/RELIABILITY.md). Metrics listen on
loopback (``--no-metrics``: off), ``GET /metrics`` only. ``--max-request-mb 0`` runs tritonserver
alone, without nginx and without those guards (no token then: tritonserver would take it on its
command line, which every local user can read).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from predilect.artifacts import default_artifacts
from predilect.cli import EXIT_INCOMPLETE, EXIT_UNAVAILABLE, CommandError, command
from predilect.contract import AUTH_TOKEN_ENV, DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT
from predilect.serving.front import NGINX_MISSING, FrontStartError, nginx_binary, port_in_use
from predilect.serving.server import LOOPBACK, ServerSecurity, ServerStartError, ServerTls, TritonServer

_LOOPBACKS = (LOOPBACK, "localhost", "::1")
DEFAULT_MAX_REQUEST_MB = 32.0  # a 6 MP camera frame is a few MB as JPEG, up to ~18 MB as a DICOM frame sent as PNG


class _Shutdown(Exception):
    """Raised in the main thread by the SIGINT/SIGTERM handler of ``predilect serve``."""


def _on_signal(signum: int, _frame: object) -> None:
    # Ignore repeats so that a second Ctrl+C cannot interrupt the graceful stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Shutdown(signal.Signals(signum).name)


def request_limit_mb(text: str) -> float:
    """A ``--max-request-mb`` value: MiB >= 0 (0: no limit)."""
    try:
        value = float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a size in MiB, got {text!r}") from e
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 MiB (0: no limit), got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predilect serve", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument(
        "--model-repository",
        type=Path,
        default=default_artifacts().repository,
        help="the model repository `predilect assemble` (or `make demo`) wrote (default: artifacts/model_repository)",
    )
    p.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT, help=f"gRPC port (default {DEFAULT_GRPC_PORT})")
    p.add_argument(
        "--http-port", type=int, default=None, help=f"KServe HTTP port, with --http only (default {DEFAULT_HTTP_PORT})"
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        help=f"Prometheus port (default {DEFAULT_METRICS_PORT})",
    )
    p.add_argument("--bind-address", default=LOOPBACK, help=f"gRPC and HTTP listen here (default {LOOPBACK})")
    p.add_argument("--metrics-bind-address", default=LOOPBACK, help=f"metrics listen here (default {LOOPBACK})")
    p.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help=f"listen on a non-loopback address without ${AUTH_TOKEN_ENV} (anyone who reaches it may screen)",
    )
    p.add_argument(
        "--http",
        action="store_true",
        help="also serve KServe over HTTP through the front (health; every other API under the token, none "
        "with TLS); bodies of 3 MiB or more refused (tritonserver 2.51 crashes on 4 MiB)",
    )
    p.add_argument("--no-metrics", action="store_true", help="no Prometheus metrics endpoint")
    p.add_argument(
        "--max-request-mb",
        type=request_limit_mb,
        default=DEFAULT_MAX_REQUEST_MB,
        help="refuse gRPC requests larger than this before they reach the server (nginx in front); "
        "0: no front, tritonserver alone (no limit, no API allow-list, no token)",
    )
    p.add_argument("--tls-cert", type=Path, help="gRPC TLS: the server certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="gRPC TLS: its private key (PEM)")
    p.add_argument("--tls-root-cert", type=Path, help="gRPC TLS: the CA of client certificates (PEM)")
    p.add_argument("--tls-mutual", action="store_true", help="require client certificates (mutual TLS)")
    p.add_argument("--log-verbose", type=int, default=0, help="tritonserver verbose log level (0: off)")
    p.add_argument("--log-file", type=Path, default=None, help="server log (default: a new temp file)")
    p.add_argument(
        "--startup-timeout-s", type=float, default=300.0, help="how long to wait for every model to load (default 300)"
    )
    return p


def security_from_args(args: argparse.Namespace, environ: dict[str, str] | os._Environ[str]) -> ServerSecurity:
    """The server's security settings from the options and ``$PREDILECT_AUTH_TOKEN``; CommandError when unsafe."""
    token = environ.get(AUTH_TOKEN_ENV) or None
    if args.http_port is not None and not args.http:
        raise CommandError("--http-port needs --http (HTTP is off unless asked for)")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CommandError("--tls-cert and --tls-key go together")
    if (args.tls_mutual or args.tls_root_cert is not None) and args.tls_cert is None:
        raise CommandError("--tls-mutual and --tls-root-cert need --tls-cert and --tls-key")
    exposed = args.bind_address not in _LOOPBACKS or args.metrics_bind_address not in _LOOPBACKS
    if exposed and token is None and not args.allow_unauthenticated:
        raise CommandError(
            f"--bind-address {args.bind_address} reaches beyond this machine: set ${AUTH_TOKEN_ENV} so every call "
            "must carry the token, or pass --allow-unauthenticated"
        )
    tls = None
    if args.tls_cert is not None:
        tls = ServerTls(
            cert_path=args.tls_cert, key_path=args.tls_key, root_cert_path=args.tls_root_cert, mutual=args.tls_mutual
        )
    return ServerSecurity(auth_token=token, tls=tls, http_api=args.http)


def check_can_listen(args: argparse.Namespace) -> None:
    """Refuse at once, naming the cause, what would otherwise fail inside nginx or tritonserver: nginx
    missing, a port already taken, a token without the front."""
    if args.max_request_mb:
        try:
            nginx_binary()
        except FrontStartError as e:
            raise CommandError(NGINX_MISSING) from e
    elif os.environ.get(AUTH_TOKEN_ENV):
        raise CommandError(
            f"${AUTH_TOKEN_ENV} is set but --max-request-mb 0 runs tritonserver without the front: the token "
            "would be on tritonserver's command line, which every local user can read; keep the front "
            f"(drop --max-request-mb 0) or unset ${AUTH_TOKEN_ENV}"
        )
    wanted = [("--grpc-port", args.bind_address, args.grpc_port)]
    if args.http:
        wanted.append(("--http-port", args.bind_address, args.http_port))
    if not args.no_metrics:
        wanted.append(("--metrics-port", args.metrics_bind_address, args.metrics_port))
    for option, host, port in wanted:
        if port_in_use(host, port):
            raise CommandError(
                f"port {port} on {host} ({option}) is already in use by another process "
                f"(another `predilect serve`?); stop it or pass another {option}"
            )


@command("serve")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    security = security_from_args(args, os.environ)
    if args.http_port is None:
        args.http_port = DEFAULT_HTTP_PORT
    check_can_listen(args)
    server = TritonServer(
        model_repository=args.model_repository,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        bind_address=args.bind_address,
        metrics_bind_address=args.metrics_bind_address,
        security=security,
        http=args.http,
        metrics=not args.no_metrics,
        max_request_bytes=int(args.max_request_mb * 1024 * 1024) or None,
        log_verbose=args.log_verbose,
        log_path=args.log_file,
        startup_timeout_s=args.startup_timeout_s,
    )
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        with server:
            guard = "token required" if security.auth_token else "no token"
            if args.max_request_mb:
                guard += f", requests up to {args.max_request_mb:g} MiB"
            tls = " (mutual TLS)" if security.tls and security.tls.mutual else " (TLS)" if security.tls else ""
            http = "health only" if security.http_health_only else "all APIs"
            print(
                f"tritonserver ready (pid {server.pid}, log {server.log_path})\n"
                f"  grpc    {server.grpc_url}{tls}, {guard}\n"
                f"  http    {f'{server.http_url}, {http}' if args.http else 'off'}\n"
                f"  metrics {'off' if args.no_metrics else server.metrics_url}\nCtrl+C or SIGTERM stops it.",
                flush=True,
            )
            while server.is_running:
                server.restrict_shm_regions()  # a stub that restarted made a new region
                time.sleep(0.5)
            print(
                f"predilect serve: tritonserver exited on its own; last log lines:\n{server.log_tail()}",
                file=sys.stderr,
            )
            return EXIT_INCOMPLETE
    except _Shutdown as e:
        print(f"predilect serve: {e}: tritonserver stopped", flush=True)
        return 0
    except ServerStartError as e:
        print(f"predilect serve: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
