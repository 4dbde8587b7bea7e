"""The server address: ``host:port`` checked and completed, its name resolved, and why a connection failed.

gRPC reports a name that does not resolve, a port nothing listens on and a host that does not
answer all as UNAVAILABLE, with the reason only in its message text. These helpers find the cause
with typed calls instead (``getaddrinfo``'s ``gaierror``, a TCP connect's ``ConnectionRefusedError``),
so an error names it: "cannot resolve", "connection refused", "no answer".
"""

from __future__ import annotations

import socket

from predilect import contract
from predilect.client.errors import ClientConfigError

PROBE_TIMEOUT_S = 3.0


def with_default_port(url: str) -> str:
    """``host:port`` as given; ``host`` alone gets Triton's gRPC port (``contract.DEFAULT_GRPC_PORT``), not the 443
    that gRPC would otherwise pick. ``ClientConfigError`` for a URL with a scheme or a path, or a bad port."""
    text = url.strip()
    if "://" in text or "/" in text:
        raise ClientConfigError(
            f"server address {url!r}: give host:port (e.g. localhost:{contract.DEFAULT_GRPC_PORT}), "
            "without a scheme or a path"
        )
    if not text:
        raise ClientConfigError("server address is empty: give host:port")
    host, port = split_host_port(text)
    if port is None:
        return f"{text}:{contract.DEFAULT_GRPC_PORT}"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ClientConfigError(f"server address {url!r}: the port must be a number from 1 to 65535, got {port!r}")
    return text if host else f"localhost:{port}"


def split_host_port(address: str) -> tuple[str, str | None]:
    """``("host", "port")`` of ``host:port`` / ``[v6]:port``; the port None when there is none."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else None
    if address.count(":") == 1:
        host, port = address.split(":")
        return host, port
    return address, None  # a bare host, or an IPv6 literal without brackets


def resolve_error(address: str) -> str | None:
    """Why ``host:port``'s host name does not resolve (DNS), or None when it does."""
    host, port = split_host_port(address)
    try:
        socket.getaddrinfo(host, int(port) if port and port.isdigit() else None, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return f"cannot resolve the host name {host!r} ({e.strerror or e}): check the host in the server address"
    except (UnicodeError, ValueError) as e:
        return f"the host name {host!r} is not valid ({e})"
    return None


def connect_error(address: str, *, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why a TCP connection to ``host:port`` fails (refused, no answer, unreachable), or None when it opens."""
    host, port = split_host_port(address)
    if port is None or not port.isdigit():
        return None
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return None
    except ConnectionRefusedError:
        return f"connection refused: nothing listens on {address} (is the server started, on this port?)"
    except TimeoutError:
        return f"no answer from {address} within {timeout_s:.0f} s (a firewall, or the wrong address?)"
    except socket.gaierror as e:
        return f"cannot resolve the host name {host!r} ({e.strerror or e})"
    except OSError as e:
        return f"cannot connect to {address}: {e.strerror or e}"
