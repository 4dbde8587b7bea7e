"""Manifest records -> tensors: fundus images through the served preprocessing (cached), OCT scans
through the OCT-only resize used by the teaching stage."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from predilect.manifest import Record, field_angle_of
from predilect.preprocess.config import PreprocessCfg
from predilect.preprocess.runner import Preprocessor

OCT_INPUT_SIZE = 128
"""Side of the square OCT model input; OCT never reaches serving, so this is a training-only choice."""


def _cache_key(records: Sequence[Record], cfg: PreprocessCfg) -> str:
    digest = hashlib.sha256(cfg.to_json().encode())
    for r in records:
        stat = r.path.stat()
        digest.update(f"{r.path}|{stat.st_size}|{stat.st_mtime_ns}|{field_angle_of(r)}".encode())
    return digest.hexdigest()[:16]


def _run(preprocessor: Preprocessor, chunk: Sequence[Record]) -> np.ndarray:
    """The model inputs of ``chunk``, each with its camera's field angle (``manifest.field_angle_of``)."""
    done = preprocessor.run([r.path.read_bytes() for r in chunk], field_angles_deg=[field_angle_of(r) for r in chunk])
    return done.pixels_or_raise()


def load_fundus_pixels(
    records: Sequence[Record],
    cfg: PreprocessCfg,
    *,
    cache_dir: Path | None = None,
    batch_size: int = 32,
    num_threads: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Model inputs ``(N, 3, S, S)`` float32 for ``records``, made by the serving pipeline itself.

    Cached in ``cache_dir`` under a key of the spec and the files' sizes and mtimes.
    """
    cache = cache_dir / f"pixels-{_cache_key(records, cfg)}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        return np.load(cache)
    preprocessor = Preprocessor(cfg, max_batch_size=batch_size, num_threads=num_threads)
    out = np.empty((len(records), *cfg.input_shape), dtype=np.float32)
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        out[start : start + len(chunk)] = _run(preprocessor, chunk)
        if progress:
            progress(start + len(chunk), len(records))
    if cache is not None:
        _save_atomically(cache, out)
    return out


def load_fundus_squares(
    records: Sequence[Record],
    cfg: PreprocessCfg,
    *,
    side: int,
    cache_dir: Path | None = None,
    batch_size: int = 32,
    num_threads: int = 2,
) -> np.ndarray:
    """The field-of-view squares ``(N, side, side, 3)`` uint8 of ``records``: the decode and crop of
    ``cfg``'s pipeline resized to ``side`` (``cfg`` with ``size=side``), before normalisation.

    What the training augmentation re-photographs. Cached in ``cache_dir`` like ``load_fundus_pixels``.
    """
    from predilect.quality import planes_from_pixels  # exact inverse of the normalisation

    square_cfg = dataclasses.replace(cfg, size=side)
    cache = cache_dir / f"squares-{_cache_key(records, square_cfg)}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        return np.load(cache)
    preprocessor = Preprocessor(square_cfg, max_batch_size=batch_size, num_threads=num_threads)
    out = np.empty((len(records), side, side, 3), dtype=np.uint8)
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        pixels = _run(preprocessor, chunk)
        out[start : start + len(chunk)] = planes_from_pixels(pixels, cfg.mean, cfg.std).transpose(0, 2, 3, 1)
    if cache is not None:
        _save_atomically(cache, out)
    return out


def load_oct_scans(records: Sequence[Record], *, size: int = OCT_INPUT_SIZE) -> np.ndarray:
    """OCT B-scans as ``(N, 1, size, size)`` float32, roughly zero-mean unit-variance."""
    out = np.empty((len(records), 1, size, size), dtype=np.float32)
    for i, r in enumerate(records):
        with Image.open(r.path) as im:
            scan = np.asarray(im.convert("L").resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
        out[i, 0] = (scan / 255.0 - 0.5) / 0.25
    return out


def _save_atomically(path: Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary name beside ``path``, then renamed: a cache is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)
