"""`predilect trt-engine`: build a TensorRT engine from the exported ONNX, gated against ONNX Runtime.

Two ways in: ``--onnx``/``--engine`` (one model; gate images from ``--manifest``, else random
pixels and no AUROC), or ``--model-repository`` (a GPU-profile repository: first its decoder
gate on this GPU, nvJPEG against the training decoder, when the repository serves another
decoder than its model was trained with; then build or reuse the classifier's engine for this
host under ``--cache``; what the container entrypoint runs).

Two frontends write the same plan, sidecar and gate report: ``--frontend onnx`` (the default:
TensorRT's ONNX parser, precision from the ONNX types) and ``--frontend torch`` (Torch-TensorRT
compiles ``--checkpoint`` through ``torch.export``; precision from ``--precision``, or from the
repository's build request; needs ``torch_tensorrt`` on a CUDA host).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from predilect.artifacts import default_artifacts
from predilect.build.decoder_gate import DecoderGateError, gate_repository
from predilect.build.tensorrt.accuracy import AccuracyGateError
from predilect.build.tensorrt.plugin import TensorRTUnavailableError
from predilect.build.tensorrt.sidecar import FRONTENDS, TORCH_LOWERINGS, TORCH_PRECISIONS
from predilect.cli import EXIT_INCOMPLETE, EXIT_UNAVAILABLE, CommandError, command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predilect trt-engine", description=__doc__.splitlines()[0].split(": ", 1)[1])
    artifacts = default_artifacts()
    p.add_argument("--onnx", type=Path, default=artifacts.onnx, help="model whose types set the precision")
    p.add_argument("--reference-onnx", type=Path, help="FP32 export for the gate (default: --onnx)")
    p.add_argument(
        "--engine", type=Path, default=artifacts.engine, help=f"the plan to write (default {artifacts.engine})"
    )
    p.add_argument("--max-batch", type=int, default=16, help="profile max (= the served max_batch_size)")
    p.add_argument("--opt-batch", type=int, default=8, help="profile opt (= the preferred batch)")
    p.add_argument("--no-plugin", action="store_true", help="build the reference graph (for comparison)")
    p.add_argument("--manifest", type=Path, help="labelled images for the accuracy gate (AUROC change)")
    p.add_argument("--split", default="test", help="manifest split the gate uses")
    p.add_argument("--gate-images", type=int, default=64, help="held-out images the accuracy gate runs (default 64)")
    p.add_argument("--timing-cache", type=Path, help="TensorRT timing cache to reuse and update")
    p.add_argument("--model-repository", type=Path, help="build/reuse the engine of a GPU-profile repository")
    p.add_argument("--cache", type=Path, default=artifacts.cache / "engines", help="engine cache (repository mode)")
    torch_route = p.add_argument_group("torch frontend")
    torch_route.add_argument("--frontend", choices=FRONTENDS, default=FRONTENDS[0], help="onnx (default) or torch")
    torch_route.add_argument("--checkpoint", type=Path, default=artifacts.checkpoint, help="the model torch compiles")
    torch_route.add_argument(
        "--precision", choices=TORCH_PRECISIONS, help="torch: engine precision (default fp32; repository: its request)"
    )
    torch_route.add_argument(
        "--torch-lowering",
        choices=TORCH_LOWERINGS,
        default=TORCH_LOWERINGS[0],
        help="auto: a plugin generated from the custom op; qdp: the ONNX route's plugin",
    )
    return p


def _gate(args: argparse.Namespace, shape: Sequence[int], reference: Path):
    from predilect.build.tensorrt.engine import GateData

    if args.manifest is None:
        pixels = np.random.default_rng(0).standard_normal((min(8, args.max_batch), *shape)).astype(np.float32)
        return GateData(pixels=pixels, reference_onnx=reference)
    from predilect.build.tensorrt.gate_set import manifest_gate_set

    pixels, labels = manifest_gate_set(args.manifest, reference, split=args.split, limit=args.gate_images)
    return GateData(pixels=pixels, labels=labels, reference_onnx=reference)


def _torch(args: argparse.Namespace) -> str:
    """The torch frontend; returns what it built or reused."""
    from predilect.build.tensorrt.engine import EngineCfg
    from predilect.build.tensorrt.torch_engine import (
        TorchBuild,
        build_torch_engine,
        ensure_torch_engine,
        reference_onnx_for,
    )

    if args.model_repository is not None:
        if args.precision is not None:
            raise CommandError("--precision comes from the repository's build request (assemble --precision)")
        lowering = args.torch_lowering
        path, built = ensure_torch_engine(args.model_repository, args.cache, args.checkpoint, lowering=lowering)
        return f"{'built' if built else 'reused'} {path} (torch frontend)"
    from predilect.models.checkpoint import read_meta

    meta = read_meta(args.checkpoint)
    cfg = EngineCfg(
        opt_batch=args.opt_batch,
        max_batch=args.max_batch,
        use_plugin=not args.no_plugin,
        timing_cache=args.timing_cache,
    )
    build = TorchBuild(precision=args.precision or "fp32", lowering=args.torch_lowering)
    with tempfile.TemporaryDirectory(prefix="predilect-torchtrt-") as folder:
        reference = args.reference_onnx or reference_onnx_for(args.checkpoint, Path(folder))
        sidecar = build_torch_engine(
            args.checkpoint, args.engine, cfg, build, gate=_gate(args, meta.preprocess.input_shape, reference)
        )
    where = f"{sidecar.gpu_name} sm{sidecar.compute_capability}"
    return f"built {args.engine} ({sidecar.precision}, {where}, torch frontend); accuracy gate {sidecar.gate}"


@command("trt-engine")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 1 <= args.opt_batch <= args.max_batch:
        raise CommandError(f"need 1 <= --opt-batch <= --max-batch, got {args.opt_batch}, {args.max_batch}")
    try:
        if args.model_repository is not None:
            decoder = gate_repository(args.model_repository, device_id=0)
            if decoder is not None:
                print(f"decoder gate passed: {decoder.describe()}")
        if args.frontend == "torch":
            print(_torch(args))
            return 0
        if args.precision is not None:
            raise CommandError("--precision is for --frontend torch; the onnx frontend reads it from the ONNX types")
        if args.model_repository is not None:
            from predilect.build.tensorrt.repository_engine import ensure_engine

            path, built = ensure_engine(args.model_repository, args.cache)
            print(f"{'built' if built else 'reused'} {path}")
            return 0
        from predilect.build.tensorrt.engine import EngineCfg, build_engine

        cfg = EngineCfg(
            opt_batch=args.opt_batch,
            max_batch=args.max_batch,
            use_plugin=not args.no_plugin,
            timing_cache=args.timing_cache,
        )
        shape = [d.dim_value for d in onnx.load(str(args.onnx)).graph.input[0].type.tensor_type.shape.dim[1:]]
        sidecar = build_engine(args.onnx, args.engine, cfg, gate=_gate(args, shape, args.reference_onnx or args.onnx))
    except (AccuracyGateError, DecoderGateError) as e:
        print(f"predilect trt-engine: {e}")
        return EXIT_INCOMPLETE
    except TensorRTUnavailableError as e:
        print(f"predilect trt-engine: {e}")
        return EXIT_UNAVAILABLE
    where = f"{sidecar.gpu_name} sm{sidecar.compute_capability}"
    print(f"built {args.engine} ({sidecar.precision}, {where}); accuracy gate {sidecar.gate}")
    return 0
