"""`predilect bench overload`: open-loop load at a multiple of measured capacity, bounded in time.

1. Serves the repository (default: ``assemble --onnx`` with the default CPU profile, whose first
   step has a bounded REJECT queue) on free ports.
2. Capacity: ``--users`` closed-loop senders for ``--capacity-s``; answered requests per second.
3. Overload: requests due at ``--factor`` x capacity for ``--seconds`` (open loop: each request's
   time counts from when it was due, however far behind the server is), sent with the client's
   defaults (retries within its budget).
4. Right after: one request, which must be answered.

Prints and writes (``--out``, JSON) only what the run measured: capacity, the share of requests
that ended -- answered or refused -- within 2 s, latency quantiles, how many requests the server
ran versus answered (abandoned requests must not be decoded), the machine and its load average.
Exit 0 when >= 90 % ended within 2 s and the request after was answered, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from typing import Any

from predilect.benchmarks import machine, reliability, reliability_cli
from predilect.benchmarks.payloads import CAMERA_SIZE
from predilect.cli import CommandError, command

TARGET_SHARE, WITHIN_S = 0.90, 2.0


def _parser() -> argparse.ArgumentParser:
    p = reliability_cli.parser("overload", __doc__)
    p.add_argument("--images", type=int, default=24, help="phantom camera frames (2048x1536) sent round-robin")
    p.add_argument("--users", type=int, default=32, help="closed-loop senders for the capacity measurement")
    p.add_argument("--capacity-s", type=float, default=20.0)
    p.add_argument("--factor", type=float, default=2.0, help="offered load, as a multiple of capacity")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the overload phase")
    p.add_argument("--timeout-s", type=float, default=10.0, help="client deadline per request, retries included")
    return p


async def _measure(url: str, images: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    from predilect.client import AsyncScreeningClient

    async with AsyncScreeningClient(url, timeout_s=args.timeout_s) as client:
        await client.screen(images[0])  # warm
        started = time.perf_counter()
        warm = await reliability.closed_loop(
            client, images, users=args.users, seconds=args.capacity_s, timeout_s=args.timeout_s
        )
        elapsed = time.perf_counter() - started
        capacity = sum(o.kind == reliability.ANSWERED for o in warm) / elapsed
        if capacity <= 0:
            raise CommandError("nothing was answered while measuring capacity; is the server healthy?")
    async with AsyncScreeningClient(url, timeout_s=args.timeout_s) as client:  # a fresh retry budget
        rate = args.factor * capacity
        outcomes = await reliability.open_loop(
            client, images, rate_per_s=rate, seconds=args.seconds, timeout_s=args.timeout_s
        )
        after_start = time.perf_counter()
        after = await client.screen(images[1])
        after_s = time.perf_counter() - after_start
        budget_left = client.retry_budget.tokens
    return {
        "capacity_per_s": capacity,
        "capacity_summary": reliability.summarise(warm, within_s=WITHIN_S).to_dict(),
        "offered_per_s": rate,
        "outcomes": outcomes,
        "after": {"answered": bool(after.scores), "latency_s": after_s},
        "retry_budget_tokens_left": budget_left,
    }


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """The whole measurement; the figures as a dict."""
    work = reliability_cli.workdir("overload")
    images = reliability_cli.camera_frames(work, args.images)
    load_before = machine.load_average()
    with reliability_cli.server(args, work) as server:
        step = reliability.first_step(server.model_repository)
        executed_before = reliability.executed_count(server.grpc_url, step)
        measured = asyncio.run(_measure(server.grpc_url, images, args))
        executed = reliability.executed_count(server.grpc_url, step) - executed_before
    outcomes = measured.pop("outcomes")
    summary = reliability.summarise(outcomes, within_s=WITHIN_S)
    answered_total = measured["capacity_summary"]["counts"]["answered"] + summary.counts["answered"] + 2
    return {
        **reliability_cli.header("overload", argv),
        "load_average_before": load_before,
        "load_average_after": machine.load_average(),
        "first_step": step,
        "payload": f"{args.images} phantom JPEGs {CAMERA_SIZE[0]}x{CAMERA_SIZE[1]}",
        **measured,
        "overload": summary.to_dict(),
        "server_ran": executed,
        "client_answered": answered_total,
        "passed": summary.ended_within_share >= TARGET_SHARE and measured["after"]["answered"],
    }


def _fmt(value: float | None, unit: str = " s") -> str:
    return "-" if value is None else f"{value:.3f}{unit}"


def render(figures: dict[str, Any]) -> str:
    o = figures["overload"]
    lines = [
        f"overload ({figures['date']}, {figures['machine']})",
        f"  load average before {figures['load_average_before']}, after {figures['load_average_after']}",
        f"  first step {figures['first_step']}; payload {figures['payload']}",
        f"  capacity (closed loop): {figures['capacity_per_s']:.1f} answered/s",
        f"  offered (open loop):    {figures['offered_per_s']:.1f} requests/s for {o['requests']} requests",
        f"  outcomes: {o['counts']}",
        f"  ended (answered or refused) within {o['ended_within_s']:.0f} s: {100 * o['ended_within_share']:.1f} %",
        f"  answered latency p50 {_fmt(o['answered_p50_s'])}, p90 {_fmt(o['answered_p90_s'])}, "
        f"p99 {_fmt(o['answered_p99_s'])}; refused p50 {_fmt(o['refused_p50_s'])}; "
        f"attempts per request {o['attempts_mean']:.2f}",
        f"  server ran {figures['server_ran']} requests, client got {figures['client_answered']} answers",
        f"  request right after: answered={figures['after']['answered']} in {figures['after']['latency_s']:.3f} s",
        f"  {'PASS' if figures['passed'] else 'FAIL'}: >= {100 * TARGET_SHARE:.0f} % within {WITHIN_S:.0f} s "
        "and the request after answered",
    ]
    return "\n".join(lines)


@command("bench overload")
def main(argv: Sequence[str] | None = None) -> int:
    return reliability_cli.main(argv, make_parser=_parser, run=run, render=render)
