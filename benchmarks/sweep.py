"""Tuning sweep of the served pipeline on this machine: one short Locust point per config.

    python -m predilect.benchmarks.sweep --onnx artifacts/onnx/model.onnx \
        --manifest artifacts/phantom/manifest.csv --users 16 --seconds-per-point 20

Every config changes one knob (or two that belong together) from the current defaults of
``ServingOptions``; the table it prints and writes is what the defaults were chosen from.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from predilect.artifacts import default_artifacts
from predilect.benchmarks import machine, payloads
from predilect.benchmarks.locust_runner import run_locust
from predilect.benchmarks.triton_stats import interval_times, snapshot

# Knobs for a 2-core CPU host; each entry is applied on top of ServingOptions().
CONFIGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "preprocess x2, 1 decode thread": {"preprocess_instances": 2, "decode_threads": 1},
    "decode threads 1": {"decode_threads": 1},
    "ort threads 1": {"ort_threads": 1},
    "queue delay 0 us": {"max_queue_delay_us": 0},
    "queue delay 10 ms": {"max_queue_delay_us": 10_000},
    "max batch 8, preferred 4,8": {"max_batch_size": 8, "preferred_batch_sizes": (4, 8)},
    "classifier x2, ort threads 1": {"classifier_instances": 2, "ort_threads": 1},
    # Second round: the winners of the first combined.
    "ort 1 + preprocess x2, decode 1": {"ort_threads": 1, "preprocess_instances": 2, "decode_threads": 1},
    "ort 1 + queue delay 10 ms": {"ort_threads": 1, "max_queue_delay_us": 10_000},
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
    from predilect.serving.server import TritonServer, free_port

    options = dataclasses.replace(ServingOptions(), **overrides)
    repository = assemble(onnx, work / "model_repository", options)
    with TritonServer(
        model_repository=repository,
        grpc_port=free_port(),
        http_port=free_port(),
        metrics_port=free_port(),
        bind_address="127.0.0.1",
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m predilect.benchmarks.sweep", description=__doc__.splitlines()[0])
    p.add_argument("--onnx", type=Path, default=default_artifacts().onnx)
    p.add_argument("--manifest", type=Path, default=default_artifacts().manifest)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--seconds-per-point", type=int, default=20)
    p.add_argument("--only", nargs="*", default=None, help="config names to run (default: all)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/sweep.json"))
    p.add_argument("--workdir", type=Path, default=Path("/tmp/predilect-sweep"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    camera = payloads.heldout_images(args.manifest, limit=args.images)
    images_list = payloads.write_list(camera, args.workdir / "camera.txt")
    rows = {}
    for name, overrides in CONFIGS.items():
        if args.only and name not in args.only:
            continue
        row = run_point(
            args.onnx,
            overrides,
            users=args.users,
            seconds=args.seconds_per_point,
            images_list=images_list,
            camera=camera,
            work=args.workdir,
        )
        rows[name] = row
        batches = {t["model"]: round(t["mean_batch"], 1) for t in row["triton_times"]}
        print(
            f"{name:<32} {row['requests_per_s']:6.1f} images/s  p50 {row['p50_ms']:5.0f} ms  "
            f"p99 {row['p99_ms']:5.0f} ms  errors {row['error_rate']:.1%}  batches {batches}",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": machine.describe(),
                "users": args.users,
                "seconds_per_point": args.seconds_per_point,
                "onnx": str(args.onnx),
                "configs": rows,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
