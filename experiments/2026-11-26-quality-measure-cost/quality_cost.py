"""CPU cost of the gradability measures (``predilect.quality.measure``) per image, against a baseline revision.

    python -m predilect.benchmarks.quality_cost --images /tmp/i12/hard/fundus --baseline-rev main

Preprocesses the first ``--count`` JPEGs of ``--images`` once (the served path), then times
``measure`` of this checkout and of ``predilect/quality.py`` at ``--baseline-rev`` (read with
``git show``) on the same uint8 squares, at batch sizes 1 and 16: CPU time of this thread, passes
interleaved, best of ``--passes``, so other processes on the machine barely move the ratio.
Prints only what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from predilect import quality
from predilect.cli import CommandError
from predilect.preprocess import PreprocessCfg, Preprocessor

REPO = Path(__file__).resolve().parents[1]


def module_at_rev(rev: str, relative: str, name: str, folder: Path) -> ModuleType:
    """``relative`` (a path in this repository) as it was at git revision ``rev``, imported as module ``name``."""
    try:
        source = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{rev}:{relative}"], check=True, capture_output=True, text=True
        ).stdout
    except subprocess.CalledProcessError as e:
        raise CommandError(f"cannot read {relative} at {rev!r}: {e.stderr.strip()}") from e
    path = folder / f"{name}.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CommandError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def _baseline(rev: str, folder: Path) -> ModuleType:
    """``predilect/quality.py`` as it was at ``rev``, imported as a separate module."""
    return module_at_rev(rev, "predilect/quality.py", "quality_baseline", folder)


def _planes(images: Path, count: int) -> np.ndarray:
    paths = sorted(images.glob("*.jpg"))[:count]
    if not paths:
        raise CommandError(f"no .jpg images in {images}")
    cfg = PreprocessCfg()
    done = Preprocessor(cfg, max_batch_size=len(paths), num_threads=1).run([p.read_bytes() for p in paths])
    return np.ascontiguousarray(quality.planes_from_pixels(done.pixels, cfg.mean, cfg.std))


def _ms_per_image(measure: Callable[[np.ndarray], np.ndarray], planes: np.ndarray, batch: int) -> float:
    start = time.thread_time()
    for i in range(0, len(planes), batch):
        measure(planes[i : i + batch])
    return 1e3 * (time.thread_time() - start) / len(planes)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m predilect.benchmarks.quality_cost", description=__doc__)
    p.add_argument("--images", type=Path, required=True, help="a folder of fundus JPEGs (e.g. a phantom's fundus/)")
    p.add_argument("--baseline-rev", default="main", help="git revision whose quality.measure is the baseline")
    p.add_argument("--count", type=int, default=64, help="images to time")
    p.add_argument("--passes", type=int, default=7, help="interleaved passes; the best counts")
    args = p.parse_args(argv)
    planes = _planes(args.images, args.count)
    with tempfile.TemporaryDirectory() as tmp:
        baseline = _baseline(args.baseline_rev, Path(tmp))
        print(f"# quality.measure cost, {datetime.date.today().isoformat()}, {platform.node()}, {len(planes)} images")
        print(f"command: python -m predilect.benchmarks.quality_cost {' '.join(argv or sys.argv[1:])}")
        print("| batch | baseline ms/image | this checkout ms/image | ratio |")
        print("|---|---|---|---|")
        for batch in (1, 16):
            old, new = [], []
            for _ in range(args.passes):
                old.append(_ms_per_image(baseline.measure, planes, batch))
                new.append(_ms_per_image(quality.measure, planes, batch))
            print(f"| {batch} | {min(old):.2f} | {min(new):.2f} | {min(new) / min(old):.2f} |")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CommandError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
