"""NVIDIA's perf_analyzer (the KServe load tool a Triton user reaches for first) through the front.

Against `predilect serve`'s defaults (nginx in front, gRPC, no token: perf_analyzer sends no gRPC
headers), it must complete every measurement with no failed request: a GOAWAY from the front
(nginx's default ``keepalive_requests`` ends each connection after 1,000 requests) made it abort
with "Thread [0] had error: GOAWAY received ... Failed to maintain requested inference load".
The binary ships in the tritonclient 2.51 wheel (``make install`` puts it in
``.venv/perf-analyzer``). ``--stability-percentage 100``: this shared machine's load varies too
much for perf_analyzer's default 10 %, and a measurement it calls unstable is not an error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from predilect import contract
from predilect.serving.server import TritonServer

PERF_ANALYZER_DIR = Path(sys.prefix) / "perf-analyzer"
PERF_ANALYZER = PERF_ANALYZER_DIR / "bin" / "perf_analyzer"


@pytest.fixture(scope="module")
def perf_analyzer() -> tuple[Path, dict[str, str]]:
    """The perf_analyzer binary and the environment it runs in (its libcudart from PyPI)."""
    if not PERF_ANALYZER.is_file():
        pytest.fail(f"no perf_analyzer at {PERF_ANALYZER}: `make install` installs it (tritonclient 2.51's wheel)")
    libs = PERF_ANALYZER_DIR / "nvidia" / "cuda_runtime" / "lib"
    return PERF_ANALYZER, dict(os.environ, LD_LIBRARY_PATH=f"{libs}:{os.environ.get('LD_LIBRARY_PATH', '')}")


@pytest.fixture(scope="module")
def served(
    tritonserver: type[TritonServer], model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    """`predilect serve`'s defaults: the front with its 32 MiB limit, gRPC only, no token."""
    with tritonserver.on_free_ports(
        model_repository=model_repository,
        http=False,
        max_request_bytes=32 * 1024 * 1024,
        log_path=tmp_path_factory.mktemp("perf-analyzer-log") / "tritonserver.log",
        startup_timeout_s=180,
    ) as server:
        yield server


@pytest.mark.parametrize(
    "concurrency,levels,window_ms",
    [
        pytest.param("4", 1, 3000, id="c4-3s"),
        pytest.param("1:16:4", 4, 30000, id="c1-16-30s", marks=pytest.mark.bench),  # 1, 5, 9, 13
    ],
)
def test_perf_analyzer_completes_without_errors_when_run_through_the_front(
    perf_analyzer: tuple[Path, dict[str, str]],
    served: TritonServer,
    fundus_jpeg,
    tmp_path: Path,
    concurrency: str,
    levels: int,
    window_ms: int,
) -> None:
    binary, env = perf_analyzer
    jpeg = fundus_jpeg(11, size=(512, 384))
    data = tmp_path / "input.json"
    data.write_text(json.dumps({"data": [{contract.IMAGE: {"content": list(jpeg), "shape": [len(jpeg)]}}]}))
    report = tmp_path / "report.csv"
    run = subprocess.run(
        [
            str(binary),
            "-m",
            contract.ENSEMBLE,
            "-i",
            "grpc",
            "-u",
            served.grpc_url,
            "--input-data",
            str(data),
            "--concurrency-range",
            concurrency,
            "--measurement-interval",
            str(window_ms),
            "--stability-percentage",
            "100",
            "-f",
            str(report),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=3000,
    )
    said = run.stdout + run.stderr
    print(said)  # perf_analyzer's own report: pytest -s shows it (docs/RELIABILITY.md quotes a run)
    assert run.returncode == 0, said[-3000:]
    assert "error" not in said.lower(), said[-3000:]
    rows = report.read_text().splitlines()[1:]
    assert len(rows) == levels and all(float(row.split(",")[1]) > 0 for row in rows), report.read_text()
