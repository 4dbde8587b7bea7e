"""Demo training with a chosen backbone, then ONNX export (localisation runs after). argv: backbone out seed."""
import sys
from pathlib import Path

from predilect.build.export import export_onnx
from predilect.training.train import runs, train

backbone, out, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
epochs = int(sys.argv[4]) if len(sys.argv) > 4 else 8
phantom = Path("/work/main/artifacts/phantom")
common = [
    f"loop.seed={seed}",
    "data.preprocess.size=128",
    "model.widths=[24, 48, 96]",
    f'model.backbone="{backbone}"',
    "loop.lr=0.002",
    "pretrain.in_memory=true",
    "finetune.in_memory=true",
]
first, second = runs(phantom / "manifest.csv", oct_manifest=phantom / "oct_manifest.csv", common=common,
                     pretrain=[f"loop.epochs={epochs}"], finetune=[f"loop.epochs={epochs}"])
result = train(first, second, out / "checkpoint" / "model.safetensors", cache_dir=Path("/tmp/loc3/cache"), report=print)
print("test macro AUROC", result.finetune.test_macro_auroc, "val", result.finetune.val_macro_auroc)
export_onnx(out / "checkpoint" / "model.safetensors", out / "model.onnx")
