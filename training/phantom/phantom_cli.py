"""`predilect phantom`: generate a synthetic fundus + OCT data set and its manifests."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from predilect.artifacts import default_artifacts
from predilect.catalog import DEFAULT_CATALOG
from predilect.cli import command

from ..manifest import label_counts, read_manifest
from .generate import OCT_MANIFEST, generate


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"size must look like 2048x1536, got {text!r}") from e
    return width, height


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predilect phantom", description=__doc__)
    p.add_argument("--out", type=Path, default=default_artifacts().phantom, help="output directory")
    p.add_argument("--count", type=int, default=720, help="fundus photographs (default 720)")
    p.add_argument("--oct-count", type=int, default=480, help="unpaired OCT B-scans (default 480)")
    p.add_argument("--seed", type=int, default=0, help="the data set is a function of this seed")
    p.add_argument(
        "--size", type=parse_size, default=(2048, 1536), help="fundus frame WIDTHxHEIGHT (default 2048x1536)"
    )
    p.add_argument("--heldout-fraction", type=float, default=0.25, help="share of patients held out (default 0.25)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
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


def _print_summary(manifest: Path) -> None:
    counts = label_counts(read_manifest(manifest, catalog=DEFAULT_CATALOG), DEFAULT_CATALOG)
    columns = ["images", "normal", *DEFAULT_CATALOG.ids]
    print(f"{'split':<10}" + "".join(f"{c:>10}" for c in columns))
    for split, row in counts.items():
        print(f"{split:<10}" + "".join(f"{row[c]:>10}" for c in columns))


@command("phantom")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    width, height = args.size
    print(
        f"phantom: {args.count} fundus ({width}x{height}) + {args.oct_count} OCT, seed {args.seed}, "
        f"{args.workers} worker(s) -> {args.out}",
        flush=True,
    )
    manifest = generate(
        args.out,
        count=args.count,
        oct_count=args.oct_count,
        seed=args.seed,
        width=width,
        height=height,
        heldout_fraction=args.heldout_fraction,
        workers=args.workers,
        progress=_progress_printer(),
    )
    print(f"fundus manifest: {manifest}")
    _print_summary(manifest)
    oct_manifest = manifest.with_name(OCT_MANIFEST)
    if oct_manifest.is_file():
        print(f"OCT manifest: {oct_manifest}")
        _print_summary(oct_manifest)
    return 0
