"""Run ``benchmarks/predilect/benchmarks/locustfile.py`` headless in subprocesses and read its CSV statistics.

Locust monkey-patches the standard library with gevent at import; it therefore never runs
in the calling process, only in ``python -m locust`` children (a master and workers on
loopback in distributed mode).
"""

from __future__ import annotations

import csv
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
_GRACE_S = 90  # start-up, spawn, stop and CSV writing on top of --run-time


class LocustRunError(RuntimeError):
    """Locust exited non-zero or wrote no statistics; the message ends with its output."""


@dataclass(frozen=True)
class LoadResult:
    """One load point: closed-loop ``users`` for the measured interval (after spawning)."""

    users: int
    requests: int
    failures: int
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    # CPU the load generator itself burnt, in cores (CPU seconds / wall seconds of its run):
    # on a shared machine it is capacity the server under test did not have.
    loadgen_cpu_cores: float = float("nan")
    # The same CPU in seconds, over the whole Locust process (start-up and stop included).
    loadgen_cpu_s: float = float("nan")

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "error_rate": self.error_rate}


def _environment(images_list: Path, timeout_s: float) -> dict[str, str]:
    env = dict(os.environ)  # sys.executable imports the predilect installed in its environment
    env["PREDILECT_BENCH_IMAGES"] = str(images_list)
    env["PREDILECT_BENCH_TIMEOUT_S"] = str(timeout_s)
    return env


def _common_args(user_class: str, host: str, *, users: int, run_time_s: int, csv_prefix: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        user_class,
        "--headless",
        "--host",
        host,
        "--users",
        str(users),
        "--spawn-rate",
        str(users),
        "--run-time",
        f"{run_time_s}s",
        "--csv",
        str(csv_prefix),
        "--reset-stats",
        "--only-summary",
        "--stop-timeout",
        "30",
        "--exit-code-on-error",
        "0",
        "--loglevel",
        "WARNING",
    ]


def read_stats(csv_prefix: Path, *, users: int) -> LoadResult:
    """The ``Aggregated`` row of ``<prefix>_stats.csv``."""
    path = Path(f"{csv_prefix}_stats.csv")
    if not path.is_file():
        raise LocustRunError(f"locust wrote no statistics at {path}")
    with path.open(newline="", encoding="utf-8") as f:
        row = next((r for r in csv.DictReader(f) if r["Name"] == "Aggregated"), None)
    if row is None:
        raise LocustRunError(f"{path} has no Aggregated row")

    def number(key: str) -> float:
        value = row.get(key, "")
        return float(value) if value not in ("", "N/A") else float("nan")

    return LoadResult(
        users=users,
        requests=int(number("Request Count")),
        failures=int(number("Failure Count")),
        requests_per_s=number("Requests/s"),
        p50_ms=number("50%"),
        p90_ms=number("90%"),
        p99_ms=number("99%"),
    )


def _check(process: subprocess.CompletedProcess, what: str) -> None:
    if process.returncode != 0:
        raise LocustRunError(f"{what} exited with {process.returncode}:\n{process.stdout[-3000:]}")


def run_locust(
    user_class: str,
    host: str,
    *,
    users: int,
    run_time_s: int,
    images_list: Path,
    csv_prefix: Path,
    request_timeout_s: float = 120.0,
) -> LoadResult:
    """One headless local run; blocks for about ``run_time_s`` (bounded by a hard timeout)."""
    csv_prefix.parent.mkdir(parents=True, exist_ok=True)
    command = _common_args(user_class, host, users=users, run_time_s=run_time_s, csv_prefix=csv_prefix)
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    limit_s = run_time_s + request_timeout_s + _GRACE_S
    try:
        process = subprocess.run(
            command,
            env=_environment(images_list, request_timeout_s),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=limit_s,
        )
    except subprocess.TimeoutExpired as e:  # subprocess.run has killed it
        raise LocustRunError(f"locust ({users} users) did not finish within {limit_s:.0f} s; it was stopped") from e
    wall_s, after = time.monotonic() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    _check(process, "locust")
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return replace(read_stats(csv_prefix, users=users), loadgen_cpu_cores=cpu_s / wall_s, loadgen_cpu_s=cpu_s)


def run_locust_distributed(
    user_class: str,
    host: str,
    *,
    users: int,
    run_time_s: int,
    images_list: Path,
    csv_prefix: Path,
    workers: int,
    master_port: int,
    request_timeout_s: float = 120.0,
) -> LoadResult:
    """A master and ``workers`` worker processes on loopback; the master writes the CSV."""
    csv_prefix.parent.mkdir(parents=True, exist_ok=True)
    env = _environment(images_list, request_timeout_s)
    master_cmd = _common_args(user_class, host, users=users, run_time_s=run_time_s, csv_prefix=csv_prefix) + [
        "--master",
        "--master-bind-host",
        "127.0.0.1",
        "--master-bind-port",
        str(master_port),
        "--expect-workers",
        str(workers),
        "--expect-workers-max-wait",
        "60",
    ]
    worker_cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        user_class,
        "--worker",
        "--master-host",
        "127.0.0.1",
        "--master-port",
        str(master_port),
        "--loglevel",
        "WARNING",
    ]
    hard_timeout = run_time_s + request_timeout_s + _GRACE_S + 60
    master = subprocess.Popen(
        master_cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    worker_procs = [
        subprocess.Popen(
            worker_cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(workers)
    ]
    try:
        output, _ = master.communicate(timeout=hard_timeout)
    except subprocess.TimeoutExpired as e:  # the finally below stops every process
        raise LocustRunError(f"locust master ({users} users) did not finish within {hard_timeout:.0f} s") from e
    finally:
        procs: list[subprocess.Popen[Any]] = [master, *worker_procs]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in worker_procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    _check(subprocess.CompletedProcess(master_cmd, master.returncode, output), "locust master")
    return read_stats(csv_prefix, users=users)
