"""Per-disease operating points: the threshold that reaches a target sensitivity on a validation split.

For each disease with positives in the validation split, the threshold is the highest one at
which at least ``target_sensitivity`` of the validation positives are called positive (the k-th
highest positive score, k = ceil(target x positives)); the specificity that costs is reported on
the validation split and, honestly, on the test split the threshold never saw. A disease without
validation positives keeps its catalog threshold, and the report says so. The thresholds are
written into the checkpoint's catalog, which export copies into the ONNX metadata and
``assemble`` into the model repository, where the server applies them (``predilect.referral``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from predilect import contract
from predilect.catalog import Catalog
from predilect.metrics import Rates, rates, threshold_for_sensitivity


@dataclass(frozen=True)
class OperatingPoint:
    disease: str
    threshold: float
    chosen: bool  # False: no validation positives, the catalog's threshold was kept
    validation: Rates
    test: Rates | None
    previous_threshold: float = 0.5
    previous_test: Rates | None = None  # the test split at the catalog's previous threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "disease": self.disease,
            "threshold": self.threshold,
            "chosen": self.chosen,
            "validation": self.validation.to_dict(),
            "test": self.test.to_dict() if self.test else None,
            "previous_threshold": self.previous_threshold,
            "previous_test": self.previous_test.to_dict() if self.previous_test else None,
        }


def operating_points(
    catalog: Catalog,
    validation: tuple[np.ndarray, np.ndarray],
    *,
    target_sensitivity: float,
    test: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[OperatingPoint]:
    """One point per catalog disease from (labels, scores) matrices ``(N, C)`` in catalog order."""
    labels, scores = validation
    points = []
    for c, disease in enumerate(catalog):
        chosen = threshold_for_sensitivity(labels[:, c], scores[:, c], target_sensitivity)
        threshold = chosen if chosen is not None else disease.threshold
        points.append(
            OperatingPoint(
                disease=disease.id,
                threshold=threshold,
                chosen=chosen is not None,
                validation=rates(labels[:, c], scores[:, c], threshold),
                test=rates(test[0][:, c], test[1][:, c], threshold) if test is not None else None,
                previous_threshold=disease.threshold,
                previous_test=rates(test[0][:, c], test[1][:, c], disease.threshold) if test is not None else None,
            )
        )
    return points


def with_thresholds(catalog: Catalog, points: Sequence[OperatingPoint]) -> Catalog:
    """``catalog`` with each disease's threshold set to its operating point."""
    by_id = {p.disease: p.threshold for p in points}
    return Catalog(
        diseases=tuple(dataclasses.replace(d, threshold=by_id.get(d.id, d.threshold)) for d in catalog),
        version=catalog.version,
    )


def write_catalog(checkpoint: Path, catalog: Catalog, out: Path | None = None) -> Path:
    """Write ``catalog`` into the checkpoint's metadata (atomically; in place unless ``out``)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    checkpoint = Path(checkpoint)
    with safe_open(str(checkpoint), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    if contract.KEY_CATALOG not in metadata:
        raise ValueError(f"{checkpoint} carries no catalog ({contract.KEY_CATALOG}); is it a predilect checkpoint?")
    old = Catalog.from_json(metadata[contract.KEY_CATALOG])
    if old.ids != catalog.ids:
        raise ValueError(f"catalog ids {catalog.ids} differ from the checkpoint's {old.ids}")
    metadata[contract.KEY_CATALOG] = catalog.to_json()
    tensors = load_file(str(checkpoint))
    target = Path(out or checkpoint)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
    os.close(handle)
    try:
        save_file(tensors, staging, metadata=metadata)
        os.replace(staging, target)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
    return target


def report_markdown(points: Sequence[OperatingPoint], *, target_sensitivity: float, header: Sequence[str]) -> str:
    def cell(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:.3f}"

    lines = [*header, ""]
    lines += [
        f"Target sensitivity {target_sensitivity:.2f}, chosen on the validation split; the test split never "
        "saw the thresholds.",
        "",
        "| disease | threshold | val pos/neg | val sensitivity | val specificity | test pos/neg | test sensitivity "
        "| test specificity | before: threshold | before: test sensitivity | before: test specificity |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        v, t, b = p.validation, p.test, p.previous_test
        threshold = f"{p.threshold:.4f}" + ("" if p.chosen else " (kept: no val positives)")
        test_cells = (
            f"{t.positives}/{t.negatives} | {cell(t.sensitivity)} | {cell(t.specificity)}" if t else "- | - | -"
        )
        before = f"{p.previous_threshold:.4f} | {cell(b.sensitivity)} | {cell(b.specificity)}" if b else "- | - | -"
        lines.append(
            f"| {p.disease} | {threshold} | {v.positives}/{v.negatives} | {cell(v.sensitivity)} | "
            f"{cell(v.specificity)} | {test_cells} | {before} |"
        )
    return "\n".join(lines) + "\n"


def checkpoint_scores(checkpoint: Path, paths: Sequence[Path], *, batch_size: int = 32) -> np.ndarray:
    """Probabilities ``(N, C)`` of the checkpoint's model on images, through the served preprocessing."""
    import torch

    from predilect.models.checkpoint import load_checkpoint
    from predilect.preprocess import Preprocessor

    model, meta = load_checkpoint(checkpoint)
    preprocessor = Preprocessor(meta.preprocess, max_batch_size=batch_size)
    out = np.empty((len(paths), len(meta.catalog)), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            pixels = preprocessor.run([Path(p).read_bytes() for p in chunk]).pixels_or_raise()
            out[start : start + len(chunk)] = torch.sigmoid(model(torch.from_numpy(pixels))).numpy()
    return out
