"""`predilect bench`: the CPU profile measured side by side in one run, or one of its sub-benchmarks.

    predilect bench [serving] [options]     # the whole comparison (what `make bench` runs)
    predilect bench decoders [options]      # preprocessing vs the decode floor; AUROC per decoder
    predilect bench sweep [options]         # one Locust point per serving config
    predilect bench gap [options]           # the bound vs served gap, part by part (front, no-op step, batcher)
    predilect bench baseline-server ...     # run the FastAPI + PyTorch baseline alone
    predilect bench overload [options]      # open-loop load at 2x capacity (docs/RELIABILITY.md)
    predilect bench soak [options]          # minutes at saturation, server memory and /dev/shm over time
    predilect bench large [options]         # what oversized gRPC requests leave in server memory
    predilect bench http-body [options]     # does tritonserver survive an HTTP body of N MB?
    predilect bench heatmaps [options]      # HEATMAPS served vs not, asked vs not
    predilect bench localisation-variants   # which attention-derived heatmap peaks on the lesions
    predilect bench cameras [options]       # served AUROC and gradable share per camera of the zoo, over seeds

`serving`, one stack after the other on this machine, same images, same concurrency points:
(a) the in-process bound (the served computation: decode, grade, ONNX Runtime, decide; no server); (c) the Triton
ensemble in the default layout through the gRPC client SDK, plus single points for the other
layout and for INT8; (b) FastAPI + PyTorch eager; (d) BentoML serving the same Preprocessor
and ONNX model. Also: preprocessing ms/image against the decode floor, the INT8 accuracy gate.
Writes ``<out-dir>/<date>-<machine>.md`` with PNG plots and the raw figures as JSON (``make bench``:
``benchmarks/results/cpu-profile/``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib
import json
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from predilect.artifacts import default_artifacts
from predilect.benchmarks import machine, payloads, report
from predilect.benchmarks.locust_runner import LoadResult, LocustRunError, run_locust, run_locust_distributed
from predilect.benchmarks.workdirs import in_workdir
from predilect.cli import CommandError, command

HEADLINE_USERS = 16
MIX_USERS = 16
SUBCOMMANDS = {
    "decoders": "predilect.benchmarks.decoders_cli",
    "sweep": "predilect.benchmarks.sweep_cli",
    "gap": "predilect.benchmarks.gap_cli",
    "baseline-server": "predilect.benchmarks.baseline_server_cli",
    "overload": "predilect.benchmarks.overload_cli",
    "soak": "predilect.benchmarks.soak_cli",
    "large": "predilect.benchmarks.large_requests_cli",
    "http-body": "predilect.benchmarks.http_body_cli",
    "heatmaps": "predilect.benchmarks.heatmaps_cli",
    "localisation-variants": "predilect.benchmarks.localisation_variants_cli",
    "cameras": "predilect.benchmarks.cameras_cli",
}

ARTIFACTS = default_artifacts()


def _users(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"users must be positive integers like 1,4,16, got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="predilect bench [serving]", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--onnx", type=Path, default=ARTIFACTS.onnx, help="exported model")
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="checkpoint for baseline (b); default: the artefact one if present",
    )
    p.add_argument(
        "--model-repository",
        type=Path,
        default=None,
        help="serve this repository as is for (c) (default: assemble --onnx with the defaults)",
    )
    p.add_argument(
        "--manifest",
        type=Path,
        default=ARTIFACTS.manifest,
        help="phantom manifest: held-out images are the camera payloads and give AUROC checks",
    )
    p.add_argument("--images", type=int, default=180, help="camera-size images sent round-robin (the held-out split)")
    p.add_argument("--users", type=_users, default=[1, 4, 16, 64], help="concurrency points, e.g. 1,4,16")
    p.add_argument("--seconds-per-point", type=int, default=20, help="seconds each concurrency point runs (default 20)")
    p.add_argument("--locust-workers", type=int, default=0, help="0: one local locust process; N: master + N workers")
    p.add_argument("--no-baseline", action="store_true", help="skip baseline (b), FastAPI + PyTorch")
    p.add_argument("--no-bento", action="store_true", help="skip baseline (d), BentoML")
    p.add_argument("--no-layouts", action="store_true", help="skip the other layout's point")
    p.add_argument("--no-int8", action="store_true", help="skip INT8 (quantize if no gated model, then serve it)")
    p.add_argument("--no-preprocess", action="store_true", help="skip preprocessing vs the decode floor")
    p.add_argument("--no-mix", action="store_true", help="skip the mixed 1.5-6 MP point")
    p.add_argument(
        "--quick", action="store_true", help="CI smoke: 2 rendered images, users 1,2, 3 s per point, no mix, no AUROC"
    )
    machine.add_report_folder(p)
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
) -> dict[str, Any]:
    """One load point, with the machine's load average before and after it; a load generator that
    fails or stalls leaves a point with no measurement and its reason (``failed``), not a traceback."""
    before = machine.load_average()
    try:
        result = _run_load(args, user_class, host, users, images_list, csv_prefix)
    except LocustRunError as e:
        nan = float("nan")
        result = LoadResult(users=users, requests=0, failures=0, requests_per_s=nan, p50_ms=nan, p90_ms=nan, p99_ms=nan)
        return {**result.to_dict(), "failed": str(e), "load_before": before, "load_after": machine.load_average()}
    return {**result.to_dict(), "load_before": before, "load_after": machine.load_average()}


def _run_load(
    args: argparse.Namespace, user_class: str, host: str, users: int, images_list: Path, csv_prefix: Path
) -> LoadResult:
    result: LoadResult
    if args.locust_workers:
        from predilect.serving.server import free_port

        result = run_locust_distributed(
            user_class,
            host,
            users=users,
            run_time_s=args.seconds_per_point,
            images_list=images_list,
            csv_prefix=csv_prefix,
            workers=args.locust_workers,
            master_port=free_port(),
        )
    else:
        result = run_locust(
            user_class,
            host,
            users=users,
            run_time_s=args.seconds_per_point,
            images_list=images_list,
            csv_prefix=csv_prefix,
        )
    return result


def _print_point(stack: str, point: dict[str, Any]) -> None:
    if "failed" in point:
        print(f"  {stack:<28} users {point['users']:>3}: no measurement: {point['failed']}", flush=True)
        return
    print(
        f"  {stack:<28} users {point['users']:>3}: {point['requests_per_s']:6.1f} images/s  "
        f"p50 {point['p50_ms']:6.0f} ms  p99 {point['p99_ms']:6.0f} ms  errors {point['error_rate']:.1%}  "
        f"load generator {point['loadgen_cpu_cores']:.2f} cores  load {point['load_before'][0]:.1f}",
        flush=True,
    )


def _auroc(answers, manifest: Path, count: int) -> float:
    from predilect.benchmarks.stacks import answers_matrix
    from predilect.manifest import label_matrix, read_manifest
    from predilect.metrics import macro_auroc

    records = read_manifest(manifest, split="test")[:count]
    ids = list(answers[0])
    return macro_auroc(label_matrix(records), answers_matrix(answers, ids), ids)


@dataclasses.dataclass
class _Run:
    """What one benchmark run shares between its stacks."""

    args: argparse.Namespace
    work: Path
    camera: list[Path]
    lists: dict[str, Path]
    labelled: bool
    results: dict[str, Any]

    def sweep(self, stack: str, user_class: str, host: str, users: Sequence[int]) -> list[dict[str, Any]]:
        points = []
        for n in users:
            point = _load(self.args, user_class, host, n, self.lists["camera"], self.work / "csv" / f"{stack}-{n}")
            _print_point(stack, point)
            points.append(point)
        return points

    def accuracy(self, stack: str, answers: list[dict[str, float]]) -> None:
        if self.labelled:
            self.results["accuracy"][stack] = _auroc(answers, self.args.manifest, len(self.camera))

    def mix(self, stack: str, user_class: str, host: str) -> None:
        if "mix" in self.lists:
            self.results["mix"][stack] = _load(
                self.args, user_class, host, MIX_USERS, self.lists["mix"], self.work / "csv" / f"{stack}-mix"
            )


def _triton(repository: Path, work: Path, name: str) -> AbstractContextManager[Any]:
    from predilect.serving.server import TritonServer

    return TritonServer.on_free_ports(
        model_repository=repository,
        log_path=work / f"tritonserver-{name}.log",
    )


def _triton_stack(run: _Run, stack: str, options: Any, users: Sequence[int], *, mix: bool) -> None:
    from predilect.benchmarks.stacks import screen_grpc_all
    from predilect.benchmarks.triton_stats import interval_times, snapshot
    from predilect.serving.repository import assemble

    args = run.args
    if stack == report.STACK_TRITON and args.model_repository:
        repository = args.model_repository
    else:
        repository = assemble(args.onnx, run.work / f"repo-{stack}", options)
    print(f"{stack}: starting tritonserver on {repository}", flush=True)
    with _triton(repository, run.work, stack) as server:
        run.accuracy(stack, screen_grpc_all(server.grpc_url, [p.read_bytes() for p in run.camera]))  # warm-up
        points = []
        for n in users:
            before = snapshot(server.grpc_url)
            point = _load(
                args, "TritonGrpcUser", server.grpc_url, n, run.lists["camera"], run.work / "csv" / f"{stack}-{n}"
            )
            point["triton_times"] = [t.to_dict() for t in interval_times(before, snapshot(server.grpc_url))]
            _print_point(stack, point)
            points.append(point)
        run.results["sweeps"][stack] = points
        if mix:
            run.mix(stack, "TritonGrpcUser", server.grpc_url)


def _http_stack(
    run: _Run, stack: str, server: Callable[..., AbstractContextManager[str]], source: Path, user_class: str, screen_all
) -> None:
    from predilect.serving.server import free_port

    print(f"{stack}: starting on {source}", flush=True)
    with server(source, port=free_port(), log_path=run.work / f"{stack}.log") as url:
        run.accuracy(stack, screen_all(url, [p.read_bytes() for p in run.camera]))  # warm-up
        run.results["sweeps"][stack] = run.sweep(stack, user_class, url, run.args.users)
        run.mix(stack, user_class, url)


def _inprocess(run: _Run) -> None:
    from predilect.benchmarks.inprocess import run_inprocess

    print("(a) in-process bound", flush=True)
    bound = run_inprocess(run.args.onnx, [p.read_bytes() for p in run.camera], duration_s=run.args.seconds_per_point)
    run.results["inprocess"] = {**dataclasses.asdict(bound), "images_per_s": bound.images_per_s}
    print(f"  (a) in-process: {bound.images_per_s:.1f} images/s", flush=True)


def _preprocess(run: _Run, cfg: Any) -> None:
    from predilect.benchmarks.decoders import preprocess_timings

    print("preprocessing vs the decode floor (one thread)", flush=True)
    data = [p.read_bytes() for p in run.camera[:64]]
    run.results["preprocessing"] = {**preprocess_timings(data, cfg, dali=False), "load": machine.load_average()}
    print(f"  served / floor: {run.results['preprocessing']['served_over_floor']:.2f}x", flush=True)


def _int8(run: _Run) -> bool:
    """INT8 beside --onnx: its gate report, and ONNX Runtime ms/image of INT8 vs FP32 on the same tensors.

    Quantizes first when there is no gated model. Returns whether a gated model exists to serve;
    a refused candidate is timed in the workdir, never served.
    """
    import onnx

    from predilect import contract
    from predilect.benchmarks.inprocess import inference_ms_per_image
    from predilect.build.quantize import QuantizationRefused, QuantizeCfg, int8_path, quantize
    from predilect.preprocess import Preprocessor
    from predilect.serving.repository import read_served_model

    args, path = run.args, int8_path(run.args.onnx)
    if not path.is_file() and not run.labelled:
        run.results["notes"].append("INT8 not run: no gated INT8 model and no labelled manifest to quantize with")
        return False
    candidate, served = path, True
    if not path.is_file():
        print(f"int8: quantizing {args.onnx} (calibrate + gate)", flush=True)
        try:
            quantize(args.onnx, args.manifest, path)
        except QuantizationRefused as e:
            print(f"  {e}", flush=True)
            run.results["int8"] = {"gate": json.loads(e.report.to_json())}
            candidate, served = run.work / "refused.int8.onnx", False
            ungated = QuantizeCfg(max_abs_dp=float("inf"), max_auroc_drop=float("inf"))
            quantize(args.onnx, args.manifest, candidate, ungated)  # timed only
    if served:
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        run.results["int8"] = {"gate": json.loads(meta[contract.KEY_QUANTIZATION])}
    pixels = (
        Preprocessor(read_served_model(args.onnx).preprocess, num_threads=1)
        .run([p.read_bytes() for p in run.camera[:32]])
        .pixels_or_raise()
    )
    run.results["int8"]["served"] = served
    run.results["int8"]["inference_ms_per_image"] = {
        "fp32": inference_ms_per_image(args.onnx, pixels),
        "int8": inference_ms_per_image(candidate, pixels),
    }
    print(f"  ONNX Runtime ms/image, one thread: {run.results['int8']['inference_ms_per_image']}", flush=True)
    return served


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
        "tensor_bytes_per_image": 4 * 3 * served.preprocess.size**2,
        "serving_options": options,
        "locust_version": version("locust"),
        "bentoml_version": version("bentoml"),
        "seconds_per_point": args.seconds_per_point,
        "users": args.users,
        "headline_users": HEADLINE_USERS if HEADLINE_USERS in args.users else args.users[-1],
        "locust_workers": args.locust_workers,
        "cores": machine.cores(),
    }


def _resolve_checkpoint(args: argparse.Namespace) -> None:
    default = ARTIFACTS.checkpoint
    if args.checkpoint is None and default.is_file() and not args.quick:
        args.checkpoint = default
    if args.no_baseline:
        args.checkpoint = None


def _stacks(run: _Run) -> Iterator[tuple[str, Callable[[], None]]]:
    """The measurements of one run, in order, each named."""
    from predilect.benchmarks import stacks
    from predilect.serving.configs import ServingOptions
    from predilect.serving.repository import read_served_model

    args, setup = run.args, run.results["setup"]
    default = ServingOptions()
    other = "split" if default.layout == "fused" else "fused"
    headline = [setup["headline_users"]]
    if not args.no_preprocess:
        yield "preprocessing", lambda: _preprocess(run, read_served_model(args.onnx).preprocess)
    yield "inprocess", lambda: _inprocess(run)
    yield report.STACK_TRITON, lambda: _triton_stack(run, report.STACK_TRITON, default, args.users, mix=True)
    if not args.no_layouts:
        options = dataclasses.replace(default, layout=other)
        yield (
            f"triton_{other}",
            lambda: _triton_stack(run, f"{report.STACK_TRITON}_{other}", options, headline, mix=False),
        )
    if not args.no_int8 and _int8(run):
        int8 = dataclasses.replace(default, precision="int8")
        yield "triton_int8", lambda: _triton_stack(run, report.STACK_INT8, int8, headline, mix=False)
    if args.checkpoint is not None:
        yield (
            report.STACK_BASELINE,
            lambda: _http_stack(
                run,
                report.STACK_BASELINE,
                stacks.baseline_server,
                args.checkpoint,
                "BaselineHttpUser",
                stacks.screen_http_all,
            ),
        )
    else:
        run.results["notes"].append("baseline (b) not run: no --checkpoint")
    if not args.no_bento:
        yield (
            report.STACK_BENTO,
            lambda: _http_stack(
                run, report.STACK_BENTO, stacks.bento_server, args.onnx, "BentoHttpUser", stacks.screen_bento_all
            ),
        )


def run(args: argparse.Namespace, work: Path, argv: Sequence[str]) -> Path:
    """The whole benchmark; returns the report path."""
    if args.quick:
        _apply_quick(args)
    _resolve_checkpoint(args)
    if not args.onnx.is_file():
        raise CommandError(f"no exported model at {args.onnx}; run `make demo` or pass --onnx")
    now = dt.datetime.now(dt.timezone.utc)
    camera, camera_label, labelled = _camera_payloads(args, work)
    sizes = [p.stat().st_size for p in camera]
    lists = {"camera": payloads.write_list(camera, work / "camera.txt")}
    results: dict[str, Any] = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "command": "predilect bench " + shlex.join(argv),
        "machine": {"description": machine.describe(), "slug": machine.slug(), "load_at_start": machine.load_average()},
        "setup": _setup(args),
        "payloads": {"camera": {"label": camera_label, "mean_bytes": sum(sizes) / len(sizes)}},
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
    state = _Run(args, work, camera, lists, labelled, results)
    for _, measure in _stacks(state):
        measure()
    results["machine"]["load_at_end"] = machine.load_average()
    name = args.name or f"{now:%Y-%m-%d}-{machine.slug()}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return report.write_report(results, args.out_dir, name)


@command("bench serving")
def serving_main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    start = time.monotonic()
    path = in_workdir(args.workdir, lambda folder: run(args, folder, argv), prefix="predilect-bench-")
    print(f"report: {path} ({time.monotonic() - start:.0f} s)")
    return 0


@command("bench")
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return int(importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:]) or 0)
    if argv and argv[0] == "serving":
        argv = argv[1:]
    return serving_main(argv)
