"""`predilect bench`: concurrency sweep of the Triton ensemble against its baselines, one run.

(a) in-process bound (decode + preprocess + ONNX Runtime, no server), (b) FastAPI + PyTorch
eager driven by Locust over HTTP, (c) the Triton ensemble driven by Locust through the gRPC
client SDK: same images, same concurrency points, one after the other on this machine.
Writes ``<out-dir>/<date>-<machine>.md`` with PNG plots and the raw figures as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from predilect.artifacts import default_artifacts
from predilect.benchmarks import machine, payloads, report
from predilect.benchmarks.locust_runner import LoadResult, run_locust, run_locust_distributed
from predilect.cli import CommandError, command

HEADLINE_USERS = 16
MIX_USERS = 16


ARTIFACTS = default_artifacts()


def _users(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"users must be positive integers like 1,4,16, got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predilect bench", description=__doc__.splitlines()[0])
    p.add_argument("--onnx", type=Path, default=ARTIFACTS.onnx, help="exported model")
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="checkpoint for baseline (b); default: the artefact checkpoint if present",
    )
    p.add_argument(
        "--model-repository",
        type=Path,
        default=None,
        help="serve this repository as is (default: assemble --onnx with the tuned defaults)",
    )
    p.add_argument(
        "--manifest",
        type=Path,
        default=ARTIFACTS.manifest,
        help="phantom manifest: held-out images are the camera payloads and give AUROC checks",
    )
    p.add_argument("--images", type=int, default=180, help="camera-size images sent round-robin (the held-out split)")
    p.add_argument("--users", type=_users, default=[1, 2, 4, 8, 16, 32, 64], help="concurrency points, e.g. 1,4,16")
    p.add_argument("--seconds-per-point", type=int, default=20)
    p.add_argument("--locust-workers", type=int, default=0, help="0: one local locust process; N: master + N workers")
    p.add_argument("--no-baseline", action="store_true", help="skip baseline (b)")
    p.add_argument("--no-mix", action="store_true", help="skip the mixed 1.5-6 MP point")
    p.add_argument(
        "--quick", action="store_true", help="CI smoke: 2 rendered images, users 1,2, 3 s per point, no mix, no AUROC"
    )
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--name", default=None, help="report name (default: <date>-<machine>)")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a new temp folder)")
    return p


def _apply_quick(args: argparse.Namespace) -> None:
    args.users, args.seconds_per_point, args.images, args.no_mix = [1, 2], 3, 2, True


def _camera_payloads(args: argparse.Namespace, work: Path) -> tuple[list[Path], str, bool]:
    """(paths, label, have_labels): held-out phantom images when the manifest exists, else rendered ones."""
    if args.manifest.is_file() and not args.quick:
        paths = payloads.heldout_images(args.manifest, limit=args.images)
        return paths, f"{len(paths)} held-out phantom JPEGs from {args.manifest}", True
    width, height = payloads.CAMERA_SIZE
    paths = payloads.render_set(work / "camera", count=args.images, sizes=[payloads.CAMERA_SIZE])
    return paths, f"{len(paths)} rendered phantom JPEGs at {width}x{height}", False


def _load(
    args: argparse.Namespace, user_class: str, host: str, users: int, images_list: Path, csv_prefix: Path
) -> LoadResult:
    if args.locust_workers:
        from predilect.serving.server import free_port

        return run_locust_distributed(
            user_class,
            host,
            users=users,
            run_time_s=args.seconds_per_point,
            images_list=images_list,
            csv_prefix=csv_prefix,
            workers=args.locust_workers,
            master_port=free_port(),
        )
    return run_locust(
        user_class, host, users=users, run_time_s=args.seconds_per_point, images_list=images_list, csv_prefix=csv_prefix
    )


def _sweep_triton(args, server, camera_list: Path, work: Path) -> list[dict[str, Any]]:
    from predilect.benchmarks.triton_stats import interval_times, snapshot

    points = []
    for users in args.users:
        before = snapshot(server.grpc_url)
        result = _load(args, "TritonGrpcUser", server.grpc_url, users, camera_list, work / "csv" / f"triton-{users}")
        times = interval_times(before, snapshot(server.grpc_url))
        points.append({**result.to_dict(), "triton_times": [t.to_dict() for t in times]})
        print(
            f"  (c) triton   users {users:>3}: {result.requests_per_s:6.1f} images/s  p50 {result.p50_ms:6.0f} ms"
            f"  p99 {result.p99_ms:6.0f} ms  errors {result.error_rate:.1%}",
            flush=True,
        )
    return points


def _sweep_baseline(args, url: str, camera_list: Path, work: Path) -> list[dict[str, Any]]:
    points = []
    for users in args.users:
        result = _load(args, "BaselineHttpUser", url, users, camera_list, work / "csv" / f"baseline-{users}")
        points.append(result.to_dict())
        print(
            f"  (b) baseline users {users:>3}: {result.requests_per_s:6.1f} images/s  p50 {result.p50_ms:6.0f} ms"
            f"  p99 {result.p99_ms:6.0f} ms  errors {result.error_rate:.1%}",
            flush=True,
        )
    return points


def _auroc(answers, manifest: Path, count: int) -> float:
    from predilect.benchmarks.stacks import answers_matrix
    from predilect.training.manifest import label_matrix, read_manifest
    from predilect.training.metrics import macro_auroc

    records = read_manifest(manifest, split="test")[:count]
    ids = list(answers[0])
    return macro_auroc(label_matrix(records), answers_matrix(answers, ids), ids)


def _run_triton(args, results: dict, camera: list[Path], lists: dict[str, Path], work: Path, labelled: bool) -> None:
    from predilect.benchmarks.stacks import screen_grpc_all
    from predilect.serving.repository import assemble
    from predilect.serving.server import TritonServer, free_port

    repository = args.model_repository or assemble(args.onnx, work / "model_repository")
    print(f"(c) starting tritonserver on {repository}", flush=True)
    with TritonServer(
        model_repository=repository,
        grpc_port=free_port(),
        http_port=free_port(),
        metrics_port=free_port(),
        bind_address="127.0.0.1",
        log_path=work / "tritonserver.log",
    ) as server:
        answers = screen_grpc_all(server.grpc_url, [p.read_bytes() for p in camera])  # warm-up
        if labelled:
            results["accuracy"][report.STACK_TRITON] = _auroc(answers, args.manifest, len(camera))
        results["sweeps"][report.STACK_TRITON] = _sweep_triton(args, server, lists["camera"], work)
        if "mix" in lists:
            result = _load(
                args, "TritonGrpcUser", server.grpc_url, MIX_USERS, lists["mix"], work / "csv" / "triton-mix"
            )
            results["mix"][report.STACK_TRITON] = result.to_dict()


def _run_baseline(args, results: dict, camera: list[Path], lists: dict[str, Path], work: Path, labelled: bool) -> None:
    from predilect.benchmarks.stacks import baseline_server, screen_http_all
    from predilect.serving.server import free_port

    print(f"(b) starting the FastAPI + PyTorch baseline on {args.checkpoint}", flush=True)
    with baseline_server(args.checkpoint, port=free_port(), log_path=work / "baseline.log") as url:
        answers = screen_http_all(url, [p.read_bytes() for p in camera])  # warm-up
        if labelled:
            results["accuracy"][report.STACK_BASELINE] = _auroc(answers, args.manifest, len(camera))
        results["sweeps"][report.STACK_BASELINE] = _sweep_baseline(args, url, lists["camera"], work)
        if "mix" in lists:
            result = _load(args, "BaselineHttpUser", url, MIX_USERS, lists["mix"], work / "csv" / "baseline-mix")
            results["mix"][report.STACK_BASELINE] = result.to_dict()


def _run_inprocess(args, results: dict, camera: list[Path]) -> None:
    from predilect.benchmarks.inprocess import run_inprocess

    print("(a) in-process bound", flush=True)
    bound = run_inprocess(args.onnx, [p.read_bytes() for p in camera], duration_s=args.seconds_per_point)
    results["inprocess"] = {**dataclasses.asdict(bound), "images_per_s": bound.images_per_s}
    print(f"  (a) in-process: {bound.images_per_s:.1f} images/s", flush=True)


def _setup(args: argparse.Namespace) -> dict[str, Any]:
    from importlib.metadata import version

    from predilect.serving.configs import ServingOptions
    from predilect.serving.repository import read_served_model

    served = read_served_model(args.onnx)
    options = "as in " + str(args.model_repository) if args.model_repository else str(ServingOptions())
    return {
        "onnx": str(args.onnx),
        "model_version": served.model_version,
        "decoder": served.preprocess.decoder,
        "serving_options": options,
        "locust_version": version("locust"),
        "seconds_per_point": args.seconds_per_point,
        "users": args.users,
        "headline_users": HEADLINE_USERS if HEADLINE_USERS in args.users else args.users[-1],
        "locust_workers": args.locust_workers,
    }


def _resolve_checkpoint(args: argparse.Namespace) -> None:
    default = ARTIFACTS.checkpoint
    if args.checkpoint is None and default.is_file() and not args.quick:
        args.checkpoint = default
    if args.no_baseline:
        args.checkpoint = None


def run(args: argparse.Namespace, work: Path, argv: Sequence[str]) -> Path:
    """The whole benchmark; returns the report path."""
    if args.quick:
        _apply_quick(args)
    _resolve_checkpoint(args)
    if not args.onnx.is_file():
        raise CommandError(f"no exported model at {args.onnx}; run `make demo` or pass --onnx")
    now = dt.datetime.now(dt.timezone.utc)
    camera, camera_label, labelled = _camera_payloads(args, work)
    lists = {"camera": payloads.write_list(camera, work / "camera.txt")}
    results: dict[str, Any] = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "command": "predilect bench " + shlex.join(argv),
        "machine": {"description": machine.describe(), "slug": machine.slug()},
        "setup": _setup(args),
        "payloads": {"camera": {"label": camera_label}},
        "sweeps": {},
        "mix": {},
        "accuracy": {},
        "notes": [],
    }
    if not args.no_mix:
        mix = payloads.render_set(work / "mix", count=8, sizes=payloads.MIX_SIZES)
        lists["mix"] = payloads.write_list(mix, work / "mix.txt")
        results["payloads"]["mix"] = {
            "label": "8 rendered phantom JPEGs, "
            + ", ".join(f"{w}x{h} ({w * h / 1e6:.1f} MP)" for w, h in payloads.MIX_SIZES)
        }
    _run_inprocess(args, results, camera)
    _run_triton(args, results, camera, lists, work, labelled)
    if args.checkpoint is not None:
        _run_baseline(args, results, camera, lists, work, labelled)
    else:
        results["notes"].append("baseline (b) not run: no --checkpoint")
    name = args.name or f"{now:%Y-%m-%d}-{machine.slug()}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return report.write_report(results, args.out_dir, name)


@command("bench")
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    start = time.monotonic()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        path = run(args, args.workdir, argv)
    else:
        with tempfile.TemporaryDirectory(prefix="predilect-bench-") as tmp:
            path = run(args, Path(tmp), argv)
    print(f"report: {path} ({time.monotonic() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
