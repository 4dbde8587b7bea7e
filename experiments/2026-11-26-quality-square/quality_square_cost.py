"""CPU cost of the quality square on the request path: preprocessing and grading per image, before and after.

    python -m predilect.benchmarks.quality_square_cost --images /tmp/i12/hard/fundus --baseline-rev main

For a 128-px and a 224-px model, times what the served preprocessing step does per request batch:
``Preprocessor`` (the ``pil_draft`` decoder) and the gradability grading, in this checkout
(``Preprocessor.run(..., quality=True)``, then ``Screening.quality`` on the quality square) and with
``predilect/preprocess.py`` and ``predilect/quality.py`` as they were at ``--baseline-rev`` (read
with ``git show``; ``run_packed`` then ``assess_pixels`` on the model input). Batches of
``--batch`` images, one decode thread, CPU time of this thread, passes interleaved across the
four variants, best of ``--passes``: other processes on the machine barely move the ratios.
Prints only what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from predilect.benchmarks import machine
from predilect.benchmarks.quality_cost import module_at_rev
from predilect.catalog import DEFAULT_CATALOG
from predilect.cli import CommandError
from predilect.preprocess import PreprocessCfg, Preprocessor
from predilect.quality import default_quality_cfg
from predilect.serving import configs
from predilect.serving.backends.screening import Screening

BEFORE_QUALITY_SQUARE = "e6332f6"  # main before PreprocessCfg.quality_size

Step = Callable[[list[bytes]], Callable[[], object]]
"""Runs preprocessing on a batch, returns the grading of what it made (to be timed apart)."""


def _before(pre: ModuleType, qual: ModuleType, size: int) -> Step:
    cfg = pre.PreprocessCfg(size=size)
    preprocessor = pre.Preprocessor(cfg, max_batch_size=64, num_threads=1)
    thresholds = qual.QualityCfg.from_dict(default_quality_cfg().to_dict())  # the packaged thresholds

    def step(batch: list[bytes]) -> Callable[[], object]:
        pixels, _ = preprocessor.run_packed(batch)
        return lambda: qual.assess_pixels(
            pixels, thresholds, mean=cfg.mean, std=cfg.std, fov_threshold=cfg.fov_threshold
        )

    return step


def _after(size: int) -> Step:
    cfg = PreprocessCfg(size=size)
    preprocessor = Preprocessor(cfg, max_batch_size=64, num_threads=1)
    screening = Screening.from_parameters(
        configs.screening_parameters(configs.ServedModel(DEFAULT_CATALOG, cfg, "bench", "1"))
    )

    def step(batch: list[bytes]) -> Callable[[], object]:
        done = preprocessor.run(batch, quality=True)
        return lambda: screening.quality(done.pixels, done.quality_planes)

    return step


def _pass(step: Step, payloads: list[bytes], batch: int) -> tuple[float, float]:
    """CPU seconds of preprocessing and of grading over all ``payloads``."""
    pre = grade = 0.0
    for i in range(0, len(payloads), batch):
        t0 = time.thread_time()
        grading = step(payloads[i : i + batch])
        t1 = time.thread_time()
        grading()
        grade += time.thread_time() - t1
        pre += t1 - t0
    return pre, grade


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m predilect.benchmarks.quality_square_cost", description=__doc__)
    p.add_argument("--images", type=Path, required=True, help="a folder of fundus JPEGs (e.g. a phantom's fundus/)")
    p.add_argument(
        "--baseline-rev",
        default=BEFORE_QUALITY_SQUARE,
        help="git revision of the 'before' preprocessing and grading (default: main before the quality square; "
        "a later revision grades a 128-px model on its quality square too, and its 'before' refuses to run)",
    )
    p.add_argument("--count", type=int, default=64, help="images to time")
    p.add_argument("--batch", type=int, default=16, help="images per batch (a served dynamic batch)")
    p.add_argument("--passes", type=int, default=7, help="interleaved passes; the best counts")
    args = p.parse_args(argv)
    paths = sorted(args.images.glob("*.jpg"))[: args.count]
    if not paths:
        raise CommandError(f"no .jpg images in {args.images}")
    payloads = [path.read_bytes() for path in paths]
    with tempfile.TemporaryDirectory() as folder:
        pre = module_at_rev(args.baseline_rev, "predilect/preprocess.py", "preprocess_baseline", Path(folder))
        qual = module_at_rev(args.baseline_rev, "predilect/quality.py", "quality_baseline", Path(folder))
        variants = {
            ("128", "before"): _before(pre, qual, 128),
            ("128", "after"): _after(128),
            ("224", "before"): _before(pre, qual, 224),
            ("224", "after"): _after(224),
        }
        best = {key: (float("inf"), float("inf"), float("inf")) for key in variants}
        for _ in range(args.passes):
            for key, step in variants.items():
                pre_s, grade_s = _pass(step, payloads, args.batch)
                total = pre_s + grade_s
                if total < best[key][2]:
                    best[key] = (pre_s, grade_s, total)
    ms = {key: tuple(1e3 * v / len(payloads) for v in values) for key, values in best.items()}
    print(f"# CPU ms per image on the request path ({datetime.date.today().isoformat()})")
    print(f"machine: {machine.describe()}; {machine.describe_load()}")
    print(f"images: {len(payloads)} from {args.images}, batches of {args.batch}, best of {args.passes} passes")
    print(f"before: predilect/preprocess.py and quality.py at {args.baseline_rev}; after: this checkout")
    print()
    print("| model input | version | preprocessing | grading | total | total after / before |")
    print("|---|---|---|---|---|---|")
    for size in ("128", "224"):
        for version in ("before", "after"):
            pre_ms, grade_ms, total_ms = ms[(size, version)]
            ratio = total_ms / ms[(size, "before")][2]
            print(f"| {size} px | {version} | {pre_ms:.2f} | {grade_ms:.2f} | {total_ms:.2f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
