"""What machine a benchmark ran on, for the report's header and file name."""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    match = re.search(r"MemTotal:\s+(\d+) kB", meminfo.read_text(encoding="utf-8"))
    return int(match.group(1)) / 2**20 if match else None


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def describe() -> str:
    memory = memory_gib()
    mem = f", {memory:.0f} GiB RAM" if memory else ""
    return (
        f"{cores()} cores ({cpu_model()}){mem}, no GPU used, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def add_report_folder(parser: Any) -> None:
    """``--out DIR`` (into ``args.out_dir``): the folder a benchmark's report goes into; ``--out-dir``, the
    spelling recorded runs used, is still read but not shown."""
    import argparse

    parser.add_argument(
        "--out",
        dest="out_dir",
        type=Path,
        default=Path("benchmarks/results"),
        metavar="DIR",
        help="folder the report (<name>.md, .json, plots) goes into (default benchmarks/results)",
    )
    parser.add_argument("--out-dir", dest="out_dir", type=Path, help=argparse.SUPPRESS)


def dated_name(what: str) -> str:
    """The default file stem of a benchmark's results: ``<date>-<what>`` (UTC date)."""
    import datetime as dt

    return f"{dt.datetime.now(dt.timezone.utc).date().isoformat()}-{what}"


def slug() -> str:
    """``<cores>core-<cpu model>``, lower-case, for file names."""
    model = re.sub(r"\(r\)|\(tm\)|cpu|@.*$", "", cpu_model().lower())
    model = re.sub(r"[^a-z0-9]+", "-", model).strip("-")[:40]
    return f"{cores()}core-{model}"


def load_average() -> tuple[float, float, float]:
    """1-, 5- and 15-minute load averages: how busy the (shared) machine was around a figure."""
    return os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3


def describe_load() -> str:
    one, five, fifteen = load_average()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min) on {cores()} cores"


def process_tree_cpu_s(pids: Sequence[int | None]) -> float:
    """CPU seconds (user + system) used so far by the processes ``pids`` and every live descendant of
    theirs (tritonserver's Python-backend stubs, nginx's workers); a process gone in between counts 0."""
    import psutil

    total, seen = 0.0, set()
    for pid in pids:
        if pid is None:
            continue
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for process in tree:
            if process.pid in seen:
                continue
            seen.add(process.pid)
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
    return total
