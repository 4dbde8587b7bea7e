"""`predilect trt-rewrite`: fold the exported attention head of an ONNX model into one plugin node."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import onnx

from predilect.artifacts import default_artifacts
from predilect.build.tensorrt.onnx_rewrite import DOMAIN, OP_TYPE, for_tensorrt, rewrite
from predilect.cli import CommandError, command
from predilect.outdir import out_folder


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predilect trt-rewrite", description=__doc__.splitlines()[0])
    p.add_argument("--onnx", type=Path, default=default_artifacts().onnx, help="the exported model")
    p.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="folder to write the rewritten model into (same name)"
    )
    p.add_argument(
        "--target",
        choices=("ort", "tensorrt"),
        default="ort",
        help="ort: the plugin node runs under ONNX Runtime (tests); tensorrt: as TensorRT's parser takes it",
    )
    return p


@command("trt-rewrite")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    model = rewrite(onnx.load(str(args.onnx)))
    if args.target == "tensorrt":
        model = for_tensorrt(model)
    out = out_folder(args.out, holds=args.onnx.name) / args.onnx.name
    if out.resolve() == args.onnx.resolve():
        raise CommandError(f"--out {args.out} is the folder of --onnx: the rewrite would replace the export")
    onnx.save(model, str(out))
    print(
        f"wrote {out}: attention head -> one {DOMAIN}.{OP_TYPE} node ({len(model.graph.node)} nodes, "
        f"target {args.target})"
    )
    return 0
