"""Held-out images for the accuracy gate (and calibration images for quantisation), from a manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from predilect.catalog import Catalog
from predilect.contract import KEY_CATALOG, KEY_PREPROCESS
from predilect.preprocess import PreprocessCfg


def manifest_gate_set(
    manifest: Path, onnx_path: Path, *, split: str, limit: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``limit`` images of ``split`` (a seeded sample), preprocessed as served: ``(pixels, labels)``.

    The catalog and preprocessing come from the exported model's metadata, so the labels line
    up with its outputs and the pixels with what the served pipeline computes.
    """
    from predilect.manifest import label_matrix, read_manifest
    from predilect.pixels import load_fundus_pixels

    meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    catalog = Catalog.from_json(meta[KEY_CATALOG])
    cfg = PreprocessCfg.from_json(meta[KEY_PREPROCESS])
    records = read_manifest(manifest, catalog=catalog, split=split)
    if not records:
        raise ValueError(f"{manifest} has no images in split {split!r}")
    order = np.random.default_rng(seed).permutation(len(records))[:limit]
    chosen = [records[i] for i in sorted(order)]
    return load_fundus_pixels(chosen, cfg), label_matrix(chosen, catalog)
