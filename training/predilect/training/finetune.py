"""Stage 2, ``predilect train finetune``: fundus only, no OCT input.

The served ``FundusClassifier`` is built from a stage-1 checkpoint: the fundus encoder, the
predilection-sites matrix carried into fundus token space (``carry(P)``) as the head's sites,
and the text-tied read-out (``s * W^T t_c``, ``b_c``) as the head's weight and bias; then it is
fine-tuned with per-disease BCE on fundus labels. ``matrix``:

* ``tune``: the sites are frozen for ``freeze_sites_epochs`` epochs (the fundus tokens settle
  into the matrix's space first), then trained with everything else;
* ``freeze``: the sites stay exactly as stage 1 left them;
* ``ablate``: no matrix: sites fixed at zero, i.e. uniform attention = mean pooling, with the
  global fundus embedding's read-out as the head (the same graph, so export is unchanged);
* ``random``: the attention head kept, its sites replaced by random ones (drawn from the run's
  seed) that never train: attention that carries no OCT knowledge, so ``tune`` against
  ``random`` measures the matrix with the head held fixed, and ``random`` against ``ablate``
  the head (attention against mean pooling).

Without ``pretrained`` the classifier starts from random weights (the supervised baseline).
Each epoch ends with the validation split's macro AUROC (in ``epochs.csv`` and the epoch's log
line); training never scores the test split.
A run is a ``FinetuneRun`` config: ``data``, ``loop``, ``model`` (used only without
``pretrained``) and ``finetune``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from predilect.catalog import Catalog
from predilect.errors import ConfigError
from predilect.metrics import per_disease_auroc
from predilect.models.checkpoint import CheckpointMeta, load_pretrain, save_checkpoint
from predilect.models.classifier import ArchCfg, FundusClassifier
from predilect.models.losses import site_bce
from predilect.models.uopsl import fundus_head_init
from predilect.preprocess import PreprocessCfg
from predilect.training.config import RunConfig, save_config
from predilect.training.datasets import FundusAugment
from predilect.training.loop import STATE_FILE, default_param_groups, fit, is_main_process, seed_everything
from predilect.training.stages import (
    Batch,
    fundus_dataset,
    loader_factory,
    model_device,
    predict,
    read_splits,
    stage_inputs,
)

log = logging.getLogger(__name__)
FINETUNE_MATRIX = ("tune", "freeze", "ablate", "random")


@dataclass(frozen=True)
class FinetuneCfg:
    """The ``finetune`` section."""

    pretrained: str = field(default="", metadata={"help": "stage-1 checkpoint; empty: train from scratch"})
    matrix: str = field(
        default="tune", metadata={"help": "tune | freeze | ablate | random (fixed random sites) the sites matrix"}
    )
    freeze_sites_epochs: int = field(default=2, metadata={"help": "with --matrix tune: epochs before sites train"})
    holdout: tuple[str, ...] = field(
        default=(), metadata={"help": "without --pretrained: categories left out (with it: the pretraining's)"}
    )
    in_memory: bool = field(default=False, metadata={"help": "hold preprocessed images in RAM (small sets)"})

    def __post_init__(self) -> None:
        if self.matrix not in FINETUNE_MATRIX:
            raise ConfigError(f"finetune matrix must be one of {FINETUNE_MATRIX}, got {self.matrix!r}")
        if self.freeze_sites_epochs < 0:
            raise ConfigError(f"freeze_sites_epochs must be >= 0, got {self.freeze_sites_epochs}")


class FinetuneRun(RunConfig):
    """A stage-2 run: ``data``, ``loop``, ``model`` (only without ``finetune.pretrained``), ``finetune``."""

    model: ArchCfg = ArchCfg()
    finetune: FinetuneCfg = FinetuneCfg()


@dataclass(frozen=True)
class FinetuneResult:
    """What stage 2 measured: on the validation split only (the test split is for ``predilect evaluate``)."""

    meta: CheckpointMeta | None  # None on DDP ranks other than 0
    path: Path
    val_macro_auroc: float | None
    seconds: float


def classifier_from_pretrain(pretrained: Path, matrix: str) -> tuple[FundusClassifier, Catalog, PreprocessCfg, dict]:
    """The served classifier initialised from a stage-1 checkpoint (see the module docstring)."""
    uopsl, meta = load_pretrain(pretrained)
    classifier = FundusClassifier(meta.cfg.fundus)
    classifier.encoder.load_state_dict(uopsl.fundus.state_dict())
    head = fundus_head_init(uopsl, matrix=matrix)
    with torch.no_grad():
        for name, value in head.items():
            getattr(classifier.head, name).copy_(value)
    return classifier, meta.catalog, meta.preprocess, {"pretrained": str(pretrained), "pretrain": meta.training}


class _SitesSchedule:
    """``on_epoch_end`` hook: with ``tune``, the sites start training after ``freeze`` epochs."""

    def __init__(self, sites: nn.Parameter, *, matrix: str, freeze: int) -> None:
        self.sites, self.matrix, self.freeze = sites, matrix, freeze
        self.set(0)

    def set(self, epoch: int) -> None:
        self.sites.requires_grad_(self.matrix == "tune" and epoch >= self.freeze)

    def __call__(self, epoch: int, model: nn.Module) -> dict[str, float]:
        self.set(epoch + 1)  # fit's epochs count from 0; this runs after epoch ``epoch``
        return {"sites_trainable": float(self.sites.requires_grad)}


class _Validation:
    """``on_epoch_end`` hook: the schedule's, then the validation split's macro AUROC (the metric training
    shows each epoch; never the test split's)."""

    def __init__(self, schedule: _SitesSchedule, dataset: Any, catalog: Catalog) -> None:
        self.schedule, self.dataset, self.catalog = schedule, dataset, catalog

    def __call__(self, epoch: int, model: nn.Module) -> dict[str, float]:
        row = self.schedule(epoch, model)
        if self.dataset is not None and is_main_process():
            found = _aurocs(model, self.dataset, self.catalog)  # type: ignore[arg-type]
            model.train()
            if found:
                row["val_macro_auroc"] = float(np.mean(list(found.values())))
        return row


def finetune(
    run: FinetuneRun,
    out: Path,
    *,
    resume: bool = False,
    cache_dir: Path | None = None,
    report: Callable[[str], None] = log.info,
) -> FinetuneResult:
    """Run stage 2 as ``run`` says and write the served checkpoint ``out`` (logs, state and config
    of the run go to ``out.parent``)."""
    start = time.monotonic()
    data, cfg, loop = run.data, run.finetune, run.loop
    manifest, catalog, source = stage_inputs(data.manifest, data.catalog)
    seed_everything(loop.seed)  # the initial weights are a function of the seed too
    if cfg.pretrained:
        model, trained, preprocess, origin = classifier_from_pretrain(Path(cfg.pretrained), cfg.matrix)
        unknown = sorted(set(trained.ids) - set(catalog.ids))
        if unknown:
            raise ConfigError(f"the pretrained model's categories {unknown} are not in the catalog {source}")
        if preprocess != data.preprocess:
            report(f"preprocessing from the pretrained checkpoint (size {preprocess.size}), not the data section")
    else:
        from predilect.training.pretrain import trained_catalog

        trained, origin, preprocess = trained_catalog(catalog, cfg.holdout), {"pretrained": None}, data.preprocess
        model = FundusClassifier(run.model.model_cfg(num_diseases=len(trained), image_size=preprocess.size))
        if cfg.matrix == "ablate":
            with torch.no_grad():
                model.head.sites.zero_()
    if cfg.matrix == "random":
        _randomise_sites(model.head.sites, seed=loop.seed)
    held = [d for d in catalog.ids if d not in set(trained.ids)]
    splits = read_splits(manifest, catalog=catalog, drop=held)
    report(f"catalog {source}: {len(trained)} categories; held out of training: {held or 'none'}")
    report(f"fundus: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test images")
    augment = FundusAugment(data.augment, preprocess) if data.augment.enabled else None
    train_set = fundus_dataset(
        splits.train, preprocess, trained, augment=augment, seed=loop.seed, in_memory=cfg.in_memory, cache_dir=cache_dir
    )
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    loaders = loader_factory(
        train_set,
        batch_size=loop.batch_size,
        sampling=data.sampling,
        seed=loop.seed,
        workers=loop.workers,
        distributed=distributed,
    )
    sites: nn.Parameter = model.head.sites
    schedule = _SitesSchedule(sites, matrix=cfg.matrix, freeze=cfg.freeze_sites_epochs)
    # The sites sit in the optimiser from the start (no decay: they are queries, not weights);
    # frozen epochs give them no gradient.
    groups = default_param_groups(model, loop.weight_decay)
    for group in groups:
        group["params"] = [p for p in group["params"] if p is not sites]
    groups.append({"params": [sites], "weight_decay": 0.0})

    def loss_fn(m: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        return site_bce(m(batch["pixels"]), batch["labels"]), {}

    if is_main_process():
        save_config(run, out.parent)
    if resume and (out.parent / STATE_FILE).is_file():  # the epoch the resumed run continues from
        schedule.set(int(torch.load(out.parent / STATE_FILE, map_location="cpu", weights_only=True)["epoch"]))
    val_set = (
        fundus_dataset(splits.val, preprocess, trained, in_memory=cfg.in_memory, cache_dir=cache_dir)
        if splits.val
        else None
    )
    hook = _Validation(schedule, val_set, trained)
    fit(model, loss_fn, loaders, loop, run_dir=out.parent, resume=resume, param_groups=groups, on_epoch_end=hook)
    sites.requires_grad_(cfg.matrix == "tune")
    seconds = time.monotonic() - start
    if not is_main_process():
        return FinetuneResult(None, out, None, seconds)
    metrics: dict[str, float] = {"seconds": seconds}
    found = _aurocs(model, val_set, trained) if val_set is not None else {}
    if found:
        metrics["val_macro_auroc"] = float(np.mean(list(found.values())))
        metrics |= {f"val_auroc_{k}": v for k, v in found.items()}
    val_auc = metrics.get("val_macro_auroc")
    report(f"val macro AUROC {_fmt(val_auc)} (the test split is for `predilect evaluate`)")
    training = {
        "stage": "finetune",
        **asdict(cfg),
        **origin,
        "loop": asdict(loop),
        "model": asdict(run.model),
        "fundus_images": len(splits.train),
    }
    meta = save_checkpoint(out, model.cpu(), preprocess=preprocess, catalog=trained, metrics=metrics, training=training)
    return FinetuneResult(meta, out, val_auc, seconds)


def _randomise_sites(sites: nn.Parameter, *, seed: int) -> None:
    """Sites drawn from ``seed`` alone, scaled as ``PredilectionHead`` initialises them."""
    g = torch.Generator().manual_seed(seed * 7919 + 17)
    with torch.no_grad():
        sites.copy_(torch.randn(sites.shape, generator=g) * sites.shape[-1] ** -0.5)


def _aurocs(model: FundusClassifier, dataset: Any, catalog: Catalog) -> dict[str, float]:
    model.eval()
    device = model_device(model)
    scores = predict(lambda x: model(x.to(device)), dataset)["out"]
    return per_disease_auroc(dataset.targets, scores, catalog.ids)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
