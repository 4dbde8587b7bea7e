"""`predilect phantom`: generate a synthetic fundus + OCT data set, its manifests and ground truth.

``--preset easy`` is the original data set (the default); ``--preset
hard`` is the one that can tell the method from its controls (subtle and florid disease,
confounders, camera profiles, long tail, label noise in training, zero-shot categories).
``--preset zoo`` photographs easy's eyes through the camera zoo (``cameras.toml``: seen cameras for
training and validation, every test eye re-photographed by every camera, held-out ones included).
``--degrade`` adds degraded copies of some images (what ``predilect gradability`` calibrates
on); with ``--source MANIFEST`` it degrades an existing manifest's images instead of generating.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from predilect.artifacts import default_artifacts
from predilect.catalog import DEFAULT_CATALOG, Catalog, load_catalog
from predilect.cli import add_dataclass_options, command, dataclass_from_args
from predilect.manifest import label_counts, read_manifest
from predilect.training.phantom.degrade import degrade_dataset, parse_kinds
from predilect.training.phantom.generate import OCT_MANIFEST, PHANTOM_CATALOG, add_paired_oct, generate
from predilect.training.phantom.presets import PRESETS


@dataclass(frozen=True)
class PhantomOptions:
    """The options of `predilect phantom`; ``None`` takes the preset's value."""

    preset: str = field(default="easy", metadata={"help": f"one of {', '.join(PRESETS)}"})
    count: int | None = field(default=None, metadata={"help": "fundus photographs (None: the preset's)"})
    oct_count: int | None = field(default=None, metadata={"help": "unpaired OCT B-scans (None: the preset's)"})
    seed: int = field(default=0, metadata={"help": "the data set is a function of this seed"})
    test_fraction: float | None = field(default=None, metadata={"help": "share of patients in test"})
    val_fraction: float | None = field(default=None, metadata={"help": "share of patients in val"})
    workers: int = field(default=min(2, os.cpu_count() or 1), metadata={"help": "worker processes"})
    render_height: int | None = field(
        default=None, metadata={"help": "zoo presets: the painted scene's largest height, px (None: the preset's)"}
    )
    max_side: int | None = field(
        default=None, metadata={"help": "zoo presets: scale every camera's frame to at most this side (quick runs)"}
    )
    degrade: str = field(default="", metadata={"help": "degradations to add: comma-separated kinds, or 'all'"})
    degrade_count: int = field(default=40, metadata={"help": "images degraded per kind"})
    degrade_strengths: tuple[float, ...] = field(
        default=(0.25, 0.5, 0.75, 1.0), metadata={"help": "strengths in (0, 1] the degraded copies cycle through"}
    )


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"size must look like 2048x1536, got {text!r}") from e
    return width, height


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predilect phantom", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=default_artifacts().phantom, help="output directory")
    p.add_argument("--size", type=parse_size, default=None, help="fundus frame WIDTHxHEIGHT (default: the preset's)")
    p.add_argument("--source", type=Path, default=None, help="degrade this manifest's images; generate nothing")
    p.add_argument(
        "--catalog", type=Path, default=None, help="catalog JSON of --source (default: its folder's, else the default)"
    )
    p.add_argument(
        "--paired-oct",
        action="store_true",
        help="also draw each training fundus image's own B-scan (oct_paired_manifest.csv: the paired upper bound)",
    )
    p.add_argument(
        "--only-paired-oct",
        action="store_true",
        help="add those paired B-scans to the phantom already at --out; generate nothing else",
    )
    add_dataclass_options(p, PhantomOptions, title="data set")
    return p


def _progress_printer() -> Callable[[int, int], None]:
    """Print a line each time another ~10% of the images is written."""
    start, last = time.monotonic(), [0]

    def report(done: int, total: int) -> None:
        decile = done * 10 // total
        if decile > last[0]:
            last[0] = decile
            print(f"  {done}/{total} images ({100 * done // total}%) {time.monotonic() - start:.0f}s", flush=True)

    return report


def _print_summary(manifest: Path, catalog: Catalog) -> None:
    counts = label_counts(read_manifest(manifest, catalog=catalog), catalog)
    columns = ["images", "normal", *catalog.ids]
    width = max(8, *(len(c) + 1 for c in columns))
    print(f"{'split':<8}" + "".join(f"{c:>{width}}" for c in columns))
    for split, row in counts.items():
        print(f"{split:<8}" + "".join(f"{row[c]:>{width}}" for c in columns))


def _degrade(manifest: Path, out: Path, catalog: Catalog, opts: PhantomOptions) -> None:
    kinds = parse_kinds(opts.degrade)
    print(f"degrading {opts.degrade_count} images per kind ({', '.join(kinds)}) -> {out / 'degraded'}", flush=True)
    path = degrade_dataset(
        manifest,
        out,
        kinds=kinds,
        catalog=catalog,
        strengths=opts.degrade_strengths,
        count=opts.degrade_count,
        seed=opts.seed,
    )
    print(f"degradation manifest: {path}")


@command("phantom")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    opts = dataclass_from_args(PhantomOptions, args)
    if args.source is not None:
        beside = args.source.with_name(PHANTOM_CATALOG)
        catalog = load_catalog(args.catalog or beside) if args.catalog or beside.is_file() else DEFAULT_CATALOG
        _degrade(args.source, args.out, catalog, opts if opts.degrade else replace(opts, degrade="all"))
        return 0
    if args.only_paired_oct:
        print(f"paired OCT: {add_paired_oct(args.out, workers=opts.workers, progress=_progress_printer())}")
        return 0
    if opts.degrade:
        parse_kinds(opts.degrade)  # a typo fails before minutes of generation
    width, height = args.size or (None, None)
    print(f"phantom: preset {opts.preset}, seed {opts.seed}, {opts.workers} worker(s) -> {args.out}", flush=True)
    manifest = generate(
        args.out,
        preset=opts.preset,
        count=opts.count,
        oct_count=opts.oct_count,
        seed=opts.seed,
        width=width,
        height=height,
        test_fraction=opts.test_fraction,
        val_fraction=opts.val_fraction,
        workers=opts.workers,
        progress=_progress_printer(),
        render_height=opts.render_height,
        max_side=opts.max_side,
    )
    catalog = load_catalog(manifest.with_name(PHANTOM_CATALOG))
    print(f"fundus manifest: {manifest}")
    _print_summary(manifest, catalog)
    oct_manifest = manifest.with_name(OCT_MANIFEST)
    if oct_manifest.is_file():
        print(f"OCT manifest: {oct_manifest}")
        _print_summary(oct_manifest, catalog)
    if args.paired_oct:
        print(f"paired OCT: {add_paired_oct(args.out, workers=opts.workers, progress=_progress_printer())}")
    if opts.degrade:
        _degrade(manifest, args.out, catalog, opts)
    return 0
