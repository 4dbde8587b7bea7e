"""Command-line options shared by ``predilect screen`` and ``predilect gateway``: server, auth, TLS.

They default from ``settings.ClientOptions``, the same place the client classes default from.
"""

from __future__ import annotations

import argparse
import os

from predilect.cli import add_dataclass_options, dataclass_from_args
from predilect.client.screening import ScreeningClient
from predilect.client.settings import ClientOptions


def add_client_options(parser: argparse.ArgumentParser) -> None:
    add_dataclass_options(parser, ClientOptions, title="screening server")


def client_from_args(args: argparse.Namespace) -> ScreeningClient:
    """A (not yet connected) ScreeningClient configured from the parsed options; reads the TLS
    files now (``ClientConfigError``, a user error, when one cannot be read)."""
    options = dataclass_from_args(ClientOptions, args)
    token = os.environ.get(options.auth_token_env) or None
    return ScreeningClient(
        options.server,
        model_name=options.model,
        timeout_s=options.timeout_s,
        auth_token=token,
        tls=options.tls(),
        camera=options.camera,
        field_angle_deg=options.field_angle_deg,
    )
