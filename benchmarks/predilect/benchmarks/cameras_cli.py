"""`predilect bench cameras`: served macro AUROC and gradable share per camera of the zoo, over trained models.

    predilect bench cameras --phantom DIR --checkpoint policy=runs/s0/model.safetensors \\
        --checkpoint policy=runs/s1/model.safetensors --checkpoint baseline=runs/b0/model.safetensors \\
        --out benchmarks/results/cameras --name <date>-<machine>

Each checkpoint is exported to ONNX, assembled into a model repository (the CPU profile, the packaged
gradability calibration or ``--quality``) and served by the real tritonserver; every test image of a
zoo phantom (``predilect phantom --preset zoo``: each test eye photographed by every camera, seen
and held out) is screened through the gRPC client. Checkpoints sharing a name are one recipe's
training seeds and are pooled per camera (``predilect.training.by_camera.compare_cameras``: the mean
over seeds of each camera's macro AUROC, patient-level bootstrap intervals, each held-out camera's gap
to the seen cameras against the 0.03 target); with two names, the first minus the second on the seen
and on the held-out cameras (paired bootstrap) says what one recipe costs or gains on each. Red-free
captures are counted as screened as colour or not. Writes ``<name>.md`` and ``<name>.json``; each
checkpoint's repository and screenings (``screened.jsonl``, the results as the client returned them)
go to ``--workdir``. A checkpoint named twice is screened once.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import shlex
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from predilect.artifacts import default_artifacts
from predilect.benchmarks import machine
from predilect.catalog import load_catalog
from predilect.cli import CommandError, command
from predilect.manifest import Record, field_angle_of, read_manifest
from predilect.training.by_camera import (
    TARGET_GAP,
    CameraComparison,
    Screened,
    compare_cameras,
    paired_difference,
    splits_of,
)
from predilect.training.phantom.generate import FUNDUS_MANIFEST, PHANTOM_CATALOG, PHANTOM_INFO


def _named(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--checkpoint takes NAME=PATH (seeds share a NAME), got {text!r}")
    return name, Path(path)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="predilect bench cameras", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--phantom", type=Path, required=True, help="a zoo phantom folder (its test split is screened)")
    p.add_argument("--checkpoint", type=_named, action="append", required=True, metavar="NAME=PATH")
    machine.add_report_folder(p)
    p.add_argument("--name", default=None, help="report file stem (default: <date>-<machine>)")
    p.add_argument("--workdir", type=Path, default=default_artifacts().root / "bench-cameras")
    p.add_argument("--quality", type=Path, default=None, help="gradability thresholds to serve (default: packaged)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    return p


def _test_records(phantom: Path) -> list[Record]:
    manifest = phantom / FUNDUS_MANIFEST
    if not manifest.is_file() or not (phantom / PHANTOM_CATALOG).is_file():
        raise CommandError(f"{phantom} is not a phantom folder: it needs {FUNDUS_MANIFEST} and {PHANTOM_CATALOG}")
    records = read_manifest(manifest, catalog=load_catalog(phantom / PHANTOM_CATALOG), split="test")
    if not records:
        raise CommandError(f"{manifest} has no test images")
    return records


def screen(
    checkpoint: Path, records: Sequence[Record], work: Path, *, quality: Path | None, concurrency: int
) -> Screened:
    """Serve ``checkpoint`` (export, assemble, tritonserver) and screen ``records`` through the client;
    the served repository and the screenings (``screened.json``) stay in ``work``."""
    from predilect.build.export import export_onnx
    from predilect.quality import load_quality_cfg
    from predilect.serving.repository import assemble
    from predilect.serving.server import TritonServer, free_port

    onnx = work / "model.onnx"
    export_onnx(checkpoint, onnx)
    repository = assemble(onnx, work / "repository", quality=load_quality_cfg(quality) if quality else None)
    with TritonServer(
        model_repository=repository, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()
    ) as server:
        results = screen_records(server.grpc_url, records, concurrency)
    ids = list(results[0].scores)
    scores = np.array([[r.scores[d] for d in ids] for r in results])
    gradable = np.array([r.gradable for r in results], bool)
    rows = [{"image": str(r.path), **json.loads(result.to_json())} for r, result in zip(records, results, strict=True)]
    (work / "screened.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return Screened(records, scores, gradable, ids)


def screen_records(url: str, records: Sequence[Record], concurrency: int) -> list[Any]:
    """Screen ``records`` through the client, ``concurrency`` at a time, each sent with its camera's field
    angle (``manifest.field_angle_of``: one client per angle, as a site configures one per camera); the
    results in record order."""
    from predilect.client import ScreeningClient

    by_angle: dict[float | None, list[int]] = {}
    for i, record in enumerate(records):
        by_angle.setdefault(field_angle_of(record), []).append(i)
    results: list[Any] = [None] * len(records)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for angle, index in by_angle.items():
            with ScreeningClient(url, field_angle_deg=angle) as client:
                paths = [records[i].path for i in index]
                for i, result in zip(index, pool.map(client.screen, paths), strict=True):
                    results[i] = result
    return results


def _interval(value: Any) -> str:
    return f"{value.value:.4f} [{value.low:.4f}, {value.high:.4f}]"


def _table(name: str, comparison: CameraComparison, versions: list[str]) -> list[str]:
    lines = [
        f"## `{name}`: {comparison.models} model(s) ({', '.join(versions)}), {comparison.eyes} test eyes of "
        f"{comparison.patients} patients per camera",
        "",
        f"Seen cameras' mean served macro AUROC: **{_interval(comparison.seen_reference)}**.",
        "",
        "| camera | split | images | gradable | served macro AUROC, mean of models [95% CI] | per model | "
        f"gap to seen [95% CI] | within {TARGET_GAP} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for camera, split in comparison.splits.items():
        graded, images = comparison.gradable[camera]
        share = f"{100 * graded / images:.1f}% ({graded}/{images})"
        if camera in comparison.screened_as_colour:
            screened, n = comparison.screened_as_colour[camera]
            lines.append(
                f"| {camera} | {split} | {images} | {share} | red-free: screened as colour {screened}/{n} | | | |"
            )
            continue
        per_model = ", ".join(f"{v:.3f}" for v in comparison.per_model[camera])
        gap, met = "", ""
        if camera in comparison.gap:
            g = comparison.gap[camera]
            gap = f"{g.value:+.4f} [{g.low:+.4f}, {g.high:+.4f}]"
            met = "yes" if comparison.met(camera) else "**no**"
        lines.append(
            f"| {camera} | {split} | {images} | {share} | {_interval(comparison.auroc[camera])} | {per_model} "
            f"| {gap} | {met} |"
        )
    return [*lines, ""]


@command("bench cameras")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    records = _test_records(args.phantom)
    info_file = args.phantom / PHANTOM_INFO
    info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
    split = {c: s for s, cameras in info.get("camera_split", {}).items() for c in cameras}
    if not split:
        raise CommandError(f"{args.phantom} names no camera split: generate it with `predilect phantom --preset zoo`")
    split_of = splits_of(split)
    groups: dict[str, list[Path]] = {}
    for name, path in args.checkpoint:
        groups.setdefault(name, []).append(path)
    args.workdir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    runs: dict[str, list[Screened]] = {}
    from predilect.models.checkpoint import read_meta

    versions = {name: [read_meta(p).version for p in paths] for name, paths in groups.items()}
    screened: dict[str, Screened] = {}  # one screening per distinct checkpoint
    for name, paths in groups.items():
        for path in paths:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            if digest not in screened:
                print(f"screening {len(records)} test images with {name} {path} ...", flush=True)
                work = args.workdir / digest
                screened[digest] = screen(path, records, work, quality=args.quality, concurrency=args.concurrency)
            runs.setdefault(name, []).append(screened[digest])
    comparisons = {name: compare_cameras(found, split_of, resamples=args.resamples) for name, found in runs.items()}
    command_line = "predilect bench cameras " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    today = dt.date.today().isoformat()
    stem = args.name or f"{today}-{machine.slug()}"
    out: dict[str, Any] = {
        "command": command_line,
        "date": today,
        "machine": machine.describe(),
        "phantom": {
            "folder": str(args.phantom),
            **{k: info.get(k) for k in ("preset", "seed", "render_height", "max_side")},
        },
        "quality": str(args.quality) if args.quality else "packaged predilect/quality_calibration.json",
        "checkpoints": {name: [str(p) for p in paths] for name, paths in groups.items()},
        "versions": versions,
        "groups": {name: c.to_dict() for name, c in comparisons.items()},
        "seconds": None,
    }
    lines = [
        f"# Served macro AUROC and gradable share per camera ({today})",
        "",
        f"* command: `{command_line}`",
        f"* machine: {machine.describe()}",
        f"* phantom: `{args.phantom}` (preset {info.get('preset')}, seed {info.get('seed')}): "
        f"{len(records)} test images",
        f"* gradability thresholds: {out['quality']}",
        "* AUROC: every image's served probabilities (an ungradable image's audit probabilities), macro over the "
        "catalog; intervals: patient-level bootstrap (both eyes together, the same resample for every camera and "
        f"model), {args.resamples} resamples",
        "",
    ]
    for name, comparison in comparisons.items():
        lines += _table(name, comparison, versions[name])
    names = list(comparisons)
    if len(names) == 2:
        a, b = names
        colour = list(comparisons[a].auroc)
        seen = [c for c in colour if split_of(c) == "seen"]
        held = [c for c in colour if split_of(c) != "seen"]
        differences = {}
        for label, cameras in (("seen", seen), ("held_out", held)):
            if cameras:
                differences[label] = paired_difference(runs[a], runs[b], cameras, resamples=args.resamples)
        out["difference"] = {
            k: {"value": v.value, "low": v.low, "high": v.high, "of": f"{a} - {b}"} for k, v in differences.items()
        }
        lines += [f"## `{a}` minus `{b}` (mean served macro AUROC over the cameras, paired bootstrap)", ""]
        lines += [f"* {label} cameras: {_interval(v)}" for label, v in differences.items()]
        lines.append("")
    out["seconds"] = round(time.monotonic() - start, 1)
    lines.append(f"Wall time: {out['seconds']:.0f} s.")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{stem}.json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    (args.out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    print(f"wrote {args.out_dir / (stem + '.md')} and .json")
    return 0
