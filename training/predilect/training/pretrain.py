"""Stage 1, ``predilect train pretrain``: unpaired fundus<->text and OCT<->text contrastive
pretraining with the predilection-sites matrix learned in OCT latent space (``predilect.models.uopsl``).

A run is a ``PretrainRun`` config: ``data`` and ``loop`` (``predilect.training.config``), ``model``
(``ArchCfg``) and ``pretrain`` (``PretrainCfg``, below). Ablations are one option each:
``matrix="ablate"`` (no sites: a plain contrastive model), ``text=False`` (``--no-text``: free
class embeddings instead of encoded descriptions), ``oct=False`` (``--no-oct``: fundus only),
``shuffle_oct_labels`` (the control: OCT labels permuted across OCT images, so the OCT stage
keeps its images and compute but loses the disease knowledge). ``holdout`` removes categories
from training entirely (images, labels and texts) for the zero-shot evaluation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from predilect.catalog import Catalog
from predilect.errors import ConfigError
from predilect.metrics import macro_auroc
from predilect.models.checkpoint import PretrainMeta, save_pretrain
from predilect.models.classifier import ArchCfg, VitBackbone
from predilect.models.coda import CodaWeights, coda_loss
from predilect.models.text import CatalogTexts, TextCfg, build_tokenizer, byte_tokenizer, catalog_corpus, load_tokenizer
from predilect.models.uopsl import SITE_SOURCES, OctGeometry, PretrainWeights, UopslCfg, UopslModel, pretrain_loss
from predilect.training.config import RunConfig, save_config
from predilect.training.datasets import FundusAugment, OctDataset
from predilect.training.evaluate import site_scores
from predilect.training.loop import fit, is_main_process, seed_everything
from predilect.training.stages import (
    OCT_PAIRINGS,
    MemoryOctDataset,
    OctPartners,
    PairedLoader,
    RedrawnLabels,
    fundus_dataset,
    loader_factory,
    model_device,
    oct_dataset,
    read_splits,
    stage_inputs,
)

log = logging.getLogger(__name__)
OBJECTIVES = ("uopsl", "coda")


@dataclass(frozen=True)
class PretrainCfg:
    """The ``pretrain`` section: what stage 1 learns and from what."""

    matrix: str = field(default="learn", metadata={"help": "learn the sites matrix, or ablate it (plain CLIP)"})
    text: bool = field(default=True, metadata={"help": "--no-text: free class embeddings instead of text"})
    oct: bool = field(default=True, metadata={"help": "--no-oct: no OCT images (fundus<->text only)"})
    shuffle_oct_labels: bool = field(default=False, metadata={"help": "control: permute the OCT labels"})
    redraw_oct_labels: bool = field(
        default=False, metadata={"help": "control: permute the OCT labels afresh every epoch (nothing to memorise)"}
    )
    holdout: tuple[str, ...] = field(default=(), metadata={"help": "categories held out for zero-shot"})
    in_memory: bool = field(default=False, metadata={"help": "hold preprocessed images in RAM (small sets)"})
    tokenizer: str = field(default="wordpiece", metadata={"help": "wordpiece | bytes | a local tokenizer.json"})
    vocab_size: int = field(default=2000, metadata={"help": "WordPiece vocabulary size (upper bound)"})
    context_length: int = field(default=48, metadata={"help": "text tokens per description"})
    text_width: int = field(default=128, metadata={"help": "text transformer width"})
    text_layers: int = field(default=2, metadata={"help": "text transformer layers"})
    text_heads: int = field(default=4, metadata={"help": "text transformer heads"})
    embed_dim: int = field(default=128, metadata={"help": "joint (text) embedding dimension"})
    text_checkpoint: str = field(default="", metadata={"help": "LOCAL open_clip weights for the text encoder"})
    text_act: str = field(default="gelu", metadata={"help": "with --text-checkpoint: gelu | quick_gelu"})
    w_clip_fundus: float = field(default=1.0, metadata={"help": "weight of fundus<->text CLIP loss"})
    w_clip_oct: float = field(default=1.0, metadata={"help": "weight of OCT<->text CLIP loss"})
    w_site_oct: float = field(default=1.0, metadata={"help": "weight of the OCT site loss (shapes the matrix)"})
    w_site_fundus: float = field(default=1.0, metadata={"help": "weight of the fundus site loss (matrix frozen)"})
    w_diversity: float = field(default=0.1, metadata={"help": "weight of the sites' diversity term"})
    site_source: str = field(
        default="oct", metadata={"help": "whose labels shape the sites: oct (the method) | fundus (a control)"}
    )
    objective: str = field(default="uopsl", metadata={"help": "uopsl (the method) | coda (OCT-CoDA, MultiEYE)"})
    oct_pairing: str = field(
        default="unpaired",
        metadata={"help": "OCT scans shown with each fundus batch: unpaired | same_class | same_eye (paired data)"},
    )
    w_pair: float = field(default=0.0, metadata={"help": "weight of the fundus<->OCT InfoNCE of same-eye pairs"})
    coda_prototype: float = field(default=0.05, metadata={"help": "OCT-CoDA: prototype distillation weight"})
    coda_contrast: float = field(default=0.6, metadata={"help": "OCT-CoDA: contrastive distillation weight"})
    coda_temperature: float = field(default=0.1, metadata={"help": "OCT-CoDA: contrastive temperature"})
    oct_centre_x: float = field(default=0.5, metadata={"help": "OCT line centre, fraction of fundus width"})
    oct_centre_y: float = field(default=0.5, metadata={"help": "OCT line height, fraction of fundus height"})
    oct_span: float = field(default=0.735, metadata={"help": "OCT line length, fraction of fundus width"})
    oct_span_jitter: float = field(
        default=0.0, metadata={"help": "stretch each scan's line by exp(U(-j, j)) in training (field-angle spread)"}
    )

    def __post_init__(self) -> None:
        if self.matrix not in ("learn", "ablate"):
            raise ConfigError(f"pretrain matrix must be learn or ablate, got {self.matrix!r}")
        if self.site_source not in SITE_SOURCES:
            raise ConfigError(f"pretrain site_source must be one of {SITE_SOURCES}, got {self.site_source!r}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"pretrain objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.objective == "coda" and self.matrix != "ablate":
            raise ConfigError('OCT-CoDA learns no sites matrix: set pretrain.matrix="ablate" with objective coda')
        if self.oct_pairing not in OCT_PAIRINGS:
            raise ConfigError(f"pretrain oct_pairing must be one of {OCT_PAIRINGS}, got {self.oct_pairing!r}")
        if self.w_pair > 0 and self.oct_pairing != "same_eye":
            raise ConfigError("w_pair > 0 contrasts same-eye pairs: set pretrain.oct_pairing=same_eye")
        if not self.oct and (self.shuffle_oct_labels or self.redraw_oct_labels):
            raise ConfigError("--shuffle-oct-labels and --redraw-oct-labels each needs the OCT stage; drop --no-oct")
        if self.shuffle_oct_labels and self.redraw_oct_labels:
            raise ConfigError("choose one control: --shuffle-oct-labels (one permutation) or --redraw-oct-labels")
        if self.text_checkpoint and self.tokenizer in ("wordpiece", "bytes"):
            raise ConfigError("--text-checkpoint needs the tokenizer.json its vocabulary comes from (--tokenizer FILE)")

    def weights(self) -> PretrainWeights:
        return PretrainWeights(
            clip_fundus=self.w_clip_fundus,
            clip_oct=self.w_clip_oct,
            site_oct=self.w_site_oct,
            site_fundus=self.w_site_fundus,
            diversity=self.w_diversity,
            pair=self.w_pair,
        )

    def coda_weights(self) -> CodaWeights:
        return CodaWeights(
            clip_fundus=self.w_clip_fundus,
            clip_oct=self.w_clip_oct,
            prototype=self.coda_prototype,
            contrast=self.coda_contrast,
            temperature=self.coda_temperature,
        )

    def loss(self) -> Callable[[UopslModel, dict], tuple]:
        """The stage-1 loss this section asks for."""
        if self.objective == "coda":
            coda = self.coda_weights()
            return lambda m, b: coda_loss(m, b, weights=coda)
        weights = self.weights()
        return lambda m, b: pretrain_loss(
            m, b, weights=weights, site_source=self.site_source, span_jitter=self.oct_span_jitter
        )


class PretrainRun(RunConfig):
    """A stage-1 run: ``data``, ``loop``, ``model``, ``pretrain``."""

    model: ArchCfg = ArchCfg()
    pretrain: PretrainCfg = PretrainCfg()


@dataclass(frozen=True)
class PretrainResult:
    meta: PretrainMeta | None  # None on DDP ranks other than 0
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


def build_model(run: PretrainRun, catalog: Catalog, tokenizer) -> UopslModel:
    """The stage-1 model; local pretrained weights (``model.image_checkpoint``,
    ``pretrain.text_checkpoint``) are loaded here, never downloaded."""
    from predilect.models.pretrained import (
        load_text_encoder,
        load_vit_backbone,
        read_state,
        timm_vit_state,
        vit_cfg_from_state,
    )

    arch, cfg = run.model, run.pretrain
    fundus = arch.model_cfg(num_diseases=len(catalog), image_size=run.data.preprocess.size, name="uopsl-fundus")
    oct_cfg = arch.model_cfg(num_diseases=len(catalog), image_size=run.data.oct.size, in_channels=1, name="uopsl-oct")
    if arch.image_checkpoint:
        vit, _, _ = timm_vit_state(read_state(Path(arch.image_checkpoint)), arch.image_layout)
        fundus = vit_cfg_from_state(fundus, vit, heads=arch.vit_heads)
        oct_cfg = vit_cfg_from_state(oct_cfg, vit, heads=arch.vit_heads)
    text_encoder = None
    if cfg.text_checkpoint:
        text_encoder, _ = load_text_encoder(Path(cfg.text_checkpoint), heads=cfg.text_heads, act=cfg.text_act)
        text = text_encoder.cfg
        if text.vocab_size != tokenizer.get_vocab_size():
            raise ConfigError(
                f"--tokenizer has {tokenizer.get_vocab_size()} tokens, the text checkpoint {text.vocab_size}"
            )
    else:
        text = TextCfg(
            vocab_size=tokenizer.get_vocab_size(),
            context_length=cfg.context_length,
            width=cfg.text_width,
            layers=cfg.text_layers,
            heads=cfg.text_heads,
            embed_dim=cfg.embed_dim,
        )
    texts = CatalogTexts.build(tokenizer, catalog, text.context_length) if cfg.text else None
    uopsl = UopslCfg(
        fundus=fundus,
        oct=oct_cfg,
        text=text,
        geometry=OctGeometry(cfg.oct_centre_x, cfg.oct_centre_y, cfg.oct_span),
        matrix=cfg.matrix,
        text_mode="text" if cfg.text else "labels",
        concepts=len(texts.owner) if (texts is not None and cfg.objective == "coda") else 0,
    )
    if cfg.objective == "coda" and texts is None:
        raise ConfigError("OCT-CoDA reads the catalog's descriptions as concepts; drop --no-text")
    model = UopslModel(uopsl, texts)
    if text_encoder is not None:
        model.text.load_state_dict(text_encoder.state_dict())
    if arch.image_checkpoint:
        for encoder in (model.fundus, model.oct):
            assert isinstance(encoder.backbone, VitBackbone)
            load_vit_backbone(
                encoder.backbone,
                Path(arch.image_checkpoint),
                layout=arch.image_layout,
                grid=encoder.cfg.grid,
                in_channels=encoder.cfg.in_channels,
            )
    return model


def pretrain(
    run: PretrainRun,
    out: Path,
    *,
    resume: bool = False,
    cache_dir: Path | None = None,
    report: Callable[[str], None] = log.info,
) -> PretrainResult:
    """Run stage 1 as ``run`` says and write the pretraining checkpoint ``out`` (the run's logs,
    state and config go to ``out.parent``)."""
    start = time.monotonic()
    data, cfg, loop = run.data, run.pretrain, run.loop
    manifest, catalog, source = stage_inputs(data.manifest, data.catalog)
    trained = trained_catalog(catalog, cfg.holdout)
    splits = read_splits(manifest, catalog=catalog, drop=cfg.holdout)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    report(f"catalog {source}: training {len(trained)} categories, held out {list(cfg.holdout) or 'none'}")
    report(f"fundus: {len(splits.train)} train / {len(splits.val)} val images")
    augment = FundusAugment(data.augment, data.preprocess) if data.augment.enabled else None
    train_set = fundus_dataset(
        splits.train,
        data.preprocess,
        trained,
        augment=augment,
        seed=loop.seed,
        in_memory=cfg.in_memory,
        cache_dir=cache_dir,
    )
    fundus_loaders = loader_factory(
        train_set,
        batch_size=loop.batch_size,
        sampling=data.sampling,
        seed=loop.seed,
        workers=loop.workers,
        distributed=distributed,
    )
    oct_loaders, oct_count, partners = None, 0, None
    oct_set: OctDataset | MemoryOctDataset | RedrawnLabels | None = None
    if data.oct_manifest is not None and cfg.oct:
        oct_records = read_splits(data.oct_manifest, catalog=catalog, drop=cfg.holdout).train
        oct_set = oct_dataset(oct_records, data.oct, trained, augment=True, seed=loop.seed + 1, in_memory=cfg.in_memory)
        if cfg.shuffle_oct_labels:
            oct_set.targets = oct_set.targets[np.random.default_rng(loop.seed + 31).permutation(len(oct_set))]
            if hasattr(oct_set, "source"):
                oct_set.source.targets = oct_set.targets
        elif cfg.redraw_oct_labels:
            oct_set = RedrawnLabels(oct_set, seed=loop.seed + 31)
        oct_count = len(oct_set)
        oct_loaders = loader_factory(
            oct_set,
            batch_size=loop.batch_size,
            sampling=data.sampling,
            seed=loop.seed + 1,
            workers=loop.workers,
            distributed=distributed,
        )
        shuffled = (
            "; labels SHUFFLED (control)"
            if cfg.shuffle_oct_labels
            else "; labels RE-DRAWN every epoch (control)"
            if cfg.redraw_oct_labels
            else ""
        )
        if cfg.oct_pairing != "unpaired":
            partners = OctPartners(
                splits.train,
                train_set.targets,
                oct_records,
                oct_set.targets,
                pairing=cfg.oct_pairing,
                seed=loop.seed + 2,
            )
            report(f"OCT: {oct_count} train scans, shown as {cfg.oct_pairing} partners ({partners.paired} own eyes)")
        else:
            report(f"OCT: {oct_count} train scans (unpaired){shuffled}")
    elif cfg.oct:
        report("no OCT manifest: fundus<->text only")
    if (cfg.oct_pairing != "unpaired" or cfg.w_pair > 0) and partners is None:
        raise ConfigError(f"pretrain.oct_pairing={cfg.oct_pairing} needs OCT scans (an OCT manifest, not --no-oct)")

    tokenizer = make_tokenizer(cfg, trained)
    seed_everything(loop.seed)  # the initial weights are a function of the seed too
    model = build_model(run, trained, tokenizer)
    if is_main_process():
        save_config(run, out.parent)
    val_set = (
        fundus_dataset(splits.val, data.preprocess, trained, in_memory=cfg.in_memory, cache_dir=cache_dir)
        if splits.val
        else None
    )

    def validate(epoch: int, trained_model: torch.nn.Module) -> dict[str, float]:
        """Each epoch's validation metric: the sites' (else the global embedding's) macro AUROC on val."""
        if val_set is None or not is_main_process():
            return {}
        scores = site_scores(trained_model, val_set, device=model_device(trained_model))  # type: ignore[arg-type]
        trained_model.train()
        name = "site" if "site" in scores else "global"
        value = _macro(val_set.targets, scores[name], trained.ids)
        return {f"val_{name}_macro_auroc": value} if value is not None else {}

    fit(
        model,
        cfg.loss(),  # type: ignore[arg-type]
        lambda epoch: PairedLoader(
            fundus_loaders(epoch), oct_loaders, epoch=epoch, partners=partners, oct_dataset=oct_set
        ),
        loop,
        run_dir=out.parent,
        resume=resume,
        on_epoch_end=validate,
    )
    seconds = time.monotonic() - start
    if not is_main_process():
        return PretrainResult(None, out, None, None, seconds)
    model.eval()
    metrics: dict[str, float] = {"seconds": seconds}
    site_auc = global_auc = None
    if val_set is not None:
        device = model_device(model)
        scores = site_scores(model, val_set, device=device)
        global_auc = _macro(val_set.targets, scores["global"], trained.ids)
        site_auc = _macro(val_set.targets, scores["site"], trained.ids) if "site" in scores else None
        metrics |= {k: v for k, v in (("val_site_macro_auroc", site_auc), ("val_global_macro_auroc", global_auc)) if v}
        report(f"val macro AUROC: sites {_fmt(site_auc)}, global {_fmt(global_auc)}")
    training = {
        "stage": "pretrain",
        **asdict(cfg),
        "model": asdict(run.model),
        "loop": asdict(loop),
        "oct_images": oct_count,
        "fundus_images": len(splits.train),
    }
    meta = save_pretrain(
        out,
        model.cpu(),
        preprocess=data.preprocess,
        catalog=trained,
        tokenizer_json=tokenizer.to_str(),
        training=training,
        metrics=metrics,
    )
    return PretrainResult(meta, out, site_auc, global_auc, seconds)


def _macro(labels: np.ndarray, scores: np.ndarray, ids: list[str]) -> float | None:
    try:
        return macro_auroc(labels, scores, ids)
    except ValueError:
        return None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
