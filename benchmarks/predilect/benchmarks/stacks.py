"""The baselines under test, started and warmed for a benchmark: FastAPI + PyTorch (b) and BentoML (d)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

BENTO_ONNX_ENV = "PREDILECT_BENTO_ONNX"
BENTO_THREADS_ENV = "PREDILECT_BENTO_THREADS"


class BaselineStartError(RuntimeError):
    """The baseline server exited or did not answer ``/health``; the message ends with its output."""


@contextlib.contextmanager
def baseline_server(
    checkpoint: Path, *, port: int, log_path: Path, torch_threads: int = 2, startup_timeout_s: float = 120.0
) -> Iterator[str]:
    """Run the FastAPI + PyTorch baseline in a subprocess; yields its base URL."""
    env = dict(os.environ)  # sys.executable imports the predilect installed in its environment
    command = [
        sys.executable,
        "-m",
        "predilect.cli",
        "bench",
        "baseline-server",
        "--checkpoint",
        str(checkpoint),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--torch-threads",
        str(torch_threads),
    ]
    yield from _serve(command, env, f"http://127.0.0.1:{port}", log_path, startup_timeout_s, health="/health")


@contextlib.contextmanager
def bento_server(
    onnx_path: Path, *, port: int, log_path: Path, threads: int = 2, startup_timeout_s: float = 180.0
) -> Iterator[str]:
    """Run the BentoML baseline (``bento_service.Screening``) with ``bentoml serve``; yields its base URL."""
    env = dict(os.environ)
    env[BENTO_ONNX_ENV] = str(Path(onnx_path).resolve())
    env[BENTO_THREADS_ENV] = str(threads)
    env.setdefault("BENTOML_HOME", str(log_path.parent / "bentoml-home"))
    env["BENTOML_DO_NOT_TRACK"] = "True"
    command = [sys.executable, "-m", "bentoml", "serve", "predilect.benchmarks.bento_service:Screening"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    yield from _serve(command, env, f"http://127.0.0.1:{port}", log_path, startup_timeout_s, health="/healthz")


def _serve(
    command: list[str], env: dict[str, str], url: str, log_path: Path, timeout_s: float, *, health: str
) -> Iterator[str]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            _wait_healthy(process, url, log_path, timeout_s, health=health)
            yield url
        finally:
            _stop_group(process)


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (its workers too), then SIGKILL what is left after 30 s."""
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _wait_healthy(
    process: subprocess.Popen, url: str, log_path: Path, timeout_s: float, *, health: str = "/health"
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BaselineStartError(
                f"baseline server exited with {process.returncode}:\n{log_path.read_text(errors='replace')[-2000:]}"
            )
        try:
            method = "POST" if health == "/healthz" else "GET"  # BentoML APIs are POST routes
            request = urllib.request.Request(f"{url}{health}", data=b"{}" if method == "POST" else None, method=method)
            request.add_header("Content-Type", "application/json")
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise BaselineStartError(f"baseline server not healthy after {timeout_s:.0f} s; log {log_path}")


def screen_http(url: str, payload: bytes, *, timeout_s: float = 120.0) -> dict[str, float]:
    """One baseline request; its probabilities by disease id."""
    request = urllib.request.Request(
        f"{url}/screen", data=payload, method="POST", headers={"Content-Type": "application/octet-stream"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())["probabilities"]


def screen_bento(url: str, payload: bytes, *, timeout_s: float = 120.0) -> dict[str, float]:
    """One BentoML baseline request; its probabilities by disease id."""
    from predilect.benchmarks.multipart import CONTENT_TYPE, multipart_image

    request = urllib.request.Request(
        f"{url}/screen",
        data=multipart_image(payload),
        method="POST",
        headers={"Content-Type": CONTENT_TYPE},
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        (answer,) = json.loads(response.read())
    if not isinstance(answer, dict):
        raise BaselineStartError(f"the BentoML baseline refused a benchmark image: {answer}")
    return answer


def screen_bento_all(url: str, payloads: Sequence[bytes], *, concurrency: int = 4) -> list[dict[str, float]]:
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda p: screen_bento(url, p), payloads))


def screen_grpc_all(grpc_url: str, payloads: Sequence[bytes], *, concurrency: int = 4) -> list[dict[str, float]]:
    """Screen every payload on the Triton ensemble through the client SDK (warm-up and answers)."""
    from predilect.client import ScreeningClient

    with ScreeningClient(grpc_url, timeout_s=120) as client, ThreadPoolExecutor(concurrency) as pool:
        return [r.scores for r in pool.map(client.screen, payloads)]


def screen_http_all(url: str, payloads: Sequence[bytes], *, concurrency: int = 4) -> list[dict[str, float]]:
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda p: screen_http(url, p), payloads))


def answers_matrix(answers: Sequence[dict[str, float]], ids: Sequence[str]) -> np.ndarray:
    return np.array([[a[d] for d in ids] for a in answers], dtype=np.float64)
