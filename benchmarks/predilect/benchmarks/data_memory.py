"""Peak memory of training against data-set size: streaming loader vs the old load-everything path.

    python -m predilect.benchmarks.data_memory --out benchmarks/results/data-memory     # <date>-<machine>.md

For each size it builds a manifest of N distinct image files (hard links to a few synthetic
fundus JPEGs, so 20k files cost little disk; each item is still opened and decoded), then, in a
FRESH process per case, either

* ``stream``: reads the manifest, builds ``FundusDataset`` (the shared ``Preprocessor``,
  augmentation on) and trains a small CNN with ``predilect.training.loop.fit`` for a fixed number of steps
  (the epoch's order is cut to ``steps x batch`` images drawn from all N), or
* ``legacy``: the previous path, ``predilect.pixels.load_fundus_pixels`` on every image (the
  control: it holds every preprocessed tensor, so its peak must grow with N).

and reports the peak resident set size of the training process (``ru_maxrss``) and of its
largest DataLoader worker. Defaults: stream at 2k and 20k images, legacy at 500 and 2k.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from predilect.benchmarks import machine
from predilect.outdir import out_folder

SOURCES = 32  # distinct synthetic photographs the N files link to


def _source_images(folder: Path, *, width: int, height: int) -> list[Path]:
    from predilect.training.phantom.generate import generate

    manifest = generate(folder, count=SOURCES, oct_count=0, seed=11, width=width, height=height, workers=1)
    from predilect.manifest import read_manifest

    return [r.path for r in read_manifest(manifest)]


def build_manifest(folder: Path, count: int, *, width: int, height: int) -> Path:
    """``folder/manifest-<count>.csv`` over ``count`` files linked to the synthetic sources."""
    from predilect.manifest import Record, write_manifest

    sources = _source_images(folder / "sources", width=width, height=height)
    images = folder / f"images-{count}"
    images.mkdir(parents=True, exist_ok=True)
    labels = [frozenset(), frozenset({"dr"}), frozenset({"glaucoma"}), frozenset({"amd", "dme"})]
    records = []
    for i in range(count):
        path = images / f"{i:06d}.jpg"
        if not path.exists():
            try:
                os.link(sources[i % SOURCES], path)
            except OSError:
                path.write_bytes(sources[i % SOURCES].read_bytes())
        records.append(Record(path, labels[i % 4], patient_id=f"P{i // 2}", split="train"))
    return write_manifest(folder / f"manifest-{count}.csv", records)


def _peak_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # kB on Linux


def run_case(mode: str, manifest: Path, *, steps: int, batch_size: int, workers: int, size: int) -> dict:
    """One measurement, in this process (the driver starts a fresh process per case)."""
    import torch
    from torch import nn

    from predilect.catalog import DEFAULT_CATALOG
    from predilect.manifest import read_manifest
    from predilect.preprocess import PreprocessCfg

    torch.set_num_threads(1)
    preprocess = PreprocessCfg(size=size)
    start = time.monotonic()
    records = read_manifest(manifest, catalog=DEFAULT_CATALOG)
    after_manifest = _peak_mib(resource.RUSAGE_SELF)
    if mode == "legacy":
        from predilect.preprocess.pixels import load_fundus_pixels

        pixels = load_fundus_pixels(records, preprocess, num_threads=1)
        held = pixels.nbytes / 2**20
    else:
        from predilect.training.datasets import AugmentCfg, FundusAugment, FundusDataset, make_loader
        from predilect.training.loop import LoopCfg, fit

        dataset = FundusDataset(records, preprocess, DEFAULT_CATALOG, augment=FundusAugment(AugmentCfg(), preprocess))
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 16, 7, stride=4),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, len(DEFAULT_CATALOG)),
        )

        def loss_fn(net: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
            return nn.functional.binary_cross_entropy_with_logits(net(batch["pixels"]), batch["labels"]), {}

        def loader(epoch: int):
            epoch_loader = make_loader(dataset, batch_size=batch_size, workers=workers, seed=0, epoch=epoch)
            epoch_loader.order = epoch_loader.order[: steps * batch_size]  # fixed work, drawn from all N
            return epoch_loader

        cfg = LoopCfg(epochs=1, batch_size=batch_size, lr=1e-3, workers=workers, progress=False, tensorboard=False)
        with tempfile.TemporaryDirectory() as run_dir:
            fit(model, loss_fn, loader, cfg, run_dir=run_dir)
        held = 0.0
    return {
        "mode": mode,
        "images": len(records),
        "steps": steps if mode == "stream" else 0,
        "peak_rss_mib": round(_peak_mib(resource.RUSAGE_SELF), 1),
        "peak_worker_rss_mib": round(_peak_mib(resource.RUSAGE_CHILDREN), 1),
        "rss_after_manifest_mib": round(after_manifest, 1),
        "pixels_held_mib": round(held, 1),
        "seconds": round(time.monotonic() - start, 1),
    }


def _report(results: Sequence[dict], args: argparse.Namespace, command: str) -> str:
    from predilect.benchmarks.machine import describe

    lines = [
        "# Training memory against data-set size",
        "",
        f"Measured {datetime.date.today().isoformat()} on {describe()}.",
        f"Command: `{command}`",
        "",
        f"Preprocessing size {args.size}, batch {args.batch_size}, {args.workers} DataLoader worker(s), "
        f"stream = `fit` for {args.steps} steps; legacy = `load_fundus_pixels` on every image. "
        "Peak RSS = `ru_maxrss` of the case's own fresh process (workers: largest child).",
        "",
        "| mode | images | steps | peak RSS (MiB) | peak worker RSS (MiB) | RSS after manifest (MiB) "
        "| pixels held (MiB) | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['mode']} | {r['images']} | {r['steps']} | {r['peak_rss_mib']} | {r['peak_worker_rss_mib']} "
            f"| {r['rss_after_manifest_mib']} | {r['pixels_held_mib']} | {r['seconds']} |"
        )
    streams = [r for r in results if r["mode"] == "stream"]
    if len(streams) >= 2:
        small, large = streams[0], streams[-1]
        lines += [
            "",
            f"stream: {large['images'] / small['images']:.0f}x the images -> peak RSS x"
            f"{large['peak_rss_mib'] / small['peak_rss_mib']:.3f} "
            f"({large['peak_rss_mib'] - small['peak_rss_mib']:+.1f} MiB); right after reading the manifest the "
            f"difference was already {large['rss_after_manifest_mib'] - small['rss_after_manifest_mib']:+.1f} MiB "
            "(the Record list), i.e. training itself added nothing that grows with N.",
        ]
    legacy = [r for r in results if r["mode"] == "legacy"]
    if len(legacy) >= 2:
        small, large = legacy[0], legacy[-1]
        growth = large["peak_rss_mib"] - small["peak_rss_mib"]
        lines.append(
            f"legacy (control): {large['images'] / small['images']:.0f}x the images -> peak RSS x"
            f"{large['peak_rss_mib'] / small['peak_rss_mib']:.2f} ({growth:+.1f} MiB)."
        )
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stream-sizes", type=int, nargs="*", default=[2000, 20000])
    p.add_argument("--legacy-sizes", type=int, nargs="*", default=[500, 2000])
    p.add_argument("--steps", type=int, default=60, help="optimiser steps per streaming case")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--size", type=int, default=224, help="preprocessing size")
    p.add_argument("--frame", default="512x384", help="synthetic photograph size WxH")
    p.add_argument("--workdir", type=Path, default=None, help="where the images go (default: a temp dir)")
    p.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="folder for the report <name>.md and <name>.json"
    )
    p.add_argument("--name", default=None, help="file stem of the report (default <date>-<machine>)")
    p.add_argument("--case", nargs=2, metavar=("MODE", "MANIFEST"), help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.case:  # a child process: one measurement, JSON on stdout
        mode, manifest = args.case
        result = run_case(
            mode, Path(manifest), steps=args.steps, batch_size=args.batch_size, workers=args.workers, size=args.size
        )
        print(json.dumps(result))
        return 0
    width, height = (int(v) for v in args.frame.split("x"))
    command = "python -m predilect.benchmarks.data_memory " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        cases = [("stream", n) for n in args.stream_sizes] + [("legacy", n) for n in args.legacy_sizes]
        results = []
        for mode, count in cases:
            manifest = build_manifest(workdir, count, width=width, height=height)
            child = [sys.executable, "-m", "predilect.benchmarks.data_memory", "--case", mode, str(manifest)]
            child += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
            child += ["--workers", str(args.workers), "--size", str(args.size)]
            done = subprocess.run(child, capture_output=True, text=True, check=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    report = _report(results, args, command)
    print(report)
    if args.out:
        name = args.name or machine.dated_name(machine.slug())
        path = out_folder(args.out, holds=f"{name}.md, {name}.json") / f"{name}.md"
        path.write_text(report, encoding="utf-8")
        path.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
