"""Exploratory: extra heatmap variants on val, 3 seeds (conv-local, 16 epochs)."""
import sys, json
import numpy as np
from pathlib import Path
from predilect.benchmarks.localisation_variants_cli import site_maps
from predilect.training.lesions import score_peak

def box3(m, lit):
    g = m.shape[0]
    p = np.pad(np.where(lit, m, 0.0), 1); w = np.pad(lit.astype(float), 1)
    s = sum(p[i:i+g, j:j+g] for i in range(3) for j in range(3))
    n = sum(w[i:i+g, j:j+g] for i in range(3) for j in range(3))
    return np.where(lit, s / np.maximum(n, 1), -np.inf)

def gauss(m, lit, c=0.5):
    g = m.shape[0]; p = np.pad(np.where(lit, m, 0.0), 1); w = np.pad(lit.astype(float), 1)
    k = np.array([[c*c, c, c*c],[c, 1, c],[c*c, c, c*c]])
    s = sum(k[i,j]*p[i:i+g, j:j+g] for i in range(3) for j in range(3))
    n = sum(k[i,j]*w[i:i+g, j:j+g] for i in range(3) for j in range(3))
    return np.where(lit, s / np.maximum(n, 1e-9), -np.inf)

V = {
 "evidence": lambda a, v, lit: np.maximum(a.mean(0) * v, 0),
 "evidence_lit": lambda a, v, lit: np.where(lit, np.maximum(a.mean(0) * v, 0), -1),
 "evidence_box3": lambda a, v, lit: box3(np.maximum(a.mean(0) * v, 0), lit),
 "evidence_gauss": lambda a, v, lit: gauss(np.maximum(a.mean(0) * v, 0), lit),
 "evidence_maxsite": lambda a, v, lit: np.maximum((a * v).max(0), 0),
}
split = sys.argv[1]
pattern = sys.argv[2] if len(sys.argv) > 2 else "/tmp/loc4/al{seed}/model.safetensors"
tag = sys.argv[3] if len(sys.argv) > 3 else ""
out = {}
for seed in (0, 1, 2):
    ck = Path(pattern.format(seed=seed))
    rows, _, _ = site_maps(ck, Path("/work/main/artifacts/phantom"), split, "train")
    res = {}
    for name, f in V.items():
        per = {}
        for r in rows:
            h = f(r["sites"], r["v"], r["lit"])
            per.setdefault(r["disease"], []).append(score_peak(h, r["box"], r["image"], r["disease"], r["lit"]).hit)
        res[name] = {d: float(np.mean(x)) for d, x in per.items()}
        res[name]["macro"] = float(np.mean([np.mean(x) for x in per.values()]))
    out[seed] = res
    for name in V:
        print(seed, f"{name:18s}", " ".join(f"{d}:{res[name][d]*100:5.1f}" for d in sorted(res[name])), flush=True)
json.dump(out, open(f"/tmp/loc4/explore-{split}{tag}.json", "w"), indent=1)
