"""`predilect trt-rewrite`: fold the exported attention head of an ONNX model into one plugin node."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import onnx

from predilect.artifacts import default_artifacts
from predilect.build.tensorrt.onnx_rewrite import DOMAIN, OP_TYPE, for_tensorrt, rewrite
from predilect.cli import command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predilect trt-rewrite", description=__doc__.splitlines()[0])
    p.add_argument("--onnx", type=Path, default=default_artifacts().onnx, help="the exported model")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--target", choices=("ort", "tensorrt"), default="ort")
    return p


@command("trt-rewrite")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    model = rewrite(onnx.load(str(args.onnx)))
    if args.target == "tensorrt":
        model = for_tensorrt(model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(args.out))
    print(
        f"wrote {args.out}: attention head -> one {DOMAIN}.{OP_TYPE} node ({len(model.graph.node)} nodes, "
        f"target {args.target})"
    )
    return 0
