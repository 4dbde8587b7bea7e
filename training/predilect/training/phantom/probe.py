"""A quick difficulty probe of a phantom data set: logistic regression on pooled pixels.

Each photograph goes through the serving preprocessing, is average-pooled to ``grid`` x ``grid``
x 3 and standardised; one logistic regression per category (full-batch L-BFGS in torch, L2
weight chosen on the val split) is fitted on the training split and scored on the test split.
Categories without training positives (zero-shot ones) are left out. The CNN baseline is the
method's to report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from predilect.catalog import Catalog
from predilect.manifest import Record, label_matrix, read_manifest
from predilect.metrics import per_disease_auroc
from predilect.preprocess import PreprocessCfg


@dataclass(frozen=True)
class ProbeResult:
    macro_auroc: float
    auroc: dict[str, float]
    train_images: int
    test_images: int
    l2: float


def pooled_pixels(
    records: Sequence[Record], grid: int, cfg: PreprocessCfg = PreprocessCfg(), *, cache_dir: Path | None = None
) -> np.ndarray:
    """``(N, 3 * grid * grid)`` features: preprocessed images average-pooled to ``grid`` x ``grid``."""
    from predilect.preprocess.pixels import load_fundus_pixels

    pixels = load_fundus_pixels(list(records), cfg, cache_dir=cache_dir)
    n, c, s, _ = pixels.shape
    k = s // grid
    pooled = pixels[:, :, : k * grid, : k * grid].reshape(n, c, grid, k, grid, k).mean(axis=(3, 5))
    return pooled.reshape(n, -1)


def _fit_predict(x: np.ndarray, y: np.ndarray, test: np.ndarray, l2: float) -> np.ndarray:
    import torch

    xt, yt = torch.from_numpy(x).double(), torch.from_numpy(y).double()
    w = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt) + l2 * (w**2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        return torch.sigmoid(torch.from_numpy(test).double() @ w + b).numpy()


def pooled_pixel_probe(
    manifest: str | Path,
    catalog: Catalog,
    *,
    grid: int = 16,
    l2_grid: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1),
    cache_dir: Path | None = None,
) -> ProbeResult:
    """Test-split AUROC of per-category logistic regressions on pooled pixels (see the module docstring)."""
    split = {s: read_manifest(manifest, catalog=catalog, split=s) for s in ("train", "val", "test")}
    y = {s: label_matrix(r, catalog) for s, r in split.items()}
    trained = [i for i in range(len(catalog)) if y["train"][:, i].sum() > 0]
    ids = [catalog.ids[i] for i in trained]
    x = {s: pooled_pixels(r, grid, cache_dir=cache_dir) for s, r in split.items() if r}
    mean, std = x["train"].mean(axis=0), x["train"].std(axis=0) + 1e-6
    x = {s: (v - mean) / std for s, v in x.items()}
    l2 = l2_grid[0]
    if "val" in x and len(l2_grid) > 1:

        def val_macro(weight: float) -> float:
            scores = _fit_predict(x["train"], y["train"][:, trained], x["val"], weight)
            per = per_disease_auroc(y["val"][:, trained], scores, ids)
            return float(np.mean(list(per.values()))) if per else 0.0

        l2 = max(l2_grid, key=val_macro)
    scores = _fit_predict(x["train"], y["train"][:, trained], x["test"], l2)
    auroc = per_disease_auroc(y["test"][:, trained], scores, ids)
    return ProbeResult(float(np.mean(list(auroc.values()))), auroc, len(split["train"]), len(split["test"]), l2)
