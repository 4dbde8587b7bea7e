"""Command-line options shared by ``predilect screen`` and ``predilect gateway``: server, auth, TLS."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from predilect import contract
from predilect.client.protocol import TlsConfig
from predilect.client.screening import ScreeningClient

TOKEN_ENV = "PREDILECT_AUTH_TOKEN"


def add_client_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("screening server")
    group.add_argument("--server", default="localhost:8001", help="Triton gRPC endpoint host:port")
    group.add_argument("--model", default=contract.ENSEMBLE, help="ensemble name")
    group.add_argument("--timeout-s", type=float, default=60.0, help="deadline per image, retries included")
    group.add_argument(
        "--auth-token-env",
        default=TOKEN_ENV,
        metavar="VAR",
        help=f"environment variable holding the bearer token (default {TOKEN_ENV}; unset: no token)",
    )
    group.add_argument("--tls-root-cert", type=Path, help="PEM root certificate(s); enables TLS")
    group.add_argument("--tls-client-cert", type=Path, help="PEM client certificate (mutual TLS)")
    group.add_argument("--tls-client-key", type=Path, help="PEM client key (mutual TLS)")
    group.add_argument("--tls-server-name", help="expected name in the server certificate")


def client_from_args(args: argparse.Namespace) -> ScreeningClient:
    """A (not yet connected) ScreeningClient configured from the parsed options."""
    tls = None
    if args.tls_root_cert or args.tls_client_cert or args.tls_client_key or args.tls_server_name:
        tls = TlsConfig(
            root_cert_path=args.tls_root_cert,
            client_cert_path=args.tls_client_cert,
            client_key_path=args.tls_client_key,
            server_name_override=args.tls_server_name,
        )
    token = os.environ.get(args.auth_token_env) or None
    return ScreeningClient(args.server, model_name=args.model, timeout_s=args.timeout_s, auth_token=token, tls=tls)
