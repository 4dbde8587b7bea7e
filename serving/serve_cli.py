"""`predilect serve`: the real tritonserver on a model repository, until Ctrl+C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from predilect.artifacts import default_artifacts
from predilect.cli import EXIT_INCOMPLETE, EXIT_UNAVAILABLE, command
from predilect.contract import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT
from predilect.serving.server import ServerStartError, TritonServer


class _Shutdown(Exception):
    """Raised in the main thread by the SIGINT/SIGTERM handler of ``predilect serve``."""


def _on_signal(signum: int, _frame: object) -> None:
    # Ignore repeats so that a second Ctrl+C cannot interrupt the graceful stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Shutdown(signal.Signals(signum).name)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predilect serve", description="Start tritonserver on a model repository.")
    p.add_argument("--model-repository", type=Path, default=default_artifacts().repository)
    p.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT)
    p.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT)
    p.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT)
    p.add_argument("--bind-address", default="0.0.0.0")
    p.add_argument("--log-verbose", type=int, default=0, help="tritonserver verbose log level (0: off)")
    p.add_argument("--log-file", type=Path, default=None, help="server log (default: a new temp file)")
    p.add_argument("--startup-timeout-s", type=float, default=300.0)
    return p


@command("serve")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    server = TritonServer(
        model_repository=args.model_repository,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        bind_address=args.bind_address,
        log_verbose=args.log_verbose,
        log_path=args.log_file,
        startup_timeout_s=args.startup_timeout_s,
    )
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        with server:
            print(
                f"tritonserver ready (pid {server.pid}, log {server.log_path})\n"
                f"  grpc    {server.grpc_url}\n  http    {server.http_url}\n  metrics {server.metrics_url}\n"
                "Ctrl+C or SIGTERM stops it.",
                flush=True,
            )
            while server.is_running:
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
