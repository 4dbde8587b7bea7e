"""`predilect bench large`: what oversized requests do to the server's memory, measured.

Serves the default CPU profile (or ``--model-repository``), sends ``--concurrent`` requests of
``--mb`` MB each over gRPC at once (random bytes: not an image), then one valid image, and
samples the resident memory of the tritonserver and its stubs and the /dev/shm bytes of its
Python-backend regions before, right after, and ``--settle-s`` later. tritonserver 2.51 has no
request-size limit on gRPC (its message limit is fixed at INT32_MAX), so such a request reaches
the first step, which refuses it by its header alone; this measures what memory it leaves behind.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from predilect.artifacts import default_artifacts
from predilect.benchmarks import machine, payloads, reliability
from predilect.cli import command
from predilect.serving.serve_cli import DEFAULT_MAX_REQUEST_MB

_MB = 1024 * 1024


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predilect bench large", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--onnx", type=Path, default=default_artifacts().onnx, help="exported model to serve")
    p.add_argument("--model-repository", type=Path, help="serve this repository as is instead of assembling one")
    p.add_argument("--mb", type=float, default=150.0, help="size of each large request")
    p.add_argument("--concurrent", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="send the burst this many times (does memory keep growing?)")
    p.add_argument("--settle-s", type=float, default=10.0)
    p.add_argument(
        "--max-request-mb",
        type=float,
        default=DEFAULT_MAX_REQUEST_MB,
        help="the request-size limit in front of the server, as `predilect serve` sets it (0: none)",
    )
    p.add_argument("--out", type=Path)
    return p


def _send(url: str, payload: bytes) -> str:
    from predilect.client import NO_RETRIES, PredilectClientError, ScreeningClient

    with ScreeningClient(url, timeout_s=120, retry_policy=NO_RETRIES) as client:
        try:
            client.screen(payload)
        except PredilectClientError as e:
            return type(e).__name__
    return "answered"


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    import random

    from predilect.serving.repository import assemble
    from predilect.serving.server import TritonServer

    work = Path(tempfile.mkdtemp(prefix="predilect-large-"))
    (image,) = payloads.render_set(work / "images", count=1, sizes=[payloads.CAMERA_SIZE])
    repository = args.model_repository or assemble(args.onnx, work / "model_repository")
    server = TritonServer.on_free_ports(
        model_repository=repository,
        log_path=work / "tritonserver.log",
        max_request_bytes=int(args.max_request_mb * _MB) or None,
    )
    samples: list[dict[str, Any]] = []
    with server:
        pid = server.pid or 0

        def sample(label: str, **extra: Any) -> None:
            samples.append(
                {
                    "when": label,
                    "server_rss_mb": round(reliability.process_tree_rss_bytes(pid) / _MB, 1),
                    "shm_mb": round(reliability.shm_bytes(server.shm_prefix) / _MB, 1),
                    **extra,
                }
            )

        valid = _send(server.grpc_url, image.read_bytes())
        sample("after one valid image", outcome=valid)
        rng = random.Random(0)
        for round_ in range(1, args.rounds + 1):
            payload = rng.randbytes(int(args.mb * _MB))
            started = time.perf_counter()
            with ThreadPoolExecutor(args.concurrent) as pool:
                outcomes = list(pool.map(_send, [server.grpc_url] * args.concurrent, [payload] * args.concurrent))
            sample(f"round {round_}: right after", outcomes=outcomes, took_s=round(time.perf_counter() - started, 2))
            time.sleep(args.settle_s)
            sample(f"round {round_}: {args.settle_s:g} s later", valid_after=_send(server.grpc_url, image.read_bytes()))
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine.describe(),
        "load_average": machine.load_average(),
        "command": " ".join(["predilect bench large", *argv]),
        "max_request_mb": args.max_request_mb,
        "samples": samples,
    }


@command("bench large")
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[3:] if argv is None else argv)
    args = _parser().parse_args(argv)
    reliability.require_model(args.onnx, args.model_repository)
    figures = run(args, argv)
    limit = f"request limit {args.max_request_mb:g} MiB" if args.max_request_mb else "no request limit"
    print(f"large requests, {limit} ({figures['date']}, {figures['machine']}, load average {figures['load_average']})")
    for s in figures["samples"]:
        print(f"  {s}")
    reliability.write_figures(args.out, figures)
    return 0
