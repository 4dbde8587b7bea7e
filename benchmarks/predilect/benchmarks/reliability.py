"""What the overload and soak benchmarks share: the served server, payloads, load, memory probes.

Library code only (no printing): ``overload_cli`` and ``soak_cli`` drive it and print what it measured.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from predilect import contract
from predilect.cli import CommandError
from predilect.client.errors import PredilectClientError, ServerBusyError

ANSWERED, REFUSED, TIMED_OUT, FAILED = "answered", "refused", "timed out", "failed"


@dataclass(frozen=True)
class Outcome:
    """One request of a load run: when it was due, when it ended, how."""

    due_s: float  # scheduled start, seconds from the run's start (open loop: independent of the server)
    end_s: float
    kind: str  # ANSWERED, REFUSED (server at capacity), TIMED_OUT (client deadline), FAILED
    attempts: int = 1

    @property
    def took_s(self) -> float:
        return self.end_s - self.due_s


def require_model(onnx: Path, model_repository: Path | None) -> None:
    """A reliability command needs a model repository or an exported model; say how to get one."""
    if model_repository is None and not onnx.is_file():
        raise CommandError(f"no exported model at {onnx}: run `make demo` (or give --onnx / --model-repository)")


def write_figures(out: Path | None, figures: dict[str, Any]) -> None:
    """Save a run's figures as JSON (when ``out`` is given)."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(figures, indent=1, default=str))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Summary:
    """The figures of a list of outcomes."""

    requests: int
    counts: dict[str, int]
    ended_within_s: float
    ended_within_share: float  # answered or refused within ``ended_within_s`` of being due
    answered_p50_s: float | None
    answered_p90_s: float | None
    answered_p99_s: float | None
    refused_p50_s: float | None
    attempts_mean: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(outcomes: Sequence[Outcome], *, within_s: float = 2.0) -> Summary:
    counts = {kind: sum(o.kind == kind for o in outcomes) for kind in (ANSWERED, REFUSED, TIMED_OUT, FAILED)}
    answered = [o.took_s for o in outcomes if o.kind == ANSWERED]
    refused = [o.took_s for o in outcomes if o.kind == REFUSED]
    ended = sum(o.kind in (ANSWERED, REFUSED) and o.took_s <= within_s for o in outcomes)
    return Summary(
        requests=len(outcomes),
        counts=counts,
        ended_within_s=within_s,
        ended_within_share=ended / len(outcomes) if outcomes else 0.0,
        answered_p50_s=percentile(answered, 0.5),
        answered_p90_s=percentile(answered, 0.9),
        answered_p99_s=percentile(answered, 0.99),
        refused_p50_s=percentile(refused, 0.5),
        attempts_mean=statistics.fmean(o.attempts for o in outcomes) if outcomes else None,
    )


def classify(error: BaseException | None) -> str:
    if error is None:
        return ANSWERED
    if isinstance(error, ServerBusyError):
        return REFUSED
    if isinstance(error, TimeoutError):
        return TIMED_OUT
    return FAILED


async def screen_once(client: Any, payload: bytes, *, due_s: float, start: float, timeout_s: float) -> Outcome:
    """One request on an ``AsyncScreeningClient``; its outcome (client errors are outcomes, not raised)."""
    error: PredilectClientError | None = None
    try:
        await client.screen(payload, timeout_s=timeout_s)
    except PredilectClientError as e:
        error = e
    attempts = error.attempts if error is not None else 1
    return Outcome(due_s=due_s, end_s=time.perf_counter() - start, kind=classify(error), attempts=attempts)


async def closed_loop(
    client: Any, payloads: Sequence[bytes], *, users: int, seconds: float, timeout_s: float
) -> list[Outcome]:
    """``users`` concurrent senders, each sending its next request when the last one ended."""
    start = time.perf_counter()
    outcomes: list[Outcome] = []

    async def user(number: int) -> None:
        i = number
        while time.perf_counter() - start < seconds:
            due = time.perf_counter() - start
            outcomes.append(
                await screen_once(client, payloads[i % len(payloads)], due_s=due, start=start, timeout_s=timeout_s)
            )
            i += users

    await asyncio.gather(*(user(n) for n in range(users)))
    return outcomes


async def open_loop(
    client: Any, payloads: Sequence[bytes], *, rate_per_s: float, seconds: float, timeout_s: float
) -> list[Outcome]:
    """Requests due at a fixed rate whatever the server does (open loop): lateness counts from the due time."""
    start = time.perf_counter()
    tasks = []
    total = int(rate_per_s * seconds)
    for i in range(total):
        due = i / rate_per_s
        delay = due - (time.perf_counter() - start)
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(
            asyncio.create_task(
                screen_once(client, payloads[i % len(payloads)], due_s=due, start=start, timeout_s=timeout_s)
            )
        )
    return list(await asyncio.gather(*tasks))


# --------------------------------------------------------------------------- server probes


def process_tree_rss_bytes(root_pid: int, proc: Path = Path("/proc")) -> int:
    """Resident memory of ``root_pid`` and every process in its process group (the tritonserver and its
    Python-backend stubs run in their own session); 0 when it is gone."""
    total = 0
    for status in proc.glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
            pgid = int(fields[2])  # after the name: state, ppid, pgrp
            if pgid != root_pid:
                continue
            rss_pages = int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        total += rss_pages * _page_size()
    return total


def _page_size() -> int:
    import os

    return os.sysconf("SC_PAGE_SIZE")


def shm_bytes(prefix: str, shm_dir: Path = Path("/dev/shm")) -> int:
    """Bytes of /dev/shm actually held (allocated blocks, not apparent size) by regions named ``prefix*``."""
    total = 0
    for path in shm_dir.glob(f"{prefix}*"):
        try:
            total += path.stat().st_blocks * 512
        except FileNotFoundError:
            continue
    return total


def executed_count(grpc_url: str, model: str, *, headers: dict[str, str] | None = None) -> int:
    """How many requests ``model`` has run (Triton's inference_count): what the server decoded."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(grpc_url) as raw:
        stats = raw.get_inference_statistics(model, headers=headers)
    return int(stats.model_stats[0].inference_count)


def first_step(repository: Path) -> str:
    """The name of the ensemble's first step in an assembled repository (fused or preprocess)."""
    from predilect.serving.triton_config import read_config

    config = read_config(repository / contract.ENSEMBLE / contract.CONFIG_FILENAME)
    return str(config.ensemble_scheduling.step[0].model_name)


class Sampler:
    """Calls ``probe`` every ``interval_s`` in a background thread; ``samples`` are (t_s, value) pairs."""

    def __init__(self, probe: Callable[[], dict[str, float]], *, interval_s: float) -> None:
        import threading

        self.probe, self.interval_s = probe, interval_s
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="predilect-sampler", daemon=True)
        self._start = time.perf_counter()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append({"t_s": round(time.perf_counter() - self._start, 1), **self.probe()})
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
