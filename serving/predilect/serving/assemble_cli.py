"""`predilect assemble`: the Triton model repository from an exported ONNX model.

``--profile cpu`` (the default): Python-backend models on CPU instances, what runs everywhere.
``--profile gpu``: DALI on the GPU and a TensorRT ``classifier`` whose engine the GPU host builds
(``predilect trt-engine --model-repository``, run by the container entrypoint). Both serve the
same ensemble name, input and outputs to the same client.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from predilect.artifacts import default_artifacts
from predilect.cli import add_dataclass_options, command, dataclass_from_args
from predilect.contract import PROFILES
from predilect.quality import load_quality_cfg
from predilect.serving.configs import ServingOptions
from predilect.serving.gpu_profile import GpuServingOptions
from predilect.serving.repository import assemble


def _parser(profile: str) -> argparse.ArgumentParser:
    artifacts = default_artifacts()
    p = argparse.ArgumentParser(prog="predilect assemble", description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("--profile", choices=PROFILES, default=PROFILES[0], help="cpu (default) or gpu")
    p.add_argument("--onnx", type=Path, default=artifacts.onnx, help="exported model (ONNX with predilect metadata)")
    p.add_argument("--out", type=Path, default=artifacts.repository, help="model repository to write")
    p.add_argument(
        "--quality",
        type=Path,
        default=None,
        help="gradability thresholds (a quality_calibration.json from `predilect gradability`; default: packaged)",
    )
    p.add_argument(
        "--reference-manifest",
        type=Path,
        default=None,
        help="labelled images whose --reference-split gives the reference distributions shift monitoring compares with",
    )
    p.add_argument("--reference-split", default="val", help="split of --reference-manifest (default: val)")
    p.add_argument("--reference-images", type=int, default=400, help="images the reference is taken on, at most")
    if profile == "gpu":
        p.add_argument("--gate-manifest", type=Path, help="labelled held-out images for the engine's accuracy gate")
        p.add_argument("--gate-images", type=int, default=64, help="held-out images in the gate set")
        p.add_argument("--calibration-manifest", type=Path, help="training images to calibrate int8/fp8 on")
        p.add_argument("--no-plugin", action="store_true", help="engine without the fused attention plugin")
        add_dataclass_options(p, GpuServingOptions, title="GPU serving options")
    else:
        add_dataclass_options(p, ServingOptions, title="serving options")
    return p


@command("assemble")
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(argv) if argv is not None else None
    known, _ = _parser(PROFILES[0]).parse_known_args(argv)
    args = _parser(known.profile).parse_args(argv)
    quality = load_quality_cfg(args.quality) if args.quality is not None else None
    reference = None
    if args.reference_manifest is not None:
        from predilect.serving.reference import reference_from_manifest
        from predilect.serving.repository import read_served_model, served_onnx

        onnx_path = served_onnx(args.onnx, getattr(args, "precision", "fp32")) if args.profile == "cpu" else args.onnx
        served = read_served_model(onnx_path, quality=quality)
        reference = reference_from_manifest(
            onnx_path, served, args.reference_manifest, split=args.reference_split, limit=args.reference_images
        )
        print(f"reference distributions: {reference.source}")
    if args.profile == "gpu":
        from predilect.serving.gpu_profile import assemble_gpu

        out = assemble_gpu(
            args.onnx,
            args.out,
            dataclass_from_args(GpuServingOptions, args),
            gate_manifest=args.gate_manifest,
            gate_images=args.gate_images,
            calibration_manifest=args.calibration_manifest,
            use_plugin=not args.no_plugin,
            reference=reference,
        )
        print(f"GPU model repository written to {out}; its engine is built on the GPU host by the container")
        return 0
    out = assemble(args.onnx, args.out, dataclass_from_args(ServingOptions, args), quality=quality, reference=reference)
    print(f"model repository written to {out}")
    return 0
