"""`predilect bench gap`: the gap between the in-process bound and the served throughput, part by part.

    predilect bench gap --users 16 --seconds-per-point 15 --out benchmarks/results/gap

One run, side by side (``predilect.benchmarks.gap`` says what each part is): the bound; the default
repository straight to tritonserver and through the nginx front; the no-op step, both ways; the batcher
delay and the instance count swept around their defaults; the reference again. Writes
``<out>/<name>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from predilect import contract
from predilect.artifacts import default_artifacts
from predilect.benchmarks import gap, machine, payloads
from predilect.benchmarks.locust_runner import LocustRunError
from predilect.benchmarks.workdirs import in_workdir
from predilect.cli import CommandError, command
from predilect.outdir import out_folder


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="predilect bench gap", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--onnx", type=Path, default=default_artifacts().onnx, help="exported model to serve")
    p.add_argument("--manifest", type=Path, default=default_artifacts().manifest, help="held-out images to send")
    p.add_argument("--images", type=int, default=64, help="how many held-out images (default 64)")
    p.add_argument("--users", type=int, default=16, help="concurrent Locust users at every point (default 16)")
    p.add_argument("--seconds-per-point", type=int, default=15, help="seconds each point runs (default 15)")
    p.add_argument("--only", nargs="*", default=None, help="roles to run besides reference and noop (default: all)")
    p.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/gap"), metavar="DIR", help="folder of <name>.md/.json"
    )
    p.add_argument("--name", default=None, help="file stem (default <date>-<machine>-gap)")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a new temp folder)")
    p.add_argument(
        "--from-json",
        type=Path,
        default=None,
        metavar="FILE",
        help="measure nothing: recompute the breakdown of a run's .json and write its report again beside it",
    )
    return p


def _row(point: gap.GapPoint, result: dict[str, Any], bound_ips: float) -> str:
    o = result.get("options", {})
    where = "nginx front" if point.front else "direct"
    model = "no-op" if point.noop else contract.FUSED_MODEL
    head = f"| {point.name} | {where} | {model} | {o.get('max_queue_delay_us', '')} | {o.get('fused_instances', '')} |"
    if "failed" in result:
        return f"{head} no measurement: {result['failed']} | | | | | | |"
    m = gap.Measured.of_point(result)
    return (
        f"{head} {m.images_per_s:.1f} | {result['p50_ms']:.0f} | {result['p99_ms']:.0f} | "
        f"{m.images_per_s / bound_ips:.0%} | {m.server_cpu_ms_per_image:.1f} | {m.loadgen_cpu_ms_per_image:.1f} | "
        f"{result['error_rate']:.1%} | {result['load_before'][0]:.1f} / {result['load_after'][0]:.1f} |"
    )


def write_report(
    results: dict[str, Any],
    points: Sequence[tuple[gap.GapPoint, dict[str, Any]]],
    breakdown: gap.Breakdown | None,
    path: Path,
) -> None:
    from predilect.benchmarks.report import stage_table

    bound = results["inprocess"]
    lines = [
        f"# Serving gap breakdown, {results['date']}",
        "",
        f"* machine: {results['machine']} ({results['load']} at start)",
        f"* command: `{results['command']}`",
        f"* model: {results['onnx']}; {results['users']} users, closed loop, {results['seconds_per_point']} s "
        "per point, Locust on the same cores",
        "",
        "## Configurations (one run, in this order)",
        "",
        f"(a) in-process bound: **{bound['images_per_s']:.1f} images/s**, "
        f"{bound['cpu_s'] / bound['images'] * 1000:.1f} ms CPU per image ({bound['workers']} workers, "
        f"batches of {bound['batch_size']}).",
        "",
        "| configuration | path | step | queue delay us | instances | images/s | p50 ms | p99 ms | of bound "
        "| server CPU ms/image | load generator CPU ms/image | errors | load avg before / after |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[_row(p, r, bound["images_per_s"]) for p, r in points],
        "",
    ]
    if breakdown is not None:
        lines += [
            "## The gap, part by part (wall ms per image: 1000 / images/s)",
            "",
            *gap.breakdown_table(breakdown),
            "",
        ]
    lines += [
        "## Per-stage costs: the bound beside the served steps (Triton statistics)",
        "",
        *stage_table(bound, [(p.name, r) for p, r in points if "failed" not in r]),
        "",
        *(["## Notes", "", *[f"* {n}" for n in results["notes"]]] if results.get("notes") else []),
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def run(args: argparse.Namespace, work: Path, argv: Sequence[str]) -> Path:
    from predilect.benchmarks.inprocess import run_inprocess
    from predilect.benchmarks.sweep import run_point
    from predilect.serving.configs import ServingOptions

    if not args.onnx.is_file():
        raise CommandError(f"no exported model at {args.onnx}; run `make demo` or pass --onnx")
    camera = payloads.heldout_images(args.manifest, limit=args.images)
    images_list = payloads.write_list(camera, work / "camera.txt")
    defaults = ServingOptions()
    if defaults.layout != "fused":
        raise CommandError("the gap sweep varies the fused step's instances; the default layout is not fused")
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "predilect bench gap " + shlex.join(argv),
        "machine": machine.describe(),
        "load": machine.describe_load(),
        "cores": machine.cores(),
        "users": args.users,
        "seconds_per_point": args.seconds_per_point,
        "onnx": str(args.onnx),
        "defaults": dataclasses.asdict(defaults),
        "notes": [],
    }
    print("(a) in-process bound", flush=True)
    bound = run_inprocess(args.onnx, [p.read_bytes() for p in camera], duration_s=args.seconds_per_point)
    results["inprocess"] = {**dataclasses.asdict(bound), "images_per_s": bound.images_per_s}
    print(f"  {bound.images_per_s:.1f} images/s, {bound.cpu_ms_per_image:.1f} ms CPU per image", flush=True)
    points: list[tuple[gap.GapPoint, dict[str, Any]]] = []
    for k, point in enumerate(
        gap.gap_points(queue_delay_us=defaults.max_queue_delay_us, instances=defaults.fused_instances)
    ):
        if args.only is not None and point.role not in {gap.REFERENCE, gap.NOOP, *args.only}:
            continue
        try:
            result = run_point(
                args.onnx,
                dict(point.overrides),
                users=args.users,
                seconds=args.seconds_per_point,
                images_list=images_list,
                camera=camera,
                work=work / f"point-{k}",
                front=point.front,
                noop=point.noop,
            )
        except LocustRunError as e:
            result = {"failed": str(e)}
        points.append((point, result))
        if "failed" in result:
            print(f"  {point.name}: no measurement: {result['failed']}", flush=True)
        else:
            print(
                f"  {point.name:<52} {result['requests_per_s']:6.1f} images/s  p50 {result['p50_ms']:4.0f} ms  "
                f"p99 {result['p99_ms']:4.0f} ms  server CPU {result['server_cpu_s']:.1f} s",
                flush=True,
            )
    results["points"] = [{"name": p.name, "role": p.role, **r} for p, r in points]
    breakdown = None
    try:
        breakdown = gap.breakdown_of_run(cores=machine.cores(), bound=results["inprocess"], points=points)
        results["breakdown"] = breakdown.to_dict()
    except ValueError as e:
        results["notes"].append(f"no breakdown: {e}")
    name = args.name or machine.dated_name(f"{machine.slug()}-gap")
    out = out_folder(args.out, holds=f"{name}.md")
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    write_report(results, points, breakdown, out / f"{name}.md")
    return out / f"{name}.md"


def rerender(path: Path) -> Path:
    """The breakdown and report of the run recorded in ``path`` (a ``.json`` this command wrote), again."""
    results = json.loads(path.read_text(encoding="utf-8"))
    points = [
        (gap.GapPoint(r["name"], r["role"], front=r.get("front", False), noop=r.get("noop", False)), r)
        for r in results["points"]
    ]
    breakdown = gap.breakdown_of_run(cores=results["cores"], bound=results["inprocess"], points=points)
    results["breakdown"] = breakdown.to_dict()
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    write_report(results, points, breakdown, path.with_suffix(".md"))
    return path.with_suffix(".md")


@command("bench gap")
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(argv or [])
    args = _parser().parse_args(argv)
    if args.from_json is not None:
        print(f"report: {rerender(args.from_json)}")
        return 0
    start = time.monotonic()
    path = in_workdir(args.workdir, lambda folder: run(args, folder, argv), prefix="predilect-gap-")
    print(f"report: {path} ({time.monotonic() - start:.0f} s)")
    return 0
