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
from predilect.manifest import Record, colour_screened, label_matrix, read_manifest
from predilect.preprocess import PreprocessCfg
from predilect.preprocess.pixels import load_fundus_pixels, load_fundus_squares
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
    patient (``val_fraction`` of the patients, deterministic). Only colour captures are kept
    (``colour_screened``): a red-free photograph is not a colour model's to train on or to score."""
    records = colour_screened(read_manifest(manifest, catalog=catalog))
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
    every image every epoch would cost more than the model. Same items, same augmentation stream; with the
    acquisition policy on, the field squares it starts from are held too (uint8, ``load_fundus_squares``)."""

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
        side = augment.source_px if augment is not None else None
        self.squares = (
            None if side is None else load_fundus_squares(records, preprocess, side=side, cache_dir=cache_dir)
        )

    def __len__(self) -> int:
        return len(self.targets)

    def get(self, index: int, *, epoch: int = 0) -> dict[str, Any]:
        pixels = self.pixels[index]
        if self.augment is not None:
            squares = self.squares
            source = None if squares is None else (lambda: squares[index])
            pixels = self.augment(pixels, item_rng(self.seed, epoch, index), source=source)
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
        geometry = torch.from_numpy(self.source.geometry[int(self.source._record[index])])
        return {"scan": scan, "labels": torch.from_numpy(self.targets[index]), "geometry": geometry, "index": index}

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
    """One epoch of fundus batches, each joined with OCT scans (``scan``, ``oct_labels``): the next
    batch of an UNPAIRED OCT loader (the OCT side cycles through its own epochs), or, with
    ``partners`` (``OctPartners``), one chosen scan per fundus image of ``oct_dataset``.
    Deterministic in ``(seed, epoch)`` and resumable mid-epoch (``skip_batches``), as ``fit`` needs."""

    def __init__(
        self,
        fundus: Any,
        oct_factory: Callable[[int], Any] | None,
        *,
        epoch: int,
        partners: OctPartners | None = None,
        oct_dataset: Any = None,
    ) -> None:
        self.fundus, self.oct_factory, self.epoch = fundus, oct_factory, epoch
        self.partners, self.oct_dataset = partners, oct_dataset
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

    def _partner_batch(self, indices: Tensor, batch: int) -> Batch:
        assert self.partners is not None
        picks = self.partners.pick(indices.tolist(), epoch=self.epoch, batch=batch)
        items = [self.oct_dataset.get(j, epoch=self.epoch) for j in picks]
        return {key: torch.stack([it[key] for it in items]) for key in ("scan", "labels", "geometry")}

    def __iter__(self) -> Iterator[Batch]:
        octs = self._oct_batches() if self.oct_factory is not None and self.partners is None else None
        for k, batch in enumerate(self.fundus, start=self.start):
            out = {"pixels": batch["pixels"], "labels": batch["labels"]}
            scan: Batch | None = None
            if self.partners is not None:
                scan = self._partner_batch(batch["index"], k)
            elif octs is not None:
                scan = next(octs)
            if scan is not None:
                out["scan"], out["oct_labels"] = scan["scan"], scan["labels"]
                if "geometry" in scan and bool(torch.isfinite(scan["geometry"]).any()):
                    out["oct_geometry"] = scan["geometry"]  # per-scan lines; NaN rows: the run's default
            yield out


OCT_PAIRINGS = ("unpaired", "same_class", "same_eye")


class OctPartners:
    """For each fundus training image, the OCT scans it may be shown with (``OCT_PAIRINGS``):

    * ``same_class``: the scans whose label set equals the image's (MultiEYE's sampling: a random
      OCT image of the fundus image's class); when none has it, those sharing a finding, else all;
    * ``same_eye``: the scan(s) of the same patient and eye (paired data: the upper bound a
      paired method gets); an image without its own scan falls back to ``same_class``.

    ``pick`` draws one partner per image from ``(seed, epoch, batch)``, so a resumed epoch sees
    the same pairs."""

    def __init__(
        self,
        fundus: Sequence[Record],
        fundus_targets: np.ndarray,
        oct_records: Sequence[Record],
        oct_targets: np.ndarray,
        *,
        pairing: str,
        seed: int,
    ) -> None:
        if pairing not in OCT_PAIRINGS[1:]:
            raise ConfigError(f"OCT pairing must be one of {OCT_PAIRINGS[1:]} here, got {pairing!r}")
        if not len(oct_records):
            raise ConfigError(f"OCT pairing {pairing!r} needs OCT scans; the OCT manifest's train split is empty")
        self.seed = seed
        by_labels: dict[bytes, list[int]] = {}
        for j, row in enumerate(oct_targets > 0.5):
            by_labels.setdefault(row.tobytes(), []).append(j)
        by_eye: dict[tuple[str, str], list[int]] = {}
        for j, record in enumerate(oct_records):
            if record.patient_id and record.eye:
                by_eye.setdefault((record.patient_id, record.eye), []).append(j)
        oct_positive = oct_targets > 0.5
        everything = np.arange(len(oct_records))
        self.candidates: list[np.ndarray] = []
        self.paired = 0
        for record, row in zip(fundus, fundus_targets > 0.5, strict=True):
            own = by_eye.get((record.patient_id or "", record.eye or "")) if pairing == "same_eye" else None
            if own:
                self.paired += 1
                self.candidates.append(np.asarray(own))
                continue
            same = by_labels.get(row.tobytes())
            if same:
                self.candidates.append(np.asarray(same))
                continue
            shared = np.flatnonzero((oct_positive & row).any(axis=1)) if row.any() else np.array([], dtype=np.int64)
            self.candidates.append(shared if len(shared) else everything)

    def pick(self, fundus_indices: Sequence[int], *, epoch: int, batch: int) -> list[int]:
        rng = np.random.default_rng([self.seed, epoch, batch, 0x0C7])
        return [int(c[rng.integers(len(c))]) for c in (self.candidates[int(i)] for i in fundus_indices)]


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
