"""``predilect gateway``: run the DICOM C-STORE gateway until SIGINT/SIGTERM, then drain and stop.

Exit status: 0 stopped by a signal after draining; 2 a user error (bad option, TLS file, refused
token); 3 the screening server is unreachable or unusable at start.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from predilect.cli import EXIT_OK, EXIT_UNAVAILABLE, CommandError, command
from predilect.client.cli_options import add_client_options, client_from_args
from predilect.client.errors import PredilectClientError
from predilect.dicom.gateway import DicomGateway, DicomTls, GatewayConfig, RemoteAE
from predilect.errors import UserError

_MB = 1024 * 1024
_NOISY_LIBRARIES = ("pynetdicom", "highdicom")
_DEFAULTS = GatewayConfig()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="predilect gateway", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--port", type=int, default=_DEFAULTS.port, help=f"DICOM port to listen on (default {_DEFAULTS.port})"
    )
    parser.add_argument(
        "--bind-address",
        default=_DEFAULTS.bind_address,
        help=f"address to listen on (default {_DEFAULTS.bind_address})",
    )
    parser.add_argument("--ae-title", default=_DEFAULTS.ae_title, help="this gateway's AE title")
    parser.add_argument(
        "--allow-aet",
        action="append",
        default=list(_DEFAULTS.allowed_calling_aets),
        metavar="AET",
        help="calling AE title allowed to send (repeatable; default: any)",
    )
    parser.add_argument("--incoming", type=Path, default=_DEFAULTS.incoming_dir, help="folder for received instances")
    parser.add_argument("--out", type=Path, default=_DEFAULTS.results_dir, help="folder for results.jsonl and SRs")
    parser.add_argument(
        "--min-free-mb",
        type=float,
        default=_DEFAULTS.min_free_bytes / _MB,
        help="refuse C-STOREs (status 0xA700) below this much free disk space",
    )
    parser.add_argument("--forward", type=RemoteAE.parse, metavar="HOST:PORT:AET", help="C-STORE each SR here")
    parser.add_argument("--dicom-tls-cert", type=Path, help="DICOM TLS: the gateway's certificate (PEM)")
    parser.add_argument("--dicom-tls-key", type=Path, help="DICOM TLS: its private key (PEM)")
    parser.add_argument("--dicom-tls-ca", type=Path, help="DICOM TLS: require sender certificates signed by this CA")
    parser.add_argument(
        "--retry-interval-s",
        type=float,
        default=_DEFAULTS.retry_interval_s,
        help="try instances that failed on the server's side again this often",
    )
    parser.add_argument(
        "--idle-timeout-s", type=float, default=_DEFAULTS.idle_timeout_s, help="drop an association idle this long"
    )
    parser.add_argument(
        "--max-associations", type=int, default=_DEFAULTS.max_associations, help="associations served at once"
    )
    parser.add_argument(
        "--max-associations-per-peer",
        type=int,
        default=_DEFAULTS.max_associations_per_peer,
        help="associations served at once from one address",
    )
    parser.add_argument(
        "--handshake-timeout-s",
        type=float,
        default=_DEFAULTS.handshake_timeout_s,
        help="drop a connection whose association is not established this long after it connected",
    )
    parser.add_argument(
        "--max-instance-mb",
        type=float,
        default=_DEFAULTS.max_instance_bytes / _MB,
        help="refuse (0xA700) an instance larger than this",
    )
    parser.add_argument(
        "--screen-workers", type=int, default=_DEFAULTS.screen_workers, help="instances screened at once"
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="the gateway's log level; pynetdicom's and highdicom's own INFO lines show at DEBUG only",
    )
    add_client_options(parser)
    return parser


@command("gateway")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for library in _NOISY_LIBRARIES:  # a line per PDU and per SR written: noise for an operator
        logging.getLogger(library).setLevel(args.log_level if args.log_level == "DEBUG" else "WARNING")
    if args.screen_workers < 1 or args.max_associations_per_peer < 1:
        raise CommandError("--screen-workers and --max-associations-per-peer must be >= 1")
    if (args.dicom_tls_cert is None) != (args.dicom_tls_key is None):
        raise CommandError("--dicom-tls-cert and --dicom-tls-key go together")
    if args.dicom_tls_ca is not None and args.dicom_tls_cert is None:
        raise CommandError("--dicom-tls-ca needs --dicom-tls-cert and --dicom-tls-key")
    tls = DicomTls(args.dicom_tls_cert, args.dicom_tls_key, args.dicom_tls_ca) if args.dicom_tls_cert else None
    config = GatewayConfig(
        incoming_dir=args.incoming,
        results_dir=args.out,
        ae_title=args.ae_title,
        port=args.port,
        bind_address=args.bind_address,
        allowed_calling_aets=tuple(args.allow_aet),
        min_free_bytes=int(args.min_free_mb * _MB),
        forward_to=args.forward,
        retry_interval_s=args.retry_interval_s,
        idle_timeout_s=args.idle_timeout_s,
        max_associations=args.max_associations,
        max_associations_per_peer=args.max_associations_per_peer,
        handshake_timeout_s=args.handshake_timeout_s,
        max_instance_bytes=int(args.max_instance_mb * _MB),
        screen_workers=args.screen_workers,
        tls=tls,
    )
    client = client_from_args(args)  # reads the TLS files: a missing one is a user error, reported at once
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with client, DicomGateway(client, config) as gateway:
            print(
                f"predilect gateway: {args.ae_title} listening on {args.bind_address}:{gateway.port}"
                f"{' (DICOM TLS)' if tls else ''}",
                file=sys.stderr,
                flush=True,
            )
            stop.wait()
            print("predilect gateway: stopping; screening what is queued", file=sys.stderr, flush=True)
    except UserError:
        raise
    except PredilectClientError as e:
        print(f"predilect gateway: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return EXIT_OK
