"""Tuning sweep of the served pipeline on this machine: one short Locust point per config.

    predilect bench sweep --users 16 --seconds-per-point 20

Every config changes one knob (or two that belong together) from the current defaults of
``ServingOptions``; the table it prints and writes is what the defaults were chosen from.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from predilect.benchmarks.locust_runner import run_locust
from predilect.benchmarks.triton_stats import interval_times, snapshot

# Knobs for a 2-core CPU host; each entry is applied on top of ServingOptions().
_SPLIT: dict[str, Any] = {"layout": "split"}
CONFIGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    # The three-step layout and its knobs (the defaults of the CPU profile before the fused layout).
    "split": {**_SPLIT},
    "split, preprocess x2, 1 decode thread": {**_SPLIT, "preprocess_instances": 2, "decode_threads": 1},
    "split, queue delay 0 us": {**_SPLIT, "max_queue_delay_us": 0},
    "split, classifier x2": {**_SPLIT, "classifier_instances": 2},
    # The fused layout (one process: preprocess + ONNX Runtime + sigmoid).
    "fused x1, decode 2, ort 2": {"layout": "fused", "fused_instances": 1, "decode_threads": 2, "ort_threads": 2},
    "fused x2, decode 1, ort 1": {"layout": "fused", "fused_instances": 2, "decode_threads": 1, "ort_threads": 1},
    "fused x2, decode 2, ort 1": {"layout": "fused", "fused_instances": 2, "decode_threads": 2, "ort_threads": 1},
    "fused x2, queue delay 0 us": {"layout": "fused", "fused_instances": 2, "max_queue_delay_us": 0},
    "fused x3, decode 1, ort 1": {"layout": "fused", "fused_instances": 3, "decode_threads": 1, "ort_threads": 1},
}


def noop_repository(onnx: Path, out_dir: Path, options: Any) -> Path:
    """The repository ``assemble`` writes for ``options``, every Python-backend step replaced by the no-op
    stand-in (``predilect.benchmarks.noop_backend``): configs unchanged, no ``model.onnx`` loaded."""
    from predilect import contract
    from predilect.benchmarks.noop_backend import SHIM
    from predilect.serving.repository import assemble

    repository = assemble(onnx, out_dir, options)
    for shim in sorted(repository.glob(f"*/{contract.TRITON_VERSION}/model.py")):
        shim.write_text(SHIM, encoding="utf-8")
        (shim.parent / contract.ONNX_FILENAME).unlink(missing_ok=True)
    return repository


def front_limit_bytes() -> int:
    """The request limit ``predilect serve`` gives its nginx front by default, in bytes."""
    from predilect.serving.serve_cli import DEFAULT_MAX_REQUEST_MB

    return int(DEFAULT_MAX_REQUEST_MB * 1024 * 1024)


def run_point(
    onnx: Path,
    overrides: dict[str, Any],
    *,
    users: int,
    seconds: int,
    images_list: Path,
    camera: Sequence[Path],
    work: Path,
    front: bool = False,
    noop: bool = False,
) -> dict[str, Any]:
    """Assemble with ``overrides``, serve, warm, load; the figures of one config.

    ``front``: through the nginx front ``predilect serve`` puts before tritonserver (its default request
    limit), not straight to tritonserver's gRPC port; ``noop``: the Python-backend steps replaced by the
    no-op stand-in (``noop_repository``). Besides Locust's figures, the CPU seconds the server's processes
    (tritonserver, its stubs, the front) used over the measured load, ``server_cpu_s``, and the
    statistics extension's per-model times.
    """
    from predilect import contract
    from predilect.benchmarks import machine
    from predilect.benchmarks.stacks import screen_grpc_all
    from predilect.serving.configs import ServingOptions
    from predilect.serving.repository import assemble
    from predilect.serving.server import TritonServer

    options = dataclasses.replace(ServingOptions(), **overrides)
    build = noop_repository if noop else assemble
    repository = build(onnx, work / "model_repository", options)
    with TritonServer.on_free_ports(
        model_repository=repository,
        log_path=work / "tritonserver.log",
        max_request_bytes=front_limit_bytes() if front else None,
    ) as server:
        screen_grpc_all(server.grpc_url, [p.read_bytes() for p in camera[:16]])
        stats_url = server.inner_grpc_url  # the statistics extension is closed at the front
        before, load_before = snapshot(stats_url), machine.load_average()
        cpu_before = machine.process_tree_cpu_s([server.pid, server.front_pid])
        result = run_locust(
            "TritonGrpcUser",
            server.grpc_url,
            users=users,
            run_time_s=seconds,
            images_list=images_list,
            csv_prefix=work / "csv" / f"sweep-{time.monotonic_ns()}",
        )
        cpu_s = machine.process_tree_cpu_s([server.pid, server.front_pid]) - cpu_before
        times = interval_times(before, snapshot(stats_url))
    served = next((t.requests for t in times if t.model == contract.ENSEMBLE), 0)
    return {
        "options": dataclasses.asdict(options),
        "front": front,
        "noop": noop,
        **result.to_dict(),
        "server_cpu_s": cpu_s,
        "served_requests": served,  # every request of the Locust run, spawn and stop included
        "load_before": load_before,
        "load_after": machine.load_average(),
        "triton_times": [t.to_dict() for t in times],
    }
