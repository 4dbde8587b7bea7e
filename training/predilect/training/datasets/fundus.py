"""Streaming fundus dataset: one file read and preprocessed per item, by the serving preprocessing.

Nothing is decoded up front: the dataset keeps each record's path (one contiguous byte array)
and its multi-hot labels (``N x C`` float32), about a hundred bytes per image, so memory does
not grow with the pixels of the data set, and DataLoader workers (forked or spawned) share no
Python objects per record. Each item is made by ``predilect.preprocess.Preprocessor`` -- the
object the Triton ``preprocess`` model runs -- so evaluation tensors equal served tensors bit
for bit; augmentation (training only) applies afterwards, the acquisition policy from the item's
field square at its own side (``square``).

DICOM inputs: a record whose file is DICOM is read through ``predilect.dicom.reader`` (the SDK's
own frame extraction), so training sees the payload the client would send for that frame
(``extra["frame"]``, 1-based, default 1). pydicom comes from the ``[dicom]`` extra.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from predilect.catalog import Catalog
from predilect.dicom.reader import DicomInputError, DicomSupportMissingError, is_dicom_bytes, iter_frames, read_dataset
from predilect.errors import UserError
from predilect.manifest import Record, field_angle_of, label_matrix
from predilect.preprocess import InvalidImageError, PreprocessCfg, Preprocessor
from predilect.quality import planes_from_pixels
from predilect.training.datasets.augment import FundusAugment


class DatasetItemError(UserError, ValueError):
    """An item that cannot be made (unreadable file, not an image the preprocessing takes); names the file."""


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of one item in one epoch: the same in any worker, process or resumed run."""
    return np.random.default_rng([seed, epoch, index])


def encode_paths(records: Sequence[Record]) -> np.ndarray:
    """Record paths as one fixed-width byte array (no Python object per record)."""
    return np.array([os.fsencode(r.path) for r in records], dtype=np.bytes_) if records else np.array([], "S1")


def read_payload(path: Path, *, frame: int = 1) -> bytes:
    """The encoded image a client would send for ``path``: the file's bytes, or a DICOM frame's payload."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetItemError(f"{path}: cannot read: {e.strerror or e}") from e
    if not is_dicom_bytes(data):
        return data
    try:
        for number, found in enumerate(iter_frames(read_dataset(data)), 1):
            if number == frame:
                return found.payload
    except (DicomInputError, DicomSupportMissingError) as e:
        raise DatasetItemError(f"{path}: {e}") from e
    raise DatasetItemError(f"{path}: DICOM instance has no frame {frame}")


class FundusDataset(Dataset):
    """``{"pixels": FloatTensor[3,S,S], "labels": FloatTensor[C], "index": int}`` per record.

    ``augment`` (a ``FundusAugment``) is applied to training items with the item's own random
    stream (``item_rng(seed, epoch, index)``); ``make_loader`` passes the epoch. Items without
    augmentation are exactly what the server computes for the same file.
    """

    def __init__(
        self,
        records: Sequence[Record],
        preprocess: PreprocessCfg,
        catalog: Catalog,
        *,
        augment: FundusAugment | None = None,
        seed: int = 0,
    ) -> None:
        self.preprocess = preprocess
        self.augment = augment
        self.seed = seed
        self._paths = encode_paths(records)
        self.targets = label_matrix(records, catalog)
        frames = [int(r.extra.get("frame", "1") or 1) for r in records]
        self._frames = np.asarray(frames, np.int32) if any(f != 1 for f in frames) else None
        angles = [field_angle_of(r) for r in records]
        self._angles = (
            np.asarray([np.nan if a is None else a for a in angles], np.float64)
            if any(a is not None for a in angles)
            else None
        )
        self._preprocessor: Preprocessor | None = None
        self._squares: Preprocessor | None = None  # the acquisition augmentation's field squares

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, index: int) -> Path:
        return Path(os.fsdecode(self._paths[index]))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_preprocessor"] = None  # one per worker process, made on first use
        state["_squares"] = None
        return state

    def _run(self, preprocessor: Preprocessor, index: int) -> np.ndarray:
        path = self.path(index)
        frame = int(self._frames[index]) if self._frames is not None else 1
        angle = float(self._angles[index]) if self._angles is not None else math.nan
        (out,) = preprocessor.run(
            [read_payload(path, frame=frame)], field_angles_deg=[None if math.isnan(angle) else angle]
        ).per_payload()
        if isinstance(out, InvalidImageError):
            raise DatasetItemError(f"{path}: {out}") from out
        return out

    def pixels(self, index: int) -> np.ndarray:
        """The preprocessed ``(3, S, S)`` float32 tensor of item ``index``, exactly as served."""
        if self._preprocessor is None:
            self._preprocessor = Preprocessor(self.preprocess, max_batch_size=1, num_threads=1)
        return self._run(self._preprocessor, index)

    def square(self, index: int, side: int) -> np.ndarray:
        """Item ``index``'s field-of-view square at ``side`` px, ``(side, side, 3)`` uint8: the same decode
        and crop as ``pixels``, before normalisation (``load_fundus_squares``, one item)."""
        if self._squares is None or self._squares.cfg.size != side:
            self._squares = Preprocessor(
                dataclasses.replace(self.preprocess, size=side), max_batch_size=1, num_threads=1
            )
        planes = planes_from_pixels(self._run(self._squares, index)[None], self.preprocess.mean, self.preprocess.std)
        return planes[0].transpose(1, 2, 0)

    def get(self, index: int, *, epoch: int = 0) -> dict[str, Any]:
        pixels = torch.from_numpy(self.pixels(index))
        if self.augment is not None:
            side = self.augment.source_px
            source = None if side is None else functools.partial(self.square, index, side)
            pixels = self.augment(pixels, item_rng(self.seed, epoch, index), source=source)
        return {"pixels": pixels, "labels": torch.from_numpy(self.targets[index]), "index": index}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get(index)
