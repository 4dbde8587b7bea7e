"""Held-out images for the accuracy gate (and calibration images for quantisation), from a manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from predilect.catalog import Catalog
from predilect.contract import KEY_CATALOG, KEY_PREPROCESS
from predilect.manifest import Record, label_matrix, read_manifest
from predilect.preprocess import PreprocessCfg
from predilect.preprocess.pixels import load_fundus_pixels


def manifest_gate_records(
    manifest: Path, onnx_path: Path, *, split: str, limit: int, seed: int = 0
) -> tuple[list[Record], Catalog, PreprocessCfg]:
    """Up to ``limit`` records of ``split`` (a seeded sample, in manifest order), with the exported
    model's catalog and preprocessing (from its metadata, so labels line up with its outputs)."""
    meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    catalog = Catalog.from_json(meta[KEY_CATALOG])
    cfg = PreprocessCfg.from_json(meta[KEY_PREPROCESS])
    records = read_manifest(manifest, catalog=catalog, split=split)
    if not records:
        raise ValueError(f"{manifest} has no images in split {split!r}")
    order = np.random.default_rng(seed).permutation(len(records))[:limit]
    return [records[i] for i in sorted(order)], catalog, cfg


def manifest_gate_set(
    manifest: Path, onnx_path: Path, *, split: str, limit: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``limit`` images of ``split`` (``manifest_gate_records``), preprocessed as served: ``(pixels, labels)``."""
    chosen, catalog, cfg = manifest_gate_records(manifest, onnx_path, split=split, limit=limit, seed=seed)
    return load_fundus_pixels(chosen, cfg), label_matrix(chosen, catalog)
