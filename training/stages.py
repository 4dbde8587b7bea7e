"""What both training stages share: reading the splits, tensors for the images, seeded batches,
the fundus augmentation, and the optimisation loop they run on."""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from predilect.catalog import Catalog
from predilect.errors import ConfigError
from predilect.preprocess import PreprocessCfg

from .data import load_fundus_pixels, load_oct_scans
from .manifest import Record, label_matrix, read_manifest

log = logging.getLogger(__name__)

Batch = dict[str, Tensor]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- splits and tensors


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


@dataclass
class ImageSet:
    """Model inputs ``x (N, ch, S, S)`` and labels ``y (N, C)`` of some records, in memory."""

    x: Tensor
    y: Tensor
    records: list[Record] = field(repr=False)

    def __len__(self) -> int:
        return len(self.records)


def fundus_set(
    records: Sequence[Record], preprocess: PreprocessCfg, catalog: Catalog, *, cache_dir: Path | None
) -> ImageSet:
    """Fundus tensors through the one shared (serving) preprocessing."""
    pixels = load_fundus_pixels(records, preprocess, cache_dir=cache_dir) if records else np.zeros((0, 3, 1, 1))
    return ImageSet(torch.from_numpy(pixels), torch.from_numpy(label_matrix(records, catalog)), list(records))


def oct_set(records: Sequence[Record], size: int, catalog: Catalog) -> ImageSet:
    scans = load_oct_scans(records, size=size) if records else np.zeros((0, 1, size, size), np.float32)
    return ImageSet(torch.from_numpy(scans), torch.from_numpy(label_matrix(records, catalog)), list(records))


def epoch_batches(n: int, batch_size: int, *, seed: int, epoch: int) -> list[Tensor]:
    """Index batches of one epoch: a permutation seeded by ``(seed, epoch)``; the last batch is
    dropped when it would hold a single image (BatchNorm)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    batches = list(torch.randperm(n, generator=generator).split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches.pop()
    return batches


def augment_fundus(pixels: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror half the batch (a mirrored right eye looks like a left eye) and jitter brightness
    and contrast a little; applied after the shared preprocessing."""
    flip = torch.rand(pixels.shape[0], generator=generator) < 0.5
    pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
    gain = 1.0 + 0.2 * (torch.rand(pixels.shape[0], 1, 1, 1, generator=generator) - 0.5)
    shift = 0.2 * (torch.rand(pixels.shape[0], 1, 1, 1, generator=generator) - 0.5)
    return pixels * gain + shift


# ----------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class LoopCfg:
    epochs: int
    lr: float
    weight_decay: float
    seed: int
    warmup_fraction: float = 0.1
    grad_clip: float = 5.0


@dataclass(frozen=True)
class FitResult:
    epochs: int
    steps: int
    seconds: float
    last_metrics: dict[str, float]


def fit(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Batch], tuple[Tensor, dict[str, float]]],
    train_loader_factory: Callable[[int], Iterable[Batch]],
    cfg: LoopCfg,
    *,
    run_dir: Path,
    steps_per_epoch: int,
    param_groups: list[dict] | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """AdamW with linear warm-up and cosine decay for ``cfg.epochs`` epochs (never a clock);
    one CSV row of mean metrics per epoch in ``run_dir/log.csv``."""
    start = time.monotonic()
    groups: list[dict] = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
    optimiser = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = max(1, int(cfg.warmup_fraction * total))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_at)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "log.csv"
    step, means = 0, {}
    for epoch in range(cfg.epochs):
        model.train()
        sums: dict[str, float] = {}
        count = 0
        for batch in train_loader_factory(epoch):
            loss, metrics = loss_fn(model, batch)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimiser.step()
            schedule.step()
            step += 1
            count += 1
            for key, value in {"loss": float(loss.detach()), **metrics}.items():
                sums[key] = sums.get(key, 0.0) + value
        means = {key: value / max(count, 1) for key, value in sums.items()}
        means["seconds"] = time.monotonic() - start
        _append_csv(log_path, {"epoch": epoch + 1, "step": step, **means})
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, means)
    return FitResult(epochs=cfg.epochs, steps=step, seconds=time.monotonic() - start, last_metrics=means)


def _append_csv(path: Path, row: dict[str, float]) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
