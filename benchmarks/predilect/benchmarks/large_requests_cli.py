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
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from predilect.benchmarks import machine, reliability, reliability_cli
from predilect.benchmarks.reliability_cli import MB as _MB
from predilect.cli import command


def _parser() -> argparse.ArgumentParser:
    p = reliability_cli.parser("large", __doc__)
    p.add_argument("--mb", type=float, default=150.0, help="size of each large request")
    p.add_argument("--concurrent", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="send the burst this many times (does memory keep growing?)")
    p.add_argument("--settle-s", type=float, default=10.0)
    reliability_cli.add_request_limit(p)
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

    work = reliability_cli.workdir("large")
    (image,) = reliability_cli.camera_frames(work, 1)
    server = reliability_cli.server(args, work)
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

        valid = _send(server.grpc_url, image)
        sample("after one valid image", outcome=valid)
        rng = random.Random(0)
        for round_ in range(1, args.rounds + 1):
            payload = rng.randbytes(int(args.mb * _MB))
            started = time.perf_counter()
            with ThreadPoolExecutor(args.concurrent) as pool:
                outcomes = list(pool.map(_send, [server.grpc_url] * args.concurrent, [payload] * args.concurrent))
            sample(f"round {round_}: right after", outcomes=outcomes, took_s=round(time.perf_counter() - started, 2))
            time.sleep(args.settle_s)
            sample(f"round {round_}: {args.settle_s:g} s later", valid_after=_send(server.grpc_url, image))
    return {
        **reliability_cli.header("large", argv),
        "load_average": machine.load_average(),
        "max_request_mb": args.max_request_mb,
        "samples": samples,
    }


def render(figures: dict[str, Any]) -> str:
    limit = f"request limit {figures['max_request_mb']:g} MiB" if figures["max_request_mb"] else "no request limit"
    head = f"large requests, {limit} ({figures['date']}, {figures['machine']}, load average {figures['load_average']})"
    return "\n".join([head, *(f"  {s}" for s in figures["samples"])])


@command("bench large")
def main(argv: Sequence[str] | None = None) -> int:
    return reliability_cli.main(argv, make_parser=_parser, run=run, render=render)
