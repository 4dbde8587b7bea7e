"""`predilect quantize`: an INT8 model for the CPU profile, written only if it passes its accuracy gate."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from predilect.artifacts import default_artifacts
from predilect.build.quantize import QuantizeCfg, int8_path, quantize
from predilect.cli import add_dataclass_options, command, dataclass_from_args
from predilect.outdir import out_folder


def _parser() -> argparse.ArgumentParser:
    artifacts = default_artifacts()
    p = argparse.ArgumentParser(prog="predilect quantize", description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("--onnx", type=Path, default=artifacts.onnx, help="the FP32 exported model")
    p.add_argument("--manifest", type=Path, default=artifacts.manifest, help="train split calibrates, held-out gates")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder for the INT8 model <onnx name>.int8.onnx (default: beside --onnx, where assemble reads it)",
    )
    add_dataclass_options(p, QuantizeCfg, title="calibration and gate")
    return p


@command("quantize")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = out_folder(args.out, holds=int8_path(args.onnx).name) / int8_path(args.onnx).name if args.out else None
    out = out or int8_path(args.onnx)
    report = quantize(args.onnx, args.manifest, out, dataclass_from_args(QuantizeCfg, args))
    print(report.describe())
    print(f"INT8 model written to {out}; serve it with `predilect assemble --precision int8 --onnx {args.onnx}`")
    return 0
