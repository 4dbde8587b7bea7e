"""`predilect train`: the command line of ``predilect.training.train``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from predilect.artifacts import default_artifacts
from predilect.cli import CommandError, add_dataclass_options, command, dataclass_from_args

from .train import TrainCfg, train


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="predilect train",
        description="Train the predilection-site classifier: OCT "
        "teaches the sites matrix, fundus learns to attend with it.",
    )
    artifacts = default_artifacts()
    p.add_argument("--manifest", type=Path, default=artifacts.manifest, help="fundus manifest CSV (train, test)")
    p.add_argument(
        "--oct-manifest",
        type=Path,
        default=None,
        help="unpaired OCT manifest; default: oct_manifest.csv beside --manifest if present",
    )
    p.add_argument("--no-oct", action="store_true", help="skip the OCT teaching stage")
    p.add_argument("--out", type=Path, default=artifacts.checkpoint)
    p.add_argument("--cache-dir", type=Path, default=None, help="cache for preprocessed tensors")
    add_dataclass_options(p, TrainCfg, title="training")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    return p


@command("train")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    oct_manifest = None if args.no_oct else args.oct_manifest or args.manifest.with_name("oct_manifest.csv")
    if oct_manifest is not None and not oct_manifest.is_file():
        if args.oct_manifest is not None:
            raise CommandError(f"OCT manifest not found: {oct_manifest}")
        oct_manifest = None
    cfg = dataclass_from_args(TrainCfg, args)
    result = train(
        args.manifest,
        args.out,
        oct_manifest=oct_manifest,
        cfg=cfg,
        cache_dir=args.cache_dir,
        report=lambda line: print(line, flush=True),
    )
    print(
        f"held-out macro AUROC {result.heldout_macro_auroc:.4f} "
        f"({', '.join(f'{k} {v:.3f}' for k, v in result.heldout_auroc.items())})"
    )
    print(f"checkpoint {args.out} version {result.meta.version} in {result.seconds:.0f}s")
    (args.out.parent / "metrics.json").write_text(
        json.dumps(
            {
                "heldout_macro_auroc": result.heldout_macro_auroc,
                "heldout_auroc": result.heldout_auroc,
                "seconds": result.seconds,
                "version": result.meta.version,
            },
            indent=2,
        )
        + "\n"
    )
    return 0
