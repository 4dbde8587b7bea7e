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


def run_point(
    onnx: Path,
    overrides: dict[str, Any],
    *,
    users: int,
    seconds: int,
    images_list: Path,
    camera: Sequence[Path],
    work: Path,
) -> dict[str, Any]:
    """Assemble with ``overrides``, serve, warm, load; the figures of one config."""
    from predilect.benchmarks.stacks import screen_grpc_all
    from predilect.serving.configs import ServingOptions
    from predilect.serving.repository import assemble
    from predilect.serving.server import TritonServer

    options = dataclasses.replace(ServingOptions(), **overrides)
    repository = assemble(onnx, work / "model_repository", options)
    with TritonServer.on_free_ports(
        model_repository=repository,
        log_path=work / "tritonserver.log",
    ) as server:
        screen_grpc_all(server.grpc_url, [p.read_bytes() for p in camera[:16]])
        before = snapshot(server.grpc_url)
        result = run_locust(
            "TritonGrpcUser",
            server.grpc_url,
            users=users,
            run_time_s=seconds,
            images_list=images_list,
            csv_prefix=work / "csv" / f"sweep-{time.monotonic_ns()}",
        )
        times = interval_times(before, snapshot(server.grpc_url))
    return {"options": dataclasses.asdict(options), **result.to_dict(), "triton_times": [t.to_dict() for t in times]}
