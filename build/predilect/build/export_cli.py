"""`predilect export`: a checkpoint to ONNX (dynamic batch), checked for parity under ONNX Runtime.

    predilect export --checkpoint runs/ft --out artifacts/onnx       # artifacts/onnx/model.onnx

The command line of ``predilect.build.export``: ``--out`` is the folder the model goes into, as
``model.onnx``, with its metadata (catalog, preprocessing, identity) in ``metadata_props``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from predilect.artifacts import default_artifacts
from predilect.build.export import check_parity, export_onnx
from predilect.cli import EXIT_INCOMPLETE, command, description
from predilect.outdir import out_folder

ONNX_FILE = "model.onnx"
CHECKPOINT_FILE = "model.safetensors"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="predilect export", description=description(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    artifacts = default_artifacts()
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=artifacts.checkpoint,
        metavar="FILE|RUN",
        help=f"the served checkpoint, or the training run's folder holding it (default {artifacts.checkpoint})",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=artifacts.onnx.parent,
        metavar="DIR",
        help=f"folder to write {ONNX_FILE} into (default {artifacts.onnx.parent})",
    )
    p.add_argument(
        "--manifest",
        type=Path,
        default=None,
        help="check parity on this manifest's held-out images (default: random inputs)",
    )
    p.add_argument("--cache-dir", type=Path, default=None, help="cache of preprocessed held-out images (default: none)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |delta probability| allowed")
    return p


@command("export")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.checkpoint.is_dir():
        args.checkpoint = args.checkpoint / CHECKPOINT_FILE
    out = out_folder(args.out, holds=ONNX_FILE) / ONNX_FILE
    meta = export_onnx(args.checkpoint, out)
    if args.manifest is not None:
        from predilect.manifest import read_manifest
        from predilect.preprocess.pixels import load_fundus_pixels

        records = read_manifest(args.manifest, catalog=meta.catalog, split="test")
        pixels = load_fundus_pixels(records, meta.preprocess, cache_dir=args.cache_dir)
        source = f"{len(records)} held-out images"
    else:
        pixels = np.random.default_rng(0).standard_normal((16, *meta.preprocess.input_shape)).astype(np.float32)
        source = "16 random inputs"
    report = check_parity(args.checkpoint, out, pixels, tolerance=args.tolerance)
    print(f"exported {out} ({meta.model.name} {meta.version})")
    print(
        f"ONNX Runtime vs PyTorch on {source}: max |delta probability| = {report.max_abs_prob_diff:.2e} "
        f"(tolerance {report.tolerance:.0e}) -> {'OK' if report.ok else 'FAIL'}"
    )
    return 0 if report.ok else EXIT_INCOMPLETE
