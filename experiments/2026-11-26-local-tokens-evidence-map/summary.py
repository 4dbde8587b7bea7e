"""Markdown tables of the backbone x heatmap comparison from /tmp/loc3 runs."""
import json, statistics, sys
from pathlib import Path
from predilect.training.checkpoint import read_meta
runs = [a.split("=") for a in sys.argv[1:]]  # label=dir
D = ["amd", "dme", "dr", "glaucoma", "rp", "rvo"]
print("| backbone, epochs a stage, seed | val macro AUROC | test macro AUROC | split | map | " + " | ".join(D) + " | macro |")
print("|---|---|---|---|---|" + "---|" * (len(D) + 1))
for label, d in runs:
    line = [l for l in open(f"/tmp/loc3/{d}.log") if l.startswith("test macro AUROC")][0].split()
    m = {"test_macro_auroc": float(line[3]), "val_macro_auroc": float(line[5])}
    for split in ("val", "test"):
        v = json.load(open(f"/tmp/loc3/{d}/var-{split}.json"))["variants"]
        for name in ("attention", "evidence"):
            h = v[name]["hit_rate"]
            print(f"| {label} | {m['val_macro_auroc']:.3f} | {m['test_macro_auroc']:.3f} | {split} | {name} | "
                  + " | ".join(f"{100*h[x]:.0f}%" for x in D) + f" | {100*v[name]['macro_hit_rate']:.1f}% |")
