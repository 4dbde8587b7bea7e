"""Stage 2, ``predilect train finetune``: fundus only, no OCT input.

The served ``FundusClassifier`` is built from a stage-1 checkpoint: the fundus encoder, the
predilection-sites matrix carried into fundus token space (``carry(P)``) as the head's sites,
and the text-tied read-out (``s * W^T t_c``, ``b_c``) as the head's weight and bias; then it is
fine-tuned with per-disease BCE on fundus labels. ``matrix``:

* ``tune``: the sites are frozen for ``freeze_sites_epochs`` epochs (the fundus tokens settle
  into the matrix's space first), then trained with everything else;
* ``freeze``: the sites stay exactly as stage 1 left them;
* ``ablate``: no matrix: sites fixed at zero, i.e. uniform attention = mean pooling, with the
  global fundus embedding's read-out as the head (the same graph, so export is unchanged).

Without ``pretrained`` the classifier starts from random weights (the supervised baseline).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from predilect.catalog import Catalog
from predilect.errors import ConfigError
from predilect.preprocess import PreprocessCfg

from .checkpoint import CheckpointMeta, load_pretrain, save_checkpoint
from .evaluate import predict_proba
from .losses import site_bce
from .metrics import per_disease_auroc
from .model import FundusClassifier, ModelCfg
from .stages import Batch, LoopCfg, augment_fundus, epoch_batches, fit, fundus_set, read_splits, seed_everything
from .uopsl import fundus_head_init

log = logging.getLogger(__name__)
FINETUNE_MATRIX = ("tune", "freeze", "ablate")


@dataclass(frozen=True)
class FinetuneCfg:
    """Stage-2 options (``predilect train finetune --help``)."""

    epochs: int = field(default=12, metadata={"help": "fundus epochs"})
    batch_size: int = field(default=32, metadata={"help": "images per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (AdamW, warm-up + cosine)"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, batching and augmentation"})
    matrix: str = field(default="tune", metadata={"help": "tune | freeze | ablate the predilection-sites matrix"})
    freeze_sites_epochs: int = field(default=2, metadata={"help": "with --matrix tune: epochs before sites train"})
    image_size: int = field(default=224, metadata={"help": "input side, only without --pretrained"})
    widths: tuple[int, int, int] = field(default=(32, 64, 128), metadata={"help": "only without --pretrained"})
    sites_per_disease: int = field(default=4, metadata={"help": "only without --pretrained"})
    pos_freqs: int = field(default=4, metadata={"help": "only without --pretrained"})

    def __post_init__(self) -> None:
        if self.matrix not in FINETUNE_MATRIX:
            raise ConfigError(f"finetune --matrix must be one of {FINETUNE_MATRIX}, got {self.matrix!r}")
        for name in ("epochs", "batch_size", "image_size", "sites_per_disease"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.freeze_sites_epochs < 0:
            raise ConfigError(f"freeze_sites_epochs must be >= 0, got {self.freeze_sites_epochs}")
        if not 0.0 < self.lr < 1.0:
            raise ConfigError(f"lr must lie in (0, 1), got {self.lr}")


@dataclass(frozen=True)
class FinetuneResult:
    meta: CheckpointMeta
    path: Path
    val_macro_auroc: float | None
    test_macro_auroc: float | None
    test_auroc: dict[str, float]
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


def finetune(
    manifest: Path,
    out: Path,
    *,
    catalog: Catalog,
    pretrained: Path | None,
    cfg: FinetuneCfg = FinetuneCfg(),
    cache_dir: Path | None = None,
    report: Callable[[str], None] = log.info,
) -> FinetuneResult:
    """Run stage 2 on ``manifest`` and write the served checkpoint ``out``."""
    seed_everything(cfg.seed)
    if pretrained is not None:
        model, trained, preprocess, origin = classifier_from_pretrain(pretrained, cfg.matrix)
        unknown = sorted(set(trained.ids) - set(catalog.ids))
        if unknown:
            raise ConfigError(f"the pretrained model's categories {unknown} are not in --catalog")
        held = [d for d in catalog.ids if d not in set(trained.ids)]
    else:
        trained, held, origin = catalog, [], {"pretrained": None}
        preprocess = PreprocessCfg(size=cfg.image_size)
        model = FundusClassifier(
            ModelCfg(
                num_diseases=len(catalog),
                image_size=cfg.image_size,
                widths=cfg.widths,
                sites_per_disease=cfg.sites_per_disease,
                pos_freqs=cfg.pos_freqs,
            )
        )
        if cfg.matrix == "ablate":
            with torch.no_grad():
                model.head.sites.zero_()
    splits = read_splits(manifest, catalog=catalog, drop=held)
    report(f"fundus: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test images")
    train_set = fundus_set(splits.train, preprocess, trained, cache_dir=cache_dir)
    sites: nn.Parameter = model.head.sites
    sites.requires_grad_(cfg.matrix == "tune" and cfg.freeze_sites_epochs == 0)
    generator = torch.Generator().manual_seed(cfg.seed)

    def loader(epoch: int) -> Iterator[Batch]:
        if cfg.matrix == "tune":
            sites.requires_grad_(epoch >= cfg.freeze_sites_epochs)
        for idx in epoch_batches(len(train_set), cfg.batch_size, seed=cfg.seed, epoch=epoch):
            yield {"pixels": augment_fundus(train_set.x[idx], generator), "labels": train_set.y[idx]}

    def loss_fn(m: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        loss = site_bce(m(batch["pixels"]), batch["labels"])
        return loss, {}

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        report(f"finetune epoch {epoch}/{cfg.epochs} loss {metrics['loss']:.4f} ({metrics['seconds']:.0f}s)")

    groups = [
        {"params": [p for n, p in model.named_parameters() if n != "head.sites"]},
        {"params": [sites]},  # in the optimiser from the start; frozen epochs give it no gradient
    ]
    result = fit(
        model,
        loss_fn,
        loader,
        LoopCfg(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed),
        run_dir=out.parent,
        steps_per_epoch=len(epoch_batches(len(train_set), cfg.batch_size, seed=cfg.seed, epoch=0)),
        param_groups=groups,
        on_epoch_end=on_epoch_end,
    )
    if cfg.matrix != "tune":
        sites.requires_grad_(False)
    metrics: dict[str, float] = {"seconds": result.seconds}
    val_auc = test_auc = None
    test_per: dict[str, float] = {}
    for split, records in (("val", splits.val), ("test", splits.test)):
        if not records:
            continue
        data = fundus_set(records, preprocess, trained, cache_dir=cache_dir)
        probs = predict_proba(model, data.x.numpy())
        per = per_disease_auroc(data.y.numpy(), probs, trained.ids)
        if per:
            macro = float(np.mean(list(per.values())))
            metrics[f"{split}_macro_auroc"] = macro
            metrics |= {f"{split}_auroc_{k}": v for k, v in per.items()}
            val_auc, test_auc = (macro, test_auc) if split == "val" else (val_auc, macro)
            test_per = per if split == "test" else test_per
    report(f"macro AUROC: val {val_auc}, test {test_auc}")
    training = {"stage": "finetune", **asdict(cfg), **origin}
    meta = save_checkpoint(out, model, preprocess=preprocess, catalog=trained, metrics=metrics, training=training)
    return FinetuneResult(meta, out, val_auc, test_auc, test_per, result.seconds)
