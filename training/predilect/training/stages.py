"""What both training stages share: the catalog and splits of a run, the datasets (streaming, or
held in memory for small experiments), the unpaired fundus + OCT loader, and batched inference.

The loop itself is ``predilect.training.loop.fit`` and the loaders ``predilect.training.datasets.make_loader``."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from predilect.catalog import Catalog, resolve_catalog
from predilect.errors import ConfigError
from predilect.manifest import Record, label_matrix, read_manifest
from predilect.preprocess import PreprocessCfg
from predilect.preprocess.pixels import load_fundus_pixels
from predilect.training.datasets import FundusAugment, FundusDataset, OctCfg, OctDataset, item_rng, make_loader

log = logging.getLogger(__name__)

Batch = dict[str, Tensor]


def stage_inputs(manifest: Path | None, catalog: Path | None) -> tuple[Path, Catalog, str]:
    """A training stage's fundus manifest and its catalog (see ``resolve_catalog``); ConfigError
    when no manifest is set."""
    if manifest is None:
        raise ConfigError("no fundus manifest: set data.manifest (--manifest)")
    resolved, source = resolve_catalog(catalog, manifest)
    return manifest, resolved, source


# ----------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class Splits:
    train: list[Record]
    val: list[Record]
    test: list[Record]


def _in_carved_val(record: Record, fraction: float) -> bool:
    key = record.patient_id or record.path.as_posix()
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 16**8 < fraction


def read_splits(manifest: Path, *, catalog: Catalog, drop: Sequence[str] = (), val_fraction: float = 0.15) -> Splits:
    """Train/val/test records of ``manifest``; records with a disease in ``drop`` (held out for
    zero-shot) leave train and val. A manifest without a val split gets one carved from train by
    patient (``val_fraction`` of the patients, deterministic)."""
    records = read_manifest(manifest, catalog=catalog)
    by_split: dict[str, list[Record]] = {"train": [], "val": [], "test": []}
    for record in records:
        by_split[record.split].append(record)
    if not by_split["val"]:
        carved = [r for r in by_split["train"] if _in_carved_val(r, val_fraction)]
        by_split["train"] = [r for r in by_split["train"] if not _in_carved_val(r, val_fraction)]
        by_split["val"] = carved
    held = set(drop)
    for split in ("train", "val"):
        by_split[split] = [r for r in by_split[split] if not (r.labels & held)]
    if not by_split["train"]:
        raise ConfigError(f"{manifest}: no training images (after removing held-out categories {sorted(held)})")
    return Splits(by_split["train"], by_split["val"], by_split["test"])


# ----------------------------------------------------------------------------- datasets


class MemoryFundusDataset:
    """``FundusDataset``'s items from tensors preprocessed once (by the same shared pipeline, cached
    as ``.npy`` under ``cache_dir``) and held in RAM: for small experiment sets, where decoding
    every image every epoch would cost more than the model. Same items, same augmentation stream."""

    def __init__(
        self,
        records: Sequence[Record],
        preprocess: PreprocessCfg,
        catalog: Catalog,
        *,
        augment: FundusAugment | None = None,
        seed: int = 0,
        cache_dir: Path | None = None,
    ) -> None:
        self.pixels = torch.from_numpy(load_fundus_pixels(records, preprocess, cache_dir=cache_dir))
        self.targets = label_matrix(records, catalog)
        self.augment, self.seed = augment, seed

    def __len__(self) -> int:
        return len(self.targets)

    def get(self, index: int, *, epoch: int = 0) -> dict[str, Any]:
        pixels = self.pixels[index]
        if self.augment is not None:
            pixels = self.augment(pixels, item_rng(self.seed, epoch, index))
        return {"pixels": pixels, "labels": torch.from_numpy(self.targets[index]), "index": index}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get(index)


class MemoryOctDataset:
    """An ``OctDataset``'s un-augmented scans read once and held in RAM (its mirror still applies)."""

    def __init__(self, source: OctDataset) -> None:
        self.source = source
        self.scans = torch.stack([source.get(i)["scan"] for i in range(len(source))]) if len(source) else None
        self.targets = source.targets

    def __len__(self) -> int:
        return len(self.targets)

    def get(self, index: int, *, epoch: int = 0) -> dict[str, Any]:
        assert self.scans is not None
        scan = self.scans[index]
        rng = item_rng(self.source.seed, epoch, index)
        if self.source.augment and rng.random() < self.source.cfg.mirror_p:
            scan = scan.flip(-1)
        return {"scan": scan, "labels": torch.from_numpy(self.targets[index]), "index": index}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get(index)


class RedrawnLabels:
    """A dataset whose label rows are permuted afresh every epoch (a new permutation of the same
    rows, from ``(seed, epoch)`` alone): the control that keeps the images, the label marginals and
    the compute of the labelled data but gives a model nothing to memorise, since an image's label
    changes from one epoch to the next. ``targets`` stays the source's (what sampling reads)."""

    def __init__(self, source: Any, *, seed: int) -> None:
        self.source, self.seed = source, seed
        self.targets = source.targets
        self._epoch: int | None = None
        self._order = np.arange(len(self.targets))

    def __len__(self) -> int:
        return len(self.targets)

    def permutation(self, epoch: int) -> np.ndarray:
        """Which row's labels item ``i`` carries in ``epoch``."""
        if self._epoch != epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.targets))
            self._epoch = epoch
        return self._order

    def get(self, index: int, *, epoch: int = 0) -> dict[str, Any]:
        item = dict(self.source.get(index, epoch=epoch))
        item["labels"] = torch.from_numpy(self.targets[self.permutation(epoch)[index]])
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get(index)


def restrict(records: Sequence[Record], catalog: Catalog) -> list[Record]:
    """``records`` with only the labels ``catalog`` has (a model's trained categories: an image
    of a held-out category counts as negative for every trained one it does not also show)."""
    known = set(catalog.ids)
    return [r if r.labels <= known else dataclasses.replace(r, labels=r.labels & known) for r in records]


def fundus_dataset(
    records: Sequence[Record],
    preprocess: PreprocessCfg,
    catalog: Catalog,
    *,
    augment: FundusAugment | None = None,
    seed: int = 0,
    in_memory: bool = False,
    cache_dir: Path | None = None,
) -> FundusDataset | MemoryFundusDataset:
    records = restrict(records, catalog)
    if in_memory:
        return MemoryFundusDataset(records, preprocess, catalog, augment=augment, seed=seed, cache_dir=cache_dir)
    return FundusDataset(records, preprocess, catalog, augment=augment, seed=seed)


def oct_dataset(
    records: Sequence[Record], cfg: OctCfg, catalog: Catalog, *, augment: bool, seed: int, in_memory: bool
) -> OctDataset | MemoryOctDataset:
    dataset = OctDataset(restrict(records, catalog), cfg, catalog, augment=augment, seed=seed)
    return MemoryOctDataset(dataset) if in_memory else dataset


# ----------------------------------------------------------------------------- the unpaired loader


class PairedLoader:
    """One epoch of fundus batches, each joined with the next batch of an UNPAIRED OCT loader
    (``scan``, ``oct_labels``); the OCT side cycles through its own epochs. Deterministic in
    ``(seed, epoch)`` and resumable mid-epoch (``skip_batches``), as ``fit`` needs."""

    def __init__(self, fundus: Any, oct_factory: Callable[[int], Any] | None, *, epoch: int) -> None:
        self.fundus, self.oct_factory, self.epoch = fundus, oct_factory, epoch
        self.start = 0

    def __len__(self) -> int:
        return len(self.fundus)

    def skip_batches(self, count: int) -> None:
        self.fundus.skip_batches(count)
        self.start = count

    def _oct_batches(self) -> Iterator[Batch]:
        assert self.oct_factory is not None
        # OCT cycle c of fundus epoch e is OCT epoch e * 1000 + c: a function of the epoch alone.
        cycle, skip = 0, self.start
        while True:
            loader = self.oct_factory(self.epoch * 1000 + cycle)
            if skip >= len(loader):
                skip -= len(loader)
            else:
                if skip:
                    loader.skip_batches(skip)
                    skip = 0
                yield from loader
            cycle += 1

    def __iter__(self) -> Iterator[Batch]:
        octs = self._oct_batches() if self.oct_factory is not None else None
        for batch in self.fundus:
            out = {"pixels": batch["pixels"], "labels": batch["labels"]}
            if octs is not None:
                scan = next(octs)
                out["scan"], out["oct_labels"] = scan["scan"], scan["labels"]
            yield out


def loader_factory(
    dataset: Any, *, batch_size: int, sampling: str, seed: int, workers: int, distributed: bool
) -> Callable[[int], Any]:
    def factory(epoch: int) -> Any:
        return make_loader(
            dataset,
            batch_size=batch_size,
            workers=workers,
            sampling=sampling,
            seed=seed,
            epoch=epoch,
            distributed=distributed,
        )

    return factory


# ----------------------------------------------------------------------------- inference


def predict(
    fn: Callable[[Tensor], Tensor | dict[str, Tensor]], dataset: Any, *, batch_size: int = 64, key: str = "pixels"
) -> dict[str, np.ndarray]:
    """``fn`` over ``dataset`` in order (no augmentation), outputs concatenated on the CPU.

    ``fn`` maps a batch of inputs to a tensor (returned under ``out``) or a dict of tensors."""
    loader = make_loader(dataset, batch_size=batch_size, sampling="sequential", workers=0)
    parts: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode():
        for batch in loader:
            result = fn(batch[key])
            for name, value in (result if isinstance(result, dict) else {"out": result}).items():
                parts.setdefault(name, []).append(value.float().cpu().numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
