from safetensors import safe_open
from safetensors.torch import save_file, load_file
import sys
for s in (0,1,2):
    src=f"/tmp/loc3/al{s}e16/checkpoint/model.safetensors"
    with safe_open(src,"pt") as f: meta=f.metadata()
    meta={k: v.replace('"conv-aligned"','"conv-local"') for k,v in meta.items()}
    import os; os.makedirs(f"/tmp/loc4/al{s}",exist_ok=True)
    save_file(load_file(src), f"/tmp/loc4/al{s}/model.safetensors", metadata=meta)
from predilect.training.checkpoint import load_checkpoint
for s in (0,1,2):
    m,meta=load_checkpoint(__import__("pathlib").Path(f"/tmp/loc4/al{s}/model.safetensors")); print(s, meta.model.backbone, meta.preprocess.size, meta.metrics.get("test_macro_auroc"))
