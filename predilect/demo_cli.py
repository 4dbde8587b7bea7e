"""`predilect demo` (what `make demo` runs): the whole path on this machine, end to end.

phantom data -> UOPSL-style training -> ONNX export + parity -> model repository ->
real tritonserver (CPU) -> every held-out image screened through the gRPC client ->
results table, served macro AUROC and gradable share per camera, images/s -> server stopped.

The phantom is the ``zoo`` preset: training and validation eyes photographed by the cameras the
camera split lets training see, and every test eye re-photographed by every camera of the zoo, the
held-out ones included (``training/predilect/training/phantom/cameras.toml``); the recipe trains
with the acquisition-shift augmentation.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from predilect.artifacts import Artifacts, default_artifacts
from predilect.cli import command
from predilect.training.phantom.phantom_cli import parse_size


class DemoError(RuntimeError):
    """A stage of the demo produced something not fit to serve; the message says which check failed."""


def _step(n: int, title: str) -> float:
    print(f"\n[{n}/6] {title}", flush=True)
    return time.monotonic()


def _done(t0: float, what: str = "done") -> None:
    print(f"      {what} in {time.monotonic() - t0:.1f}s", flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predilect demo", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=default_artifacts().root, help="artefact root (as every command)")
    p.add_argument("--preset", default="zoo", help="phantom preset (zoo: the camera zoo; easy: one camera)")
    p.add_argument("--count", type=int, default=720, help="phantom eyes (zoo: each test eye once per camera)")
    p.add_argument("--oct-count", type=int, default=480, help="phantom OCT B-scans (unpaired)")
    p.add_argument("--size", type=parse_size, default=None, help="camera frame WxH of a one-camera preset")
    p.add_argument("--render-height", type=int, default=None, help="zoo: the painted scene's largest height, px")
    p.add_argument("--max-side", type=int, default=None, help="zoo: cap every camera's frame side (quick runs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the phantom and of training (default 0)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of each stage (default: the recipe's)")
    p.add_argument(
        "--recipe",
        type=Path,
        default=None,
        help="training recipe, a run config of both stages (default: the packaged demo recipe)",
    )
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight while screening")
    p.add_argument("--grpc-port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--rows", type=int, default=12, help="result rows to print")
    return p


def _phantom(args: argparse.Namespace) -> Path:
    from predilect.training.phantom import generate

    out = Artifacts(args.workdir).phantom
    params = {
        "preset": args.preset,
        "count": args.count,
        "oct_count": args.oct_count,
        "seed": args.seed,
        "size": list(args.size) if args.size else None,
        "render_height": args.render_height,
        "max_side": args.max_side,
    }
    stamp = out / "params.json"
    manifest = out / "manifest.csv"
    if manifest.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == params:
        print(f"      reusing {manifest} (same parameters)")
        return manifest
    width, height = args.size or (None, None)

    printed = [0]

    def progress(done: int, total: int) -> None:  # a line each time another tenth is written
        if done * 10 // total > printed[0]:
            printed[0] = done * 10 // total
            print(f"      {done}/{total}", flush=True)

    manifest = generate(
        out,
        preset=args.preset,
        count=args.count,
        oct_count=args.oct_count,
        seed=args.seed,
        width=width,
        height=height,
        render_height=args.render_height,
        max_side=args.max_side,
        progress=progress,
    )
    stamp.write_text(json.dumps(params))
    return manifest


DEMO_RECIPE = "demo"
"""The packaged training recipe the demo trains (``training/predilect/training/recipes/demo.toml``)."""


def _train(args: argparse.Namespace, manifest: Path) -> Path:
    """Both UOPSL stages of the recipe: stage 1 (fundus/OCT <-> text, sites learned on OCT),
    then stage 2 (fundus only) writes the checkpoint that is exported and served."""
    import shutil

    from predilect.training.config import recipe
    from predilect.training.train import runs, train

    checkpoint = Artifacts(args.workdir).checkpoint
    shutil.rmtree(checkpoint.parent, ignore_errors=True)  # a fresh run each time (no stale run state)
    oct_manifest = manifest.with_name("oct_manifest.csv")
    common = [f"loop.seed={args.seed}", *([f"loop.epochs={args.epochs}"] if args.epochs else [])]

    def stages(overrides: list[str]):  # the two stages' configs
        return runs(
            manifest,
            recipe=args.recipe or recipe(DEMO_RECIPE),
            oct_manifest=oct_manifest if oct_manifest.is_file() else None,
            common=overrides,
        )

    first, second = stages(common)
    batch_size = first.loop.batch_size
    if args.count < 4 * batch_size:  # a small demo (tests): batches must fit its train split
        first, second = stages([*common, f"loop.batch_size={max(2, min(args.count, args.oct_count) // 4)}"])
    result = train(
        first, second, checkpoint, cache_dir=Artifacts(args.workdir).cache, report=lambda line: print(f"      {line}")
    )
    stage2 = result.finetune
    assert stage2.meta is not None
    auroc = "n/a" if stage2.val_macro_auroc is None else f"{stage2.val_macro_auroc:.4f}"
    print(f"      validation macro AUROC {auroc}; checkpoint {checkpoint} ({stage2.meta.version})")
    return checkpoint


def _export(args: argparse.Namespace, checkpoint: Path, manifest: Path) -> Path:
    from predilect.build.export import check_parity, export_onnx
    from predilect.manifest import read_manifest
    from predilect.preprocess.pixels import load_fundus_pixels

    onnx_path = Artifacts(args.workdir).onnx
    meta = export_onnx(checkpoint, onnx_path)
    records = read_manifest(manifest, catalog=meta.catalog, split="test")
    pixels = load_fundus_pixels(records, meta.preprocess, cache_dir=Artifacts(args.workdir).cache)
    report = check_parity(checkpoint, onnx_path, pixels)
    print(
        f"      ONNX Runtime vs PyTorch on {report.images} held-out images: "
        f"max |delta p| = {report.max_abs_prob_diff:.1e} (<= {report.tolerance:.0e}: {report.ok})"
    )
    if not report.ok:
        raise DemoError("ONNX parity check failed; not serving this export")
    return onnx_path


def _screen_all(url: str, records, concurrency: int):
    from predilect.benchmarks.cameras_cli import screen_records

    screen_records(url, records[: min(len(records), concurrency)], concurrency)  # warm-up
    start = time.monotonic()
    results = screen_records(url, records, concurrency)
    return results, time.monotonic() - start


def _print_table(records, results, ids: list[str], rows: int) -> None:
    shown = list(zip(records, results, strict=True))[:rows]
    width = max([22, *(len(record.path.name) for record, _ in shown)])
    print(f"      {'image':<{width}} {'truth':<18} {'screened positive':<18} " + " ".join(f"{d:>8}" for d in ids))
    for record, result in shown:
        truth = ";".join(sorted(record.labels)) or "normal"
        if result.probabilities is None:  # no disease decision: the probabilities are for audit only
            print(f"      {record.path.name:<{width}} {truth:<18} {result.quality.describe()}")
            continue
        found = ";".join(result.positive) or "normal"
        probs = " ".join(f"{result.probabilities[d]:8.3f}" for d in ids)
        print(f"      {record.path.name:<{width}} {truth:<18} {found:<18} {probs}")
    if len(records) > rows:
        print(f"      ... {len(records) - rows} more rows in results.jsonl")


def _serve_and_screen(args: argparse.Namespace, repository: Path, manifest: Path, catalog) -> dict:
    from predilect.manifest import read_manifest
    from predilect.serving.server import TritonServer, free_port
    from predilect.training.by_camera import Screened, camera_rows, format_rows, pooled_auroc
    from predilect.training.phantom.cameras import ZOO

    grpc_port = args.grpc_port or free_port()
    with TritonServer(
        model_repository=repository, grpc_port=grpc_port, http_port=free_port(), metrics_port=free_port()
    ) as server:
        print(f"      tritonserver ready: gRPC {server.grpc_url}, HTTP {server.http_url}, metrics {server.metrics_url}")
        t0 = _step(6, "screening the held-out images through the gRPC client")
        records = read_manifest(manifest, catalog=catalog, split="test")
        results, seconds = _screen_all(server.grpc_url, records, args.concurrency)
    ids = list(results[0].scores)
    _print_table(records, results, ids, args.rows)
    # The model's AUROC over every image: ungradable ones included through their audit probabilities.
    served = np.array([[r.scores[d] for d in ids] for r in results])
    if ids != catalog.ids:
        raise DemoError(f"served catalog {ids} differs from the checkpoint's {catalog.ids}")
    screened = Screened(records, served, np.array([r.gradable for r in results]), ids)
    rows = camera_rows(screened, ZOO.split_of)
    print("\n      per camera (served; AUROC over every image, ungradable ones through their audit probabilities):")
    for line in format_rows(rows):
        print(f"      {line}")
    auroc = {split: pooled_auroc(screened, ZOO.split_of, split) for split in ("seen", "held_out")}
    with (args.workdir / "results.jsonl").open("w") as f:
        for record, result in zip(records, results, strict=True):
            f.write(json.dumps({"image": str(record.path), **json.loads(result.to_json())}) + "\n")
    red_free = [r for r in rows if r.screened_as_colour is not None]
    summary = {
        "images": len(records),
        "served_macro_auroc": auroc["seen"],
        "served_macro_auroc_held_out": auroc["held_out"],
        "images_per_s": len(records) / seconds,
        "ungradable": sum(not r.gradable for r in results),
        "concurrency": args.concurrency,
        "model_version": results[0].model_version,
        "red_free_screened_as_colour": sum(r.screened_as_colour or 0 for r in red_free),
        "red_free_images": sum(r.images for r in red_free),
        "cameras": [r.to_dict() for r in rows],
    }
    _done(t0, f"screened {len(records)} images")
    return summary


@command("demo")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    begin = time.monotonic()
    frames = f"at {args.size[0]}x{args.size[1]}" if args.size else "through each camera of the preset"
    t0 = _step(1, f"phantom data ({args.preset}): {args.count} eyes {frames}, {args.oct_count} OCT B-scans")
    manifest = _phantom(args)
    _done(t0)
    t0 = _step(2, "training: stage 1 OCT/fundus <-> text + sites matrix on OCT, stage 2 fundus only")
    checkpoint = _train(args, manifest)
    _done(t0)
    t0 = _step(3, "export to ONNX + parity under ONNX Runtime")
    onnx_path = _export(args, checkpoint, manifest)
    _done(t0)
    t0 = _step(4, "assembling the Triton model repository")
    from predilect.serving.reference import reference_from_manifest
    from predilect.serving.repository import assemble, read_served_model

    # The validation photographs (seen cameras) as the model's reference: a held-out camera shows as drift.
    reference = reference_from_manifest(onnx_path, read_served_model(onnx_path), manifest, split="val")
    repository = assemble(onnx_path, Artifacts(args.workdir).repository, reference=reference)
    print(f"      {repository}")
    _done(t0)
    _step(5, "starting the real tritonserver on CPU")
    from predilect.models.checkpoint import read_meta

    summary = _serve_and_screen(args, repository, manifest, read_meta(checkpoint).catalog)
    held_out = summary["served_macro_auroc_held_out"]
    print(
        f"\nserved macro AUROC {summary['served_macro_auroc']:.4f} on the seen cameras' test images"
        + ("" if np.isnan(held_out) else f", {held_out:.4f} on the held-out cameras'")
        + f" ({summary['images']} test images, {summary['ungradable']} called ungradable"
        + (
            f"; red-free screened as colour: {summary['red_free_screened_as_colour']}/{summary['red_free_images']}"
            if summary["red_free_images"]
            else ""
        )
        + f"); {summary['images_per_s']:.1f} images/s at concurrency {summary['concurrency']}; "
        f"model {summary['model_version']}; total {time.monotonic() - begin:.0f}s"
    )
    (args.workdir / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"server stopped. Serve again with: predilect serve --model-repository {repository}")
    return 0
