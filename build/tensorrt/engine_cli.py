"""`predilect trt-engine`: build a TensorRT engine from the exported ONNX and check it."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from predilect.artifacts import default_artifacts
from predilect.cli import EXIT_INCOMPLETE, command
from predilect.contract import LOGITS, PIXELS

from .engine import EngineCfg, build_engine, engine_logits


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predilect trt-engine", description=__doc__.splitlines()[0])
    artifacts = default_artifacts()
    p.add_argument("--onnx", type=Path, default=artifacts.onnx)
    p.add_argument("--engine", type=Path, default=artifacts.engine)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--no-plugin", action="store_true", help="build the reference graph (for comparison)")
    p.add_argument("--check", action="store_true", help="compare engine and ONNX Runtime logits on random inputs")
    return p


@command("trt-engine")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = EngineCfg(
        max_batch=args.max_batch, opt_batch=min(8, args.max_batch), fp16=args.fp16, use_plugin=not args.no_plugin
    )
    build_engine(args.onnx, args.engine, cfg)
    print(f"built {args.engine} from {args.onnx} (plugin={cfg.use_plugin}, fp16={cfg.fp16})")
    if not args.check:
        return 0
    import onnxruntime as ort

    shape = [d.dim_value for d in onnx.load(str(args.onnx)).graph.input[0].type.tensor_type.shape.dim[1:]]
    pixels = np.random.default_rng(0).standard_normal((min(4, args.max_batch), *shape)).astype(np.float32)
    expected = ort.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"]).run([LOGITS], {PIXELS: pixels})[
        0
    ]
    diff = float(np.abs(engine_logits(args.engine, pixels) - expected).max())
    tolerance = 5e-2 if args.fp16 else 1e-3
    print(f"TensorRT vs ONNX Runtime: max |delta logit| = {diff:.2e} (tolerance {tolerance:.0e})")
    return 0 if diff <= tolerance else EXIT_INCOMPLETE
