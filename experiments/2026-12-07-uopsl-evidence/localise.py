"""Heatmap localisation of grid cells: export each cell's served checkpoint (as trained, and with the
evidence map instead of the attention where it was trained with attention) and run
`predilect localisation` on the phantom's test split; the reports land in localisation/.

    .venv/bin/python experiments/2026-12-07-uopsl-evidence/localise.py GRID PHANTOM OUT variant/seedK ...

Swapping the served map changes no logit (the map is read off the same attention); it is done by
rewriting the checkpoint's ModelCfg.heatmap, as `predilect train --heatmap evidence` would have set it.
"""

import dataclasses
import sys
import tempfile
from pathlib import Path

from predilect.build.export import export_onnx
from predilect.build.localisation_cli import main as localisation_main
from predilect.models.checkpoint import load_checkpoint, save_checkpoint


def run(grid: Path, phantom: Path, out: Path, cell: str) -> None:
    checkpoint = grid / cell / "model.safetensors"
    model, meta = load_checkpoint(checkpoint)
    maps = ["attention", "evidence"] if model.cfg.heatmap == "attention" else [model.cfg.heatmap]
    for heatmap in maps:
        report = out / f"{cell.replace('/', '-')}-{heatmap}.md"
        if report.is_file():
            continue
        with tempfile.TemporaryDirectory() as tmp:
            source = checkpoint
            if heatmap != model.cfg.heatmap:
                model.cfg = dataclasses.replace(model.cfg, heatmap=heatmap)
                source = Path(tmp) / "model.safetensors"
                save_checkpoint(source, model, preprocess=meta.preprocess, catalog=meta.catalog, training=meta.training)
            onnx = Path(tmp) / "model.onnx"
            export_onnx(source, onnx)
            assert localisation_main(["--onnx", str(onnx), "--phantom", str(phantom), "--report", str(report)]) == 0


if __name__ == "__main__":
    grid, phantom, out = (Path(a) for a in sys.argv[1:4])
    for cell in sys.argv[4:]:
        run(grid, phantom, out, cell)
