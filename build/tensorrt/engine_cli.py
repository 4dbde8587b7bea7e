"""`predilect trt-engine`: build a TensorRT engine from the exported ONNX, gated against ONNX Runtime.

Two ways in: ``--onnx``/``--engine`` (one model; gate images from ``--manifest``, else random
pixels and no AUROC), or ``--model-repository`` (a GPU-profile repository: build or reuse the
classifier's engine for this host under ``--cache``; what the container entrypoint runs).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from predilect.artifacts import default_artifacts
from predilect.cli import EXIT_INCOMPLETE, CommandError, command

from .accuracy import AccuracyGateError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predilect trt-engine", description=__doc__.splitlines()[0].split(": ", 1)[1])
    artifacts = default_artifacts()
    p.add_argument("--onnx", type=Path, default=artifacts.onnx, help="model whose types set the precision")
    p.add_argument("--reference-onnx", type=Path, help="FP32 export for the gate (default: --onnx)")
    p.add_argument("--engine", type=Path, default=artifacts.engine)
    p.add_argument("--max-batch", type=int, default=16, help="profile max (= the served max_batch_size)")
    p.add_argument("--opt-batch", type=int, default=8, help="profile opt (= the preferred batch)")
    p.add_argument("--no-plugin", action="store_true", help="build the reference graph (for comparison)")
    p.add_argument("--manifest", type=Path, help="labelled images for the accuracy gate (AUROC change)")
    p.add_argument("--split", default="test", help="manifest split the gate uses")
    p.add_argument("--gate-images", type=int, default=64)
    p.add_argument("--timing-cache", type=Path, help="TensorRT timing cache to reuse and update")
    p.add_argument("--model-repository", type=Path, help="build/reuse the engine of a GPU-profile repository")
    p.add_argument("--cache", type=Path, default=artifacts.cache / "engines", help="engine cache (repository mode)")
    return p


def _gate(args: argparse.Namespace, shape: list[int]):
    from predilect.build.tensorrt.engine import GateData

    reference = args.reference_onnx or args.onnx
    if args.manifest is None:
        pixels = np.random.default_rng(0).standard_normal((min(8, args.max_batch), *shape)).astype(np.float32)
        return GateData(pixels=pixels, reference_onnx=reference)
    from predilect.build.tensorrt.gate_set import manifest_gate_set

    pixels, labels = manifest_gate_set(args.manifest, reference, split=args.split, limit=args.gate_images)
    return GateData(pixels=pixels, labels=labels, reference_onnx=reference)


@command("trt-engine")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.model_repository is not None:
            from .repository_engine import ensure_engine

            path, built = ensure_engine(args.model_repository, args.cache)
            print(f"{'built' if built else 'reused'} {path}")
            return 0
        from .engine import EngineCfg, build_engine

        if not 1 <= args.opt_batch <= args.max_batch:
            raise CommandError(f"need 1 <= --opt-batch <= --max-batch, got {args.opt_batch}, {args.max_batch}")
        cfg = EngineCfg(
            opt_batch=args.opt_batch,
            max_batch=args.max_batch,
            use_plugin=not args.no_plugin,
            timing_cache=args.timing_cache,
        )
        shape = [d.dim_value for d in onnx.load(str(args.onnx)).graph.input[0].type.tensor_type.shape.dim[1:]]
        sidecar = build_engine(args.onnx, args.engine, cfg, gate=_gate(args, shape))
    except AccuracyGateError as e:
        print(f"predilect trt-engine: {e}")
        return EXIT_INCOMPLETE
    where = f"{sidecar.gpu_name} sm{sidecar.compute_capability}"
    print(f"built {args.engine} ({sidecar.precision}, {where}); accuracy gate {sidecar.gate}")
    return 0
