"""Does a 64-user Locust point against the real tritonserver finish? Which variant hangs, and where?

    .venv/bin/python experiments/2026-12-07-locust-64-users/hang.py OUTDIR VARIANT [VARIANT ...]

VARIANT: ``<users>:<seconds>:<mode>[:front]``; mode ``product`` (the product's locustfile as is: grpc's gevent
integration in the Locust process) or one of ``variants.py``'s (``gevent``, ``gevent-exit``, ``threadpool``). Each run: one locust subprocess with the gevent monitor thread on
(``GEVENT_MONITOR_THREAD_ENABLE``: it prints the stack of whatever blocks the hub over 1 s) and
faulthandler on SIGUSR1 (all threads), a wall limit of run-time + 60 s; on the limit it dumps the stacks
(SIGUSR1), waits 3 s, kills it. Prints one line per run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from predilect.benchmarks import payloads
from predilect.benchmarks.locust_runner import LOCUSTFILE, read_stats

VARIANTS = Path(__file__).resolve().parent / "variants.py"
from predilect.serving.configs import ServingOptions
from predilect.serving.repository import assemble
from predilect.serving.server import TritonServer

ONNX = Path("artifacts/onnx/model.onnx")
MANIFEST = Path("artifacts/phantom/manifest.csv")

WRAPPER = (
    "import faulthandler, signal, sys, runpy; faulthandler.register(signal.SIGUSR1, all_threads=True);"
    f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import exitprobe;"
    "sys.argv = ['locust'] + sys.argv[1:]; runpy.run_module('locust', run_name='__main__')"
)


def run_point(out: Path, url: str, users: int, seconds: int, mode: str, tag: str, images: Path) -> str:
    prefix = out / f"{tag}"
    env = dict(os.environ)
    env.update(
        PREDILECT_BENCH_IMAGES=str(images),
        PREDILECT_BENCH_TIMEOUT_S="120",
        GEVENT_MONITOR_THREAD_ENABLE="true",
        GEVENT_MAX_BLOCKING_TIME="1",
        PREDILECT_BENCH_GRPC_MODE=mode,
    )
    locustfile = LOCUSTFILE if mode == "product" else VARIANTS
    cmd = [sys.executable, "-c", WRAPPER, "-f", str(locustfile), "TritonGrpcUser", "--headless", "--host", url,
           "--users", str(users), "--spawn-rate", str(users), "--run-time", f"{seconds}s", "--csv", str(prefix),
           "--reset-stats", "--only-summary", "--stop-timeout", "30", "--exit-code-on-error", "0",
           "--loglevel", "WARNING"]
    log = (out / f"{tag}.log").open("wb")
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    limit = seconds + 45
    try:
        proc.wait(timeout=limit)
        wall = time.monotonic() - start
        try:
            stats = read_stats(prefix, users=users)
            what = f"finished rc={proc.returncode} in {wall:.0f} s: {stats.requests} requests, {stats.failures} failures, {stats.requests_per_s:.1f}/s, p50 {stats.p50_ms:.0f} p99 {stats.p99_ms:.0f} ms"
        except Exception as e:  # noqa: BLE001 - a record, not product code
            what = f"finished rc={proc.returncode} in {wall:.0f} s, no stats: {e}"
    except subprocess.TimeoutExpired:
        gdb = subprocess.run(
            ["gdb", "-p", str(proc.pid), "-batch", "-ex", "thread apply all bt 30"],
            capture_output=True, text=True, timeout=120,
        )
        (out / f"{tag}.gdb.txt").write_text(gdb.stdout + gdb.stderr)
        proc.send_signal(signal.SIGUSR1)
        time.sleep(3)
        proc.kill()
        proc.wait()
        what = f"HUNG: not finished after {limit} s (stacks in {tag}.log)"
    log.close()
    load = os.getloadavg()[0]
    return f"{tag}: users {users} run-time {seconds}s mode {mode}: {what} (load {load:.1f})"


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    variants = sys.argv[2:]
    camera = payloads.heldout_images(MANIFEST, limit=180)
    images = payloads.write_list(camera, out / "camera.txt")
    repo = out / "repo"
    if not repo.is_dir():
        assemble(ONNX, repo, ServingOptions())
    for front in (False, True):
        mine = [v for v in variants if v.endswith(":front") == front]
        if not mine:
            continue
        with TritonServer.on_free_ports(
            model_repository=repo, log_path=out / f"tritonserver-front{int(front)}.log",
            max_request_bytes=32 * 1024 * 1024 if front else None,
        ) as server:
            for k, v in enumerate(mine):
                users, seconds, mode = v.split(":")[:3]
                tag = f"{k}-{users}u-{mode}{'-front' if front else ''}"
                print(run_point(out, server.grpc_url, int(users), int(seconds), mode, tag, images), flush=True)


if __name__ == "__main__":
    main()
