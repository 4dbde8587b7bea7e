"""`predilect assemble`: the Triton model repository from an exported ONNX model."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from predilect.artifacts import default_artifacts
from predilect.cli import add_dataclass_options, command, dataclass_from_args
from predilect.quality import load_quality_cfg
from predilect.serving.configs import ServingOptions
from predilect.serving.repository import assemble


def _parser() -> argparse.ArgumentParser:
    artifacts = default_artifacts()
    p = argparse.ArgumentParser(prog="predilect assemble", description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("--onnx", type=Path, default=artifacts.onnx, help="exported model (ONNX with predilect metadata)")
    p.add_argument("--out", type=Path, default=artifacts.repository, help="model repository to write")
    p.add_argument(
        "--quality",
        type=Path,
        default=None,
        help="gradability thresholds (a quality_calibration.json from `predilect gradability`; default: packaged)",
    )
    add_dataclass_options(p, ServingOptions, title="serving options")
    return p


@command("assemble")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quality = load_quality_cfg(args.quality) if args.quality is not None else None
    out = assemble(args.onnx, args.out, dataclass_from_args(ServingOptions, args), quality=quality)
    print(f"model repository written to {out}")
    return 0
