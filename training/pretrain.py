"""Stage 1, ``predilect train pretrain``: unpaired fundus<->text and OCT<->text contrastive
pretraining with the predilection-sites matrix learned in OCT latent space (``training.uopsl``).

Ablations are one option each: ``matrix="ablate"`` (no sites: a plain contrastive model),
``text=False`` (``--no-text``: free class embeddings instead of encoded descriptions),
``oct=False`` (``--no-oct``: fundus only),
``shuffle_oct_labels`` (the control: OCT labels permuted across OCT images, so the OCT stage
keeps its images and compute but loses the disease knowledge). ``holdout`` removes categories
from training entirely (images, labels and texts) for the zero-shot evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from predilect.catalog import Catalog
from predilect.errors import ConfigError
from predilect.preprocess import PreprocessCfg

from .checkpoint import PretrainMeta, save_pretrain
from .evaluate import site_scores
from .metrics import macro_auroc
from .model import ModelCfg
from .stages import (
    Batch,
    LoopCfg,
    augment_fundus,
    epoch_batches,
    fit,
    fundus_set,
    oct_set,
    read_splits,
    seed_everything,
)
from .text import CatalogTexts, TextCfg, build_tokenizer, byte_tokenizer, catalog_corpus, load_tokenizer
from .uopsl import OctGeometry, PretrainWeights, UopslCfg, UopslModel, pretrain_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainCfg:
    """Stage-1 options (``predilect train pretrain --help`` lists them with these defaults)."""

    epochs: int = field(default=12, metadata={"help": "epochs over the fundus training images"})
    batch_size: int = field(default=32, metadata={"help": "fundus images per step (and as many OCT scans)"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate (AdamW, warm-up + cosine)"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, batching, augmentation, shuffling"})
    image_size: int = field(default=224, metadata={"help": "fundus model input side (the served preprocessing)"})
    oct_size: int = field(default=128, metadata={"help": "OCT model input side"})
    widths: tuple[int, int, int] = field(default=(32, 64, 128), metadata={"help": "conv encoder widths"})
    sites_per_disease: int = field(default=4, metadata={"help": "K, predilection sites per disease"})
    pos_freqs: int = field(default=4, metadata={"help": "Fourier frequencies of the anatomical position code"})
    matrix: str = field(default="learn", metadata={"help": "learn the sites matrix, or ablate it (plain CLIP)"})
    text: bool = field(default=True, metadata={"help": "--no-text: free class embeddings instead of text"})
    oct: bool = field(default=True, metadata={"help": "--no-oct: no OCT images (fundus<->text only)"})
    shuffle_oct_labels: bool = field(default=False, metadata={"help": "control: permute the OCT labels"})
    holdout: tuple[str, ...] = field(default=(), metadata={"help": "categories held out for zero-shot"})
    tokenizer: str = field(default="wordpiece", metadata={"help": "wordpiece | bytes | a local tokenizer.json"})
    vocab_size: int = field(default=2000, metadata={"help": "WordPiece vocabulary size (upper bound)"})
    context_length: int = field(default=48, metadata={"help": "text tokens per description"})
    text_width: int = field(default=128, metadata={"help": "text transformer width"})
    text_layers: int = field(default=2, metadata={"help": "text transformer layers"})
    text_heads: int = field(default=4, metadata={"help": "text transformer heads"})
    embed_dim: int = field(default=128, metadata={"help": "joint (text) embedding dimension"})
    w_clip_fundus: float = field(default=1.0, metadata={"help": "weight of fundus<->text CLIP loss"})
    w_clip_oct: float = field(default=1.0, metadata={"help": "weight of OCT<->text CLIP loss"})
    w_site_oct: float = field(default=1.0, metadata={"help": "weight of the OCT site loss (shapes the matrix)"})
    w_site_fundus: float = field(default=1.0, metadata={"help": "weight of the fundus site loss (matrix frozen)"})
    w_diversity: float = field(default=0.1, metadata={"help": "weight of the sites' diversity term"})
    oct_centre_x: float = field(default=0.5, metadata={"help": "OCT line centre, fraction of fundus width"})
    oct_centre_y: float = field(default=0.5, metadata={"help": "OCT line height, fraction of fundus height"})
    oct_span: float = field(default=0.735, metadata={"help": "OCT line length, fraction of fundus width"})

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "image_size", "oct_size", "sites_per_disease"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be >= 2 (BatchNorm, contrastive targets)")
        if self.matrix not in ("learn", "ablate"):
            raise ConfigError(f"pretrain --matrix must be learn or ablate, got {self.matrix!r}")
        if not self.oct and self.shuffle_oct_labels:
            raise ConfigError("--shuffle-oct-labels needs the OCT stage; drop --no-oct")
        if not 0.0 < self.lr < 1.0:
            raise ConfigError(f"lr must lie in (0, 1), got {self.lr}")

    def weights(self) -> PretrainWeights:
        return PretrainWeights(
            clip_fundus=self.w_clip_fundus,
            clip_oct=self.w_clip_oct,
            site_oct=self.w_site_oct,
            site_fundus=self.w_site_fundus,
            diversity=self.w_diversity,
        )


@dataclass(frozen=True)
class PretrainResult:
    meta: PretrainMeta
    path: Path
    val_site_macro_auroc: float | None
    val_global_macro_auroc: float | None
    seconds: float


def trained_catalog(catalog: Catalog, holdout: tuple[str, ...]) -> Catalog:
    """The catalog minus the held-out categories (the model's outputs)."""
    unknown = sorted(set(holdout) - set(catalog.ids))
    if unknown:
        raise ConfigError(f"--holdout names categories not in the catalog: {unknown}; catalog has {catalog.ids}")
    kept = [d for d in catalog.ids if d not in set(holdout)]
    if not kept:
        raise ConfigError("every category is held out; nothing to train")
    return catalog.subset(kept)


def make_tokenizer(cfg: PretrainCfg, catalog: Catalog):  # -> tokenizers.Tokenizer
    if cfg.tokenizer == "wordpiece":
        return build_tokenizer(catalog_corpus(catalog), vocab_size=cfg.vocab_size)
    if cfg.tokenizer == "bytes":
        return byte_tokenizer()
    path = Path(cfg.tokenizer)
    if not path.is_file():
        raise ConfigError(f"--tokenizer must be wordpiece, bytes or a tokenizer.json file; {path} does not exist")
    return load_tokenizer(path.read_text(encoding="utf-8"))


def build_model(cfg: PretrainCfg, catalog: Catalog, tokenizer) -> UopslModel:
    fundus = ModelCfg(
        num_diseases=len(catalog),
        image_size=cfg.image_size,
        widths=cfg.widths,
        sites_per_disease=cfg.sites_per_disease,
        pos_freqs=cfg.pos_freqs,
    )
    oct_cfg = ModelCfg(
        num_diseases=len(catalog),
        image_size=cfg.oct_size,
        in_channels=1,
        widths=cfg.widths,
        sites_per_disease=cfg.sites_per_disease,
        pos_freqs=cfg.pos_freqs,
        name="uopsl-oct",
    )
    text = TextCfg(
        vocab_size=tokenizer.get_vocab_size(),
        context_length=cfg.context_length,
        width=cfg.text_width,
        layers=cfg.text_layers,
        heads=cfg.text_heads,
        embed_dim=cfg.embed_dim,
    )
    uopsl = UopslCfg(
        fundus=fundus,
        oct=oct_cfg,
        text=text,
        geometry=OctGeometry(cfg.oct_centre_x, cfg.oct_centre_y, cfg.oct_span),
        matrix=cfg.matrix,
        text_mode="text" if cfg.text else "labels",
    )
    texts = None if not cfg.text else CatalogTexts.build(tokenizer, catalog, text.context_length)
    return UopslModel(uopsl, texts)


def _cycle_oct(n: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    epoch = 0
    while True:
        yield from epoch_batches(n, batch_size, seed=seed + 7_919, epoch=epoch)
        epoch += 1


def pretrain(
    manifest: Path,
    out: Path,
    *,
    oct_manifest: Path | None,
    catalog: Catalog,
    cfg: PretrainCfg = PretrainCfg(),
    cache_dir: Path | None = None,
    report: Callable[[str], None] = log.info,
) -> PretrainResult:
    """Run stage 1 on ``manifest`` (+ the unpaired ``oct_manifest``) and write ``out``."""
    seed_everything(cfg.seed)
    trained = trained_catalog(catalog, cfg.holdout)
    splits = read_splits(manifest, catalog=catalog, drop=cfg.holdout)
    preprocess = PreprocessCfg(size=cfg.image_size)
    report(f"fundus: {len(splits.train)} train / {len(splits.val)} val images; classes {trained.ids}")
    train_set = fundus_set(splits.train, preprocess, trained, cache_dir=cache_dir)
    val_set = fundus_set(splits.val, preprocess, trained, cache_dir=cache_dir)
    oct_train = None
    if oct_manifest is not None and cfg.oct:
        oct_records = read_splits(oct_manifest, catalog=catalog, drop=cfg.holdout).train
        oct_train = oct_set(oct_records, cfg.oct_size, trained)
        if cfg.shuffle_oct_labels:
            perm = np.random.default_rng(cfg.seed + 31).permutation(len(oct_train))
            oct_train.y = oct_train.y[torch.from_numpy(perm)]
        report(f"OCT: {len(oct_train)} train scans (unpaired){'; labels SHUFFLED' if cfg.shuffle_oct_labels else ''}")
    elif cfg.oct:
        report("no OCT manifest: fundus<->text only")

    tokenizer = make_tokenizer(cfg, trained)
    model = build_model(cfg, trained, tokenizer)
    generator = torch.Generator().manual_seed(cfg.seed)
    weights = cfg.weights()
    oct_batches = _cycle_oct(len(oct_train), cfg.batch_size, cfg.seed) if oct_train is not None else None

    def loader(epoch: int) -> Iterator[Batch]:
        for idx in epoch_batches(len(train_set), cfg.batch_size, seed=cfg.seed, epoch=epoch):
            batch = {"pixels": augment_fundus(train_set.x[idx], generator), "labels": train_set.y[idx]}
            if oct_batches is not None and oct_train is not None:
                oidx = next(oct_batches)
                batch["scan"], batch["oct_labels"] = oct_train.x[oidx], oct_train.y[oidx]
            yield batch

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        terms = " ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k != "seconds")
        report(f"pretrain epoch {epoch}/{cfg.epochs} {terms} ({metrics['seconds']:.0f}s)")

    result = fit(
        model,
        lambda m, b: pretrain_loss(m, b, weights=weights, generator=generator),  # type: ignore[arg-type]
        loader,
        LoopCfg(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed),
        run_dir=out.parent,
        steps_per_epoch=len(epoch_batches(len(train_set), cfg.batch_size, seed=cfg.seed, epoch=0)),
        on_epoch_end=on_epoch_end,
    )
    model.eval()
    metrics: dict[str, float] = {"seconds": result.seconds}
    site_auc = global_auc = None
    if len(val_set):
        scores = site_scores(model, val_set.x)
        global_auc = _macro(val_set.y.numpy(), scores["global"], trained.ids)
        if cfg.matrix == "learn":
            site_auc = _macro(val_set.y.numpy(), scores["site"], trained.ids)
        metrics |= {k: v for k, v in (("val_site_macro_auroc", site_auc), ("val_global_macro_auroc", global_auc)) if v}
        report(f"val macro AUROC: sites {site_auc}, global {global_auc}")
    training = {"stage": "pretrain", **asdict(cfg), "oct_images": len(oct_train) if oct_train is not None else 0}
    meta = save_pretrain(
        out,
        model,
        preprocess=preprocess,
        catalog=trained,
        tokenizer_json=tokenizer.to_str(),
        training=training,
        metrics=metrics,
    )
    return PretrainResult(meta, out, site_auc, global_auc, result.seconds)


def _macro(labels: np.ndarray, scores: np.ndarray, ids: list[str]) -> float | None:
    try:
        return macro_auroc(labels, scores, ids)
    except ValueError:
        return None
