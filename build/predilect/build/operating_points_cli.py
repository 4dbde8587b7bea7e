"""`predilect operating-points`: per-disease thresholds for a target sensitivity, into the checkpoint's catalog.

Scores the checkpoint's model on the manifest's ``val`` split (through the served
preprocessing), picks each disease's threshold for ``--target-sensitivity`` there, reports the
specificity that costs on ``val`` and on ``test``, and writes the thresholds into the
checkpoint's catalog (in place, or ``--out``): `predilect export` then carries them into the
ONNX metadata and `predilect assemble` into the model repository, where the server applies them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from predilect.artifacts import default_artifacts
from predilect.build.operating_points import (
    checkpoint_scores,
    operating_points,
    report_markdown,
    with_thresholds,
    write_catalog,
)
from predilect.cli import CommandError, command
from predilect.outdir import out_folder


def _parser() -> argparse.ArgumentParser:
    artifacts = default_artifacts()
    p = argparse.ArgumentParser(prog="predilect operating-points", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=artifacts.checkpoint, help="checkpoint to read and update")
    p.add_argument("--manifest", type=Path, default=artifacts.manifest, help="manifest with val (and test) splits")
    p.add_argument("--target-sensitivity", type=float, default=0.9, help="sensitivity each disease must reach on val")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder to write the updated checkpoint into, same name (default: update it in place)",
    )
    p.add_argument("--report", type=Path, default=None, help="also write the table (markdown) and a .json beside it")
    return p


@command("operating-points")
def main(argv: Sequence[str] | None = None) -> int:
    from predilect.manifest import colour_screened, label_matrix, read_manifest
    from predilect.models.checkpoint import read_meta

    args = _parser().parse_args(argv)
    if not 0.0 < args.target_sensitivity <= 1.0:
        raise CommandError(f"--target-sensitivity must lie in (0, 1], got {args.target_sensitivity}")
    meta = read_meta(args.checkpoint)
    catalog = meta.catalog
    val = colour_screened(read_manifest(args.manifest, catalog=catalog, split="val"))
    if not val:
        raise CommandError(f"{args.manifest} has no 'val' split to choose operating points on")
    test = colour_screened(read_manifest(args.manifest, catalog=catalog, split="test"))
    print(f"scoring {len(val)} val and {len(test)} test images ...", flush=True)
    validation = (label_matrix(val, catalog), checkpoint_scores(args.checkpoint, [r.path for r in val]))
    held_out = (
        (label_matrix(test, catalog), checkpoint_scores(args.checkpoint, [r.path for r in test])) if test else None
    )
    points = operating_points(catalog, validation, target_sensitivity=args.target_sensitivity, test=held_out)
    target = out_folder(args.out, holds=args.checkpoint.name) / args.checkpoint.name if args.out else None
    out = write_catalog(args.checkpoint, with_thresholds(catalog, points), target)
    command_line = "predilect operating-points " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    text = report_markdown(
        points,
        target_sensitivity=args.target_sensitivity,
        header=[
            "# Operating points",
            "",
            f"Command: `{command_line}`; date {datetime.date.today().isoformat()}; "
            f"model {meta.model.name} {meta.version}; manifest `{args.manifest}`.",
        ],
    )
    print(text)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text, encoding="utf-8")
        data = {"command": command_line, "points": [p.to_dict() for p in points]}
        args.report.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(f"thresholds written into the catalog of {out}; `predilect export` carries them to ONNX")
    return 0
