"""Streaming OCT dataset: B-scan files, folders of B-scans, or volume stacks, one scan read per item.

A record's ``path`` may be

* one B-scan image (PNG, JPEG, single-page TIFF; 8- or 16-bit grey or RGB),
* a folder of B-scan images (one volume; scans in file-name order),
* a volume stack: a multi-page TIFF (one page per B-scan) or a ``.npy`` array ``(n_scans, H, W)``
  (uint8, uint16, or float already in [0, 1]; memory-mapped, never loaded whole).

``OctCfg.slices`` picks the scan of a volume: ``center`` (the foveal scan of a macular cube),
``random`` (a different scan each epoch, from the item's own random stream), or ``all`` (every
scan is an item; volumes are counted once at construction by listing the folder or reading the
file header). OCT never reaches serving, so its input (grey, ``size`` x ``size``, intensities
in [0, 1] then ``(x - mean) / std``) is a training-only choice; 8-bit scans resized at the same
size give the same tensors as the teaching stage's previous loader.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from predilect.catalog import Catalog
from predilect.errors import ConfigError
from predilect.manifest import Record, label_matrix
from predilect.training.datasets.fundus import DatasetItemError, encode_paths, item_rng

SCAN_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SLICE_MODES = ("center", "random", "all")
GEOMETRY_COLUMNS = ("oct_centre_x", "oct_centre_y", "oct_span")
"""Manifest columns placing a scan's line on the fundus plane (``predilect.models.uopsl.OctGeometry``:
fractions of the photograph's field); a record without them takes the run's (the data set's) default."""


def scan_geometry(records: Sequence[Record]) -> np.ndarray:
    """``(n, 3)`` float32 line geometry of each record from its ``GEOMETRY_COLUMNS`` cells, NaN where
    absent; ConfigError naming the record for a cell that is not a number."""
    out = np.full((len(records), 3), np.nan, dtype=np.float32)
    for i, record in enumerate(records):
        cells = [record.extra.get(c, "") for c in GEOMETRY_COLUMNS]
        if not any(cells):
            continue
        try:
            out[i] = [float(c) for c in cells]
        except ValueError as e:
            named = dict(zip(GEOMETRY_COLUMNS, cells, strict=True))
            raise ConfigError(f"{record.path}: OCT geometry {named} must be three numbers") from e
    return out


@dataclass(frozen=True)
class OctCfg:
    """How B-scans become model input."""

    size: int = field(default=128, metadata={"help": "side of the square OCT input, pixels"})
    slices: str = field(default="center", metadata={"help": "scan of a volume: center | random | all"})
    mean: float = field(default=0.5, metadata={"help": "intensity mean subtracted (intensities in [0, 1])"})
    std: float = field(default=0.25, metadata={"help": "intensity scale divided by"})
    mirror_p: float = field(default=0.0, metadata={"help": "probability of a horizontal mirror (training)"})

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ConfigError(f"OCT size must be >= 16, got {self.size}")
        if self.slices not in SLICE_MODES:
            raise ConfigError(f"OCT slices must be one of {SLICE_MODES}, got {self.slices!r}")
        if self.std <= 0:
            raise ConfigError(f"OCT std must be > 0, got {self.std}")
        if not 0.0 <= self.mirror_p <= 1.0:
            raise ConfigError(f"OCT mirror_p must lie in [0, 1], got {self.mirror_p}")


def _folder_scans(folder: Path) -> list[Path]:
    scans = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SCAN_SUFFIXES)
    if not scans:
        raise DatasetItemError(f"{folder}: folder holds no B-scan images ({', '.join(SCAN_SUFFIXES)})")
    return scans


def scan_count(path: Path) -> int:
    """Number of B-scans in a scan, folder or stack (reads headers and listings only)."""
    try:
        if path.is_dir():
            return len(_folder_scans(path))
        if path.suffix.lower() == ".npy":
            shape = np.load(path, mmap_mode="r").shape
            return int(shape[0]) if len(shape) == 3 else 1
        from PIL import Image

        with Image.open(path) as im:
            return int(getattr(im, "n_frames", 1))
    except (OSError, ValueError) as e:
        raise DatasetItemError(f"{path}: cannot read as an OCT scan or volume: {e}") from e


def _unit_range(array: np.ndarray, path: Path) -> np.ndarray:
    """Intensities in [0, 1] as float32, scaled by the integer type's range."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.floating):
        return np.clip(array.astype(np.float32), 0.0, 1.0)
    raise DatasetItemError(f"{path}: OCT pixels must be uint8, uint16 or float in [0, 1], got {array.dtype}")


def read_scan(path: Path, index: int, size: int) -> np.ndarray:
    """B-scan ``index`` of ``path`` as ``(size, size)`` float32 in [0, 1]."""
    from PIL import Image

    try:
        if path.is_dir():
            path, index = _folder_scans(path)[index], 0
        if path.suffix.lower() == ".npy":
            stack = np.load(path, mmap_mode="r")
            plane = _unit_range(np.asarray(stack[index] if stack.ndim == 3 else stack), path)
            return np.asarray(
                Image.fromarray(plane, mode="F").resize((size, size), Image.Resampling.BILINEAR), np.float32
            )
        with Image.open(path) as im:
            im.seek(index)
            if im.mode in ("L", "RGB", "RGBA", "P"):  # 8-bit: resize in 8 bit, as the previous loader did
                grey = im.convert("L").resize((size, size), Image.Resampling.BILINEAR)
                return np.asarray(grey, np.float32) / 255.0
            plane = _unit_range(np.asarray(im), path)
            return np.asarray(
                Image.fromarray(plane, mode="F").resize((size, size), Image.Resampling.BILINEAR), np.float32
            )
    except (OSError, ValueError, EOFError, IndexError) as e:
        raise DatasetItemError(f"{path}: cannot read B-scan {index}: {e}") from e


class OctDataset(Dataset):
    """``{"scan": FloatTensor[1,H,W], "labels": FloatTensor[C], "index": int, "slice": int}`` per item.

    ``index`` is the record's position in ``records``; with ``OctCfg.slices == "all"`` a volume
    yields one item per B-scan (``slice``). ``augment`` turns on the training-time mirror.
    """

    def __init__(
        self, records: Sequence[Record], cfg: OctCfg, catalog: Catalog, *, augment: bool = False, seed: int = 0
    ) -> None:
        self.cfg = cfg
        self.augment = augment
        self.seed = seed
        self._paths = encode_paths(records)
        labels = label_matrix(records, catalog)
        self.geometry = scan_geometry(records)
        self._slice: np.ndarray | None
        if cfg.slices == "all":
            counts = np.array([scan_count(r.path) for r in records], np.int64)
            self._record = np.repeat(np.arange(len(records), dtype=np.int64), counts)
            self._slice = np.concatenate([np.arange(c, dtype=np.int64) for c in counts]) if len(counts) else counts
            self.targets = labels[self._record]
        else:
            self._record = np.arange(len(records), dtype=np.int64)
            self._slice = None
            self.targets = labels

    def __len__(self) -> int:
        return len(self._record)

    def _pick_slice(self, item: int, path: Path, rng: np.random.Generator) -> int:
        if self._slice is not None:
            return int(self._slice[item])
        count = scan_count(path) if path.is_dir() or path.suffix.lower() in (".npy", ".tif", ".tiff") else 1
        return count // 2 if self.cfg.slices == "center" else int(rng.integers(count))

    def get(self, item: int, *, epoch: int = 0) -> dict[str, Any]:
        record = int(self._record[item])
        path = Path(os.fsdecode(self._paths[record]))
        rng = item_rng(self.seed, epoch, item)
        index = self._pick_slice(item, path, rng)
        scan = (read_scan(path, index, self.cfg.size) - self.cfg.mean) / self.cfg.std
        tensor = torch.from_numpy(scan).unsqueeze(0)
        if self.augment and rng.random() < self.cfg.mirror_p:
            tensor = tensor.flip(-1)
        return {
            "scan": tensor,
            "labels": torch.from_numpy(self.targets[item]),
            "geometry": torch.from_numpy(self.geometry[record]),
            "index": record,
            "slice": index,
        }

    def __getitem__(self, item: int) -> dict[str, Any]:
        return self.get(item)
