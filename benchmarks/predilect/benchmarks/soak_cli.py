"""`predilect bench soak`: minutes at saturation with the server's memory measured over time.

Serves the default CPU profile (or ``--model-repository``), then runs ``--users`` closed-loop
senders of phantom camera frames for ``--seconds`` (default 5 minutes) -- more than the server
can take at once, so its bounded queue refuses some (a refused sender pauses 0.2 s) -- while
every ``--large-every-s`` one ``--large-mb`` request of random bytes (not an image: refused) is
sent beside them. Every
``--sample-s`` it samples the resident memory of the tritonserver and its backend stubs, the
/dev/shm bytes its Python-backend regions hold, and the answered / refused counts.

Prints and writes (``--out``, JSON) only what it measured: the samples, memory at start / end /
peak, throughput per minute, error counts, the machine and its load average. Exit 0 when every
valid request ended answered or refused (no failure, no client deadline), else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any

from predilect.benchmarks import machine, reliability, reliability_cli
from predilect.benchmarks.payloads import CAMERA_SIZE
from predilect.benchmarks.reliability_cli import MB as _MB
from predilect.cli import command

_BACK_OFF_S = 0.2


def _parser() -> argparse.ArgumentParser:
    p = reliability_cli.parser("soak", __doc__)
    p.add_argument("--images", type=int, default=24, help="phantom camera frames (2048x1536) sent round-robin")
    p.add_argument("--users", type=int, default=48, help="closed-loop senders (saturation)")
    p.add_argument("--seconds", type=float, default=300.0)
    p.add_argument("--sample-s", type=float, default=5.0)
    p.add_argument("--large-every-s", type=float, default=30.0, help="0: no large requests")
    p.add_argument("--large-mb", type=float, default=48.0)
    p.add_argument("--timeout-s", type=float, default=30.0, help="client deadline per request, retries included")
    reliability_cli.add_request_limit(p)
    return p


async def _load(url: str, images: list[bytes], args: argparse.Namespace, counts: dict[str, int]) -> dict[str, Any]:
    from predilect.client import AsyncScreeningClient, ImageRejectedError, PredilectClientError

    start = time.perf_counter()
    outcomes: list[reliability.Outcome] = []
    large: list[str] = []

    async def user(number: int, client: Any) -> None:
        i = number
        while time.perf_counter() - start < args.seconds:
            due = time.perf_counter() - start
            outcome = await reliability.screen_once(
                client, images[i % len(images)], due_s=due, start=start, timeout_s=args.timeout_s
            )
            outcomes.append(outcome)
            counts[outcome.kind] = counts.get(outcome.kind, 0) + 1
            i += args.users
            if outcome.kind == reliability.REFUSED:
                await asyncio.sleep(_BACK_OFF_S)  # as a sender told "at capacity" (after its retries) would

    async def large_sender(client: Any) -> None:
        rng = __import__("random").Random(0)
        while args.large_every_s > 0 and time.perf_counter() - start + args.large_every_s < args.seconds:
            await asyncio.sleep(args.large_every_s)
            payload = rng.randbytes(int(args.large_mb * _MB))
            try:
                await client.screen(payload, timeout_s=args.timeout_s)
                large.append("answered")
            except ImageRejectedError:
                large.append("rejected")
            except PredilectClientError as e:
                large.append(type(e).__name__)

    async with AsyncScreeningClient(url, timeout_s=args.timeout_s) as client:
        await client.screen(images[0])
        await asyncio.gather(large_sender(client), *(user(n, client) for n in range(args.users)))
    elapsed = time.perf_counter() - start
    summary = reliability.summarise(outcomes, within_s=2.0)
    per_minute = []
    for minute in range(int(elapsed // 60) + 1):
        window = [o for o in outcomes if minute * 60 <= o.end_s < (minute + 1) * 60]
        span = min(60.0, elapsed - minute * 60)
        if span >= 10:
            per_minute.append(round(sum(o.kind == reliability.ANSWERED for o in window) / span, 2))
    return {"elapsed_s": elapsed, "summary": summary.to_dict(), "answered_per_s_by_minute": per_minute, "large": large}


def _memory(samples: list[dict[str, float]], key: str) -> dict[str, float]:
    values = [s[key] for s in samples]
    return {"start": values[0], "end": values[-1], "peak": max(values)} if values else {}


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    work = reliability_cli.workdir("soak")
    images = reliability_cli.camera_frames(work, args.images)
    server = reliability_cli.server(args, work)
    load_before = machine.load_average()
    counts: dict[str, int] = {}
    with server:
        pid = server.pid or 0

        def probe() -> dict[str, float]:
            return {
                "server_rss_mb": round(reliability.process_tree_rss_bytes(pid) / _MB, 1),
                "shm_mb": round(reliability.shm_bytes(server.shm_prefix) / _MB, 1),
                "answered": counts.get(reliability.ANSWERED, 0),
                "refused": counts.get(reliability.REFUSED, 0),
                "load_1min": round(os.getloadavg()[0], 2),
            }

        with reliability.Sampler(probe, interval_s=args.sample_s) as sampler:
            measured = asyncio.run(_load(server.grpc_url, images, args, counts))
            time.sleep(args.sample_s)  # one sample after the load stopped
        samples = sampler.samples
        errors = server.log_errors()
    summary = measured["summary"]
    bad = summary["counts"]["failed"] + summary["counts"]["timed out"]
    return {
        **reliability_cli.header("soak", argv),
        "load_average_before": load_before,
        "load_average_after": machine.load_average(),
        "payload": f"{args.images} phantom JPEGs {CAMERA_SIZE[0]}x{CAMERA_SIZE[1]}, "
        f"{args.users} closed-loop users, one {args.large_mb:g} MB random payload every {args.large_every_s:g} s, "
        f"request limit {args.max_request_mb:g} MiB",
        **measured,
        "server_rss_mb": _memory(samples, "server_rss_mb"),
        "shm_mb": _memory(samples, "shm_mb"),
        "samples": samples,
        "server_log_error_lines": len(errors),
        "passed": bad == 0,
    }


def render(figures: dict[str, Any]) -> str:
    s = figures["summary"]
    rss, shm = figures["server_rss_mb"], figures["shm_mb"]
    return "\n".join(
        [
            f"soak ({figures['date']}, {figures['machine']})",
            f"  load average before {figures['load_average_before']}, after {figures['load_average_after']}",
            f"  {figures['payload']}; {figures['elapsed_s']:.0f} s",
            f"  outcomes: {s['counts']}; answered p50 {s['answered_p50_s']:.3f} s, p99 {s['answered_p99_s']:.3f} s",
            f"  answered/s by minute: {figures['answered_per_s_by_minute']}",
            f"  large payloads: {figures['large']}",
            f"  server RSS (server + stubs) MB: start {rss['start']}, end {rss['end']}, peak {rss['peak']}",
            f"  /dev/shm of its regions MB:    start {shm['start']}, end {shm['end']}, peak {shm['peak']}",
            f"  error lines in the server log: {figures['server_log_error_lines']}",
            f"  {'PASS' if figures['passed'] else 'FAIL'}: every valid request answered or refused",
        ]
    )


@command("bench soak")
def main(argv: Sequence[str] | None = None) -> int:
    return reliability_cli.main(argv, make_parser=_parser, run=run, render=render)
