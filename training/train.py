"""`predilect train`: UOPSL-style two-stage training on a manifest.

Stage 1 (teaching): an OCT encoder and the shared predilection head learn from unpaired OCT
B-scans, so the sites matrix starts where OCT shows each disease's layer disruptions.
Stage 2 (screening): the fundus encoder learns to attend with that matrix; the sites are
frozen for the first epochs so the fundus tokens move into the matrix's space rather than
the matrix being overwritten, then everything is fine-tuned. Held-out macro AUROC is
reported on fundus images preprocessed exactly as the server preprocesses them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from predilect.catalog import DEFAULT_CATALOG, Catalog
from predilect.errors import ConfigError
from predilect.preprocess import PreprocessCfg

from .checkpoint import CheckpointMeta, save_checkpoint
from .data import OCT_INPUT_SIZE, load_fundus_pixels, load_oct_scans
from .evaluate import predict_proba
from .manifest import label_matrix, read_manifest
from .metrics import macro_auroc, per_disease_auroc
from .model import FundusClassifier, ModelCfg, OctClassifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainCfg:
    """Training hyper-parameters. Training stops after ``epochs``, never on a clock: the same
    cfg and data give the same model (and version) on a busy machine as on an idle one."""

    epochs: int = field(default=24, metadata={"help": "fundus epochs"})
    oct_epochs: int = field(default=6, metadata={"help": "OCT teaching epochs"})
    freeze_sites_epochs: int = field(default=3, metadata={"help": "fundus epochs with the sites matrix frozen"})
    batch_size: int = field(default=32, metadata={"help": "images per step"})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate (one-cycle)"})
    weight_decay: float = field(default=0.02, metadata={"help": "AdamW weight decay"})
    sites_per_disease: int = field(default=4, metadata={"help": "K, predilection sites per disease"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, shuffling and augmentation"})

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "sites_per_disease"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("oct_epochs", "freeze_sites_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.lr < 1.0:
            raise ConfigError(f"lr must lie in (0, 1), got {self.lr}")
        if self.weight_decay < 0.0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclass(frozen=True)
class TrainResult:
    meta: CheckpointMeta
    heldout_macro_auroc: float
    heldout_auroc: dict[str, float]
    seconds: float


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror half the batch (left and right eyes mirror each other) and jitter brightness."""
    flip = torch.rand(batch.shape[0], generator=generator) < 0.5
    batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
    gain = 1.0 + 0.1 * (torch.rand(batch.shape[0], 1, 1, 1, generator=generator) - 0.5)
    return batch * gain


def fit(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    cfg: TrainCfg,
    on_epoch: Callable[[int, float], None] | None = None,
    frozen: Sequence[nn.Parameter] = (),
    frozen_epochs: int = 0,
) -> int:
    """Minimise BCE on ``(x, y)`` for ``epochs`` epochs; returns the number of epochs run."""
    if epochs == 0:
        return 0
    generator = torch.Generator().manual_seed(cfg.seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, -(-len(x) // cfg.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=cfg.lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    loss_fn = nn.BCEWithLogitsLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    done = 0
    for epoch in range(epochs):
        for p in frozen:
            p.requires_grad_(epoch >= frozen_epochs)
        model.train()
        total = 0.0
        for idx in torch.randperm(len(x), generator=generator).split(cfg.batch_size):
            loss = loss_fn(model(_augment(xt[idx], generator)), yt[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(idx)
        done = epoch + 1
        if on_epoch:
            on_epoch(done, total / len(x))
    return done


def train(
    manifest: Path,
    out: Path,
    *,
    oct_manifest: Path | None,
    cfg: TrainCfg = TrainCfg(),
    preprocess: PreprocessCfg = PreprocessCfg(),
    catalog: Catalog = DEFAULT_CATALOG,
    cache_dir: Path | None = None,
    report: Callable[[str], None] = log.info,
) -> TrainResult:
    """Train on ``manifest`` (splits ``train`` and ``test``) and write the checkpoint to ``out``."""
    start = time.monotonic()
    torch.manual_seed(cfg.seed)
    train_rec = read_manifest(manifest, catalog=catalog, split="train")
    held_rec = read_manifest(manifest, catalog=catalog, split="test")
    if not train_rec or not held_rec:
        raise ValueError(f"{manifest} needs rows in both splits 'train' and 'test' (legacy 'heldout')")
    report(f"preprocessing {len(train_rec) + len(held_rec)} fundus images with the serving pipeline")
    x_train = load_fundus_pixels(train_rec, preprocess, cache_dir=cache_dir)
    x_held = load_fundus_pixels(held_rec, preprocess, cache_dir=cache_dir)
    y_train, y_held = label_matrix(train_rec, catalog), label_matrix(held_rec, catalog)

    model_cfg = ModelCfg(num_diseases=len(catalog), image_size=preprocess.size, sites_per_disease=cfg.sites_per_disease)
    model = FundusClassifier(model_cfg)
    if oct_manifest is not None:
        _teach_sites_from_oct(model, oct_manifest, cfg=cfg, catalog=catalog, report=report)
        frozen, frozen_epochs = [model.head.sites], cfg.freeze_sites_epochs
    else:
        frozen, frozen_epochs = [], 0

    def on_epoch(epoch: int, loss: float) -> None:
        report(f"fundus epoch {epoch}/{cfg.epochs} loss {loss:.4f} ({time.monotonic() - start:.0f}s)")

    fit(
        model,
        x_train,
        y_train,
        epochs=cfg.epochs,
        cfg=cfg,
        on_epoch=on_epoch,
        frozen=frozen,
        frozen_epochs=frozen_epochs,
    )
    probs = predict_proba(model, x_held)
    per = per_disease_auroc(y_held, probs, catalog.ids)
    macro = macro_auroc(y_held, probs, catalog.ids)
    metrics = {"heldout_macro_auroc": macro, **{f"heldout_auroc_{k}": v for k, v in per.items()}}
    meta = save_checkpoint(out, model, preprocess=preprocess, catalog=catalog, metrics=metrics)
    return TrainResult(meta=meta, heldout_macro_auroc=macro, heldout_auroc=per, seconds=time.monotonic() - start)


def _teach_sites_from_oct(
    model: FundusClassifier,
    oct_manifest: Path,
    *,
    cfg: TrainCfg,
    catalog: Catalog,
    report: Callable[[str], None],
) -> None:
    records = read_manifest(oct_manifest, catalog=catalog)
    scans, labels = load_oct_scans(records), label_matrix(records, catalog)
    oct_cfg = replace(model.cfg, image_size=OCT_INPUT_SIZE, in_channels=1)
    oct_model = OctClassifier(oct_cfg, model.head)  # shares the sites matrix and read-out

    def on_epoch(epoch: int, loss: float) -> None:
        report(f"OCT teaching epoch {epoch}/{cfg.oct_epochs} loss {loss:.4f}")

    fit(oct_model, scans, labels, epochs=cfg.oct_epochs, cfg=cfg, on_epoch=on_epoch)
