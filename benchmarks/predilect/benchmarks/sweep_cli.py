"""`predilect bench sweep`: one short Locust point per serving config, to choose ServingOptions defaults."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
from collections.abc import Sequence
from pathlib import Path

from predilect.artifacts import default_artifacts
from predilect.benchmarks import machine, payloads
from predilect.benchmarks.sweep import CONFIGS, run_point
from predilect.cli import command
from predilect.outdir import out_folder


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predilect bench sweep", description=__doc__.splitlines()[0])
    p.add_argument("--onnx", type=Path, default=default_artifacts().onnx, help="exported model to serve")
    p.add_argument("--manifest", type=Path, default=default_artifacts().manifest, help="held-out images to send")
    p.add_argument("--images", type=int, default=64, help="how many held-out images (default 64)")
    p.add_argument("--users", type=int, default=16, help="concurrent Locust users per point (default 16)")
    p.add_argument("--seconds-per-point", type=int, default=20, help="seconds each point runs (default 20)")
    p.add_argument("--only", nargs="*", default=None, help="config names to run (default: all)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("benchmarks/results/sweep"),
        metavar="DIR",
        help="folder to write <name>.json into (default benchmarks/results/sweep)",
    )
    p.add_argument("--name", default=None, help="file stem (default <date>-<machine>)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/predilect-sweep"), help="scratch folder")
    return p


@command("bench sweep")
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
    name = args.name or machine.dated_name(machine.slug())
    path = out_folder(args.out, holds=f"{name}.json") / f"{name}.json"
    path.write_text(
        json.dumps(
            {
                "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "command": "predilect bench sweep " + shlex.join(argv or []),
                "machine": machine.describe(),
                "load": machine.describe_load(),
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
