"""UOPSL (arXiv 2509.08624) as this project implements it: unpaired OCT and fundus images meet in the
text space of the diseases' descriptions, and a predilection-sites matrix learned in the OCT latent
space tells the fundus-only model where each disease's lesions lie.

The pieces (all in ``UopslModel``):

* a text encoder (``predilect.models.text``) embeds every description of every class; a class's
  embedding t_c is the mean of its descriptions' (``normal`` has built-in descriptions);
* a fundus encoder and an OCT encoder (``predilect.models.classifier.PatchEncoder``) emit tokens in ONE layout,
  [content | anatomical position]. OCT columns get the fundus-plane position of the line the
  B-scan runs along (``OctGeometry``: by default a horizontal line through the fovea, as the
  phantom and the usual macular line scan); so a site that prefers some OCT columns prefers
  the same eccentricity on a photograph;
* the predilection-sites matrix P (C x K x D) = ``site_gen(t_c)`` + a free per-disease residual:
  generated from the disease's text (so an unseen category, given only its descriptions, has
  sites too: zero-shot) plus what the images teach beyond the text;
* a text-tied read-out: the logit of disease c from context ctx_c (the sites' attention-pooled
  tokens) is ``s * <W ctx_c, t_c> + b_c`` with W (D -> E) shared by both modalities, i.e. the
  fused kernel's read-out weight is ``s * W^T t_c``;
* ``carry``: a linear map on the content slice that carries P from the OCT latent space into the
  fundus token space (identity at start; the positional slice is shared and carried unchanged).

What shapes the matrix (stage 1, ``pretrain_loss``), and why:

1. ``site_bce`` on OCT: P's sites attend over OCT tokens and the attended context must decide,
   through the text-tied read-out, whether disease c is present. The only way to lower it is to
   look where c's OCT evidence is (the layers and the columns), so P's content slice learns what
   c looks like on OCT and its positional slice learns at which eccentricity. This is the ONLY
   loss whose gradient reaches P (fundus terms use ``P.detach()``): the matrix is learned in the
   OCT latent space, from OCT labels; shuffling the OCT labels (the control) destroys exactly this.
2. ``site_diversity`` on OCT: the K sites of a disease must attend to different places on its
   positive scans, so the matrix holds several sites per disease instead of K copies of one.
3. ``soft_clip_loss`` fundus<->text and OCT<->text (global embeddings, soft multi-label
   targets): aligns both modalities with the same class texts, without pairs. It shapes P only
   indirectly, through the text embeddings that generate P and its read-out.
4. ``site_bce`` on fundus with ``carry(P.detach())``: the fundus encoder and ``carry`` learn to
   produce tokens that the OCT-learned sites read correctly: the matrix is carried into fundus
   token space without the fundus data rewriting it.

Stage 2 (``predilect.training.finetune``) drops the OCT encoder and the text encoder: the served
``FundusClassifier`` gets the fundus encoder, the sites ``carry(P)``, and the read-out
``s * W^T t_c`` / ``b_c`` as its head, then fine-tunes on fundus labels.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from predilect.errors import ConfigError
from predilect.models.classifier import ModelCfg, PatchEncoder, fold, fourier_code, predilection
from predilect.models.losses import (
    class_targets,
    pair_clip_loss,
    site_attention,
    site_bce,
    site_diversity,
    soft_clip_loss,
)
from predilect.models.text import CatalogTexts, TextCfg, TextEncoder

MATRIX_MODES = ("learn", "ablate")
TEXT_MODES = ("text", "labels")


@dataclass(frozen=True)
class OctGeometry:
    """Where an OCT B-scan lies in the fundus image plane (fractions of the preprocessed square).

    The scan is a horizontal line at height ``centre_y`` whose middle column is at ``centre_x``
    and which spans ``span`` of the image width. The default is the phantom's scan: through the
    fovea at the image centre, 5.9 disc diameters long (fovea at 0.5, disc at ~0.92 of the scan;
    one disc diameter is 1/8 of the field of view). For real data set it from the scan length:
    a 6 mm line scan on a ~45-degree photograph is ~0.4 of the field.
    """

    centre_x: float = 0.5
    centre_y: float = 0.5
    span: float = 0.735

    def positions(self, grid: int) -> tuple[Tensor, Tensor]:
        """Fundus-plane ``(x, y)`` of a row-major ``grid x grid`` OCT token grid (rows = depth)."""
        u = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
        x = (self.centre_x + (u - 0.5) * self.span).repeat(grid)
        return x, torch.full_like(x, self.centre_y)


def scan_line_code(geometry: Tensor, default: OctGeometry, grid: int, freqs: int) -> Tensor:
    """The anatomical code ``(B, grid * grid, 4 * freqs)`` of each scan's tokens from its own line
    ``geometry (B, 3)`` = (centre_x, centre_y, span); rows with NaN take ``default`` (the run's)."""
    fallback = geometry.new_tensor([default.centre_x, default.centre_y, default.span])
    geometry = torch.where(torch.isfinite(geometry), geometry, fallback)
    u = (torch.arange(grid, dtype=geometry.dtype, device=geometry.device) + 0.5) / grid
    x = (geometry[:, :1] + (u - 0.5) * geometry[:, 2:3]).repeat(1, grid)  # (B, N), rows = depth
    y = geometry[:, 1:2].expand_as(x)
    code = fourier_code(fold(x.reshape(-1), y.reshape(-1)), freqs)
    return code.reshape(len(geometry), grid * grid, -1)


@dataclass(frozen=True)
class UopslCfg:
    """Everything needed to rebuild a ``UopslModel``; saved in the pretraining checkpoint."""

    fundus: ModelCfg
    oct: ModelCfg
    text: TextCfg = field(default_factory=TextCfg)
    geometry: OctGeometry = field(default_factory=OctGeometry)
    matrix: str = "learn"
    text_mode: str = "text"
    sites_from_text: bool = True
    concepts: int = 0  # > 0: OCT-CoDA's concept classifiers over this many concepts (``predilect.models.coda``)

    def __post_init__(self) -> None:
        if self.matrix not in MATRIX_MODES:
            raise ConfigError(f"matrix must be one of {MATRIX_MODES}, got {self.matrix!r}")
        if self.text_mode not in TEXT_MODES:
            raise ConfigError(f"text_mode must be one of {TEXT_MODES}, got {self.text_mode!r}")
        if self.fundus.dim != self.oct.dim or self.fundus.pos_freqs != self.oct.pos_freqs:
            raise ConfigError(f"fundus and OCT tokens must share a layout: D {self.fundus.dim} vs {self.oct.dim}")
        if self.fundus.sites_per_disease != self.oct.sites_per_disease:
            raise ConfigError("fundus and OCT must agree on sites_per_disease")

    @property
    def num_diseases(self) -> int:
        return self.fundus.num_diseases

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> UopslCfg:
        data = json.loads(text)
        return cls(
            fundus=ModelCfg.from_json(json.dumps(data["fundus"])),
            oct=ModelCfg.from_json(json.dumps(data["oct"])),
            text=TextCfg(**data["text"]),
            geometry=OctGeometry(**data["geometry"]),
            matrix=data["matrix"],
            text_mode=data["text_mode"],
            sites_from_text=data["sites_from_text"],
            concepts=data.get("concepts", 0),
        )


class ClassEmbedding(nn.Module):
    """The no-text ablation: one free embedding per class instead of encoded descriptions."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(num_classes, dim) * dim**-0.5)

    def forward(self) -> Tensor:
        return F.normalize(self.table, dim=-1)


class UopslModel(nn.Module):
    """Fundus encoder, OCT encoder, text encoder and the predilection-sites matrix (stage 1)."""

    def __init__(self, cfg: UopslCfg, texts: CatalogTexts | None) -> None:
        super().__init__()
        if cfg.text_mode == "text" and texts is None:
            raise ConfigError("text_mode 'text' needs the catalog texts")
        self.cfg = cfg
        self.texts = texts
        c, k, d, dc = cfg.num_diseases, cfg.fundus.sites_per_disease, cfg.fundus.dim, cfg.fundus.content_dim
        e = cfg.text.embed_dim
        self.fundus = PatchEncoder(cfg.fundus)
        self.oct = PatchEncoder(cfg.oct, positions=cfg.geometry.positions(cfg.oct.grid))
        self.text: nn.Module = TextEncoder(cfg.text) if cfg.text_mode == "text" else ClassEmbedding(1 + c, e)
        self.fundus_proj = nn.Linear(dc, e, bias=False)
        self.oct_proj = nn.Linear(dc, e, bias=False)
        self.site_gen = nn.Linear(e, k * d) if cfg.sites_from_text else None
        self.site_residual = nn.Parameter(
            torch.zeros(c, k, d) if cfg.sites_from_text else torch.randn(c, k, d) * d**-0.5
        )
        self.site_proj = nn.Linear(d, e, bias=False)
        self.carry = nn.Linear(dc, dc)
        with torch.no_grad():
            self.carry.weight.copy_(torch.eye(dc))
            self.carry.bias.zero_()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.site_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.site_bias = nn.Parameter(torch.zeros(c))
        if cfg.concepts:  # built last, so the other modules draw the same initial weights
            self.fundus_concepts = nn.Linear(cfg.concepts, c)
            self.oct_concepts = nn.Linear(cfg.concepts, c)

    # ------------------------------------------------------------------ text and matrix

    def class_embeddings(self, rows: Tensor | None = None) -> Tensor:
        """``(1 + C, E)`` L2-normalised: row 0 normal, then the diseases."""
        if isinstance(self.text, ClassEmbedding):
            return self.text()
        assert self.texts is not None
        return self.texts.embed(self.text, rows=rows)

    def embed_texts(self, texts: CatalogTexts) -> Tensor:
        """Class embeddings of ANOTHER catalog's texts (zero-shot), through the trained encoder."""
        if isinstance(self.text, ClassEmbedding):
            raise ConfigError("a model trained without text (--no-text) cannot read new descriptions")
        return texts.embed(self.text)

    def sites(self, disease_emb: Tensor, residual: Tensor | None = None) -> Tensor:
        """The predilection-sites matrix ``(C, K, D)`` in OCT latent space for ``disease_emb (C, E)``."""
        k, d = self.cfg.fundus.sites_per_disease, self.cfg.fundus.dim
        residual = self.site_residual if residual is None else residual
        if self.site_gen is None:
            return residual
        return self.site_gen(disease_emb).reshape(-1, k, d) + residual

    def readout(self, disease_emb: Tensor) -> tuple[Tensor, Tensor]:
        """Text-tied read-out ``weight (C, D) = s * W^T t_c`` (the kernel's weight)."""
        return self.site_scale.exp() * disease_emb @ self.site_proj.weight, self.site_bias

    def carry_sites(self, sites: Tensor) -> Tensor:
        """Sites carried from OCT latent space into fundus token space (content slice mapped)."""
        dc = self.cfg.fundus.content_dim
        return torch.cat([self.carry(sites[..., :dc]), sites[..., dc:]], dim=-1)

    def global_embedding(self, content: Tensor, proj: nn.Linear) -> Tensor:
        return F.normalize(proj(content.mean(dim=1)), dim=-1)

    # ------------------------------------------------------------------ fundus-only inference

    def fundus_site_logits(
        self, pixels: Tensor, disease_emb: Tensor, *, residual: Tensor | None = None, bias: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Site read-out logits ``(B, C')`` (and attention maps) of fundus images for the diseases
        of ``disease_emb (C', E)``: the matrix carried into fundus space, no OCT input."""
        tokens = self.fundus(pixels)
        sites = self.carry_sites(self.sites(disease_emb, residual))
        weight, _ = self.readout(disease_emb)
        bias = self.site_bias if bias is None else bias
        return predilection(tokens, sites, weight, bias, return_attention=True)

    def fundus_global_scores(self, pixels: Tensor, class_emb: Tensor) -> Tensor:
        """Cosine similarity ``(B, J)`` of the fundus global embedding with class embeddings."""
        return self.global_embedding(self.fundus.content(pixels), self.fundus_proj) @ class_emb.t()


SITE_SOURCES = ("oct", "fundus")


@dataclass(frozen=True)
class PretrainWeights:
    """Weights of the stage-1 loss terms (names as in the module docstring)."""

    clip_fundus: float = 1.0
    clip_oct: float = 1.0
    site_oct: float = 1.0
    site_fundus: float = 1.0
    diversity: float = 0.1
    pair: float = 0.0  # fundus <-> OCT InfoNCE on paired batches (the paired upper bound)

    def __post_init__(self) -> None:
        if min(asdict(self).values()) < 0:
            raise ConfigError(f"loss weights must be >= 0, got {asdict(self)}")


def pretrain_loss(
    model: UopslModel,
    batch: dict[str, Tensor],
    *,
    weights: PretrainWeights = PretrainWeights(),
    site_source: str = "oct",
    span_jitter: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """Stage-1 loss on one batch ``{"pixels", "labels"}`` (fundus) and optionally
    ``{"scan", "oct_labels"}`` (OCT, unpaired); returns the loss and its terms. In training mode
    each class is read through one of its descriptions drawn at random (text augmentation).

    ``site_source`` says whose labels shape the sites matrix: ``oct`` (the method: only the OCT
    terms reach P) or ``fundus`` (a control: the fundus site term reaches P too, so the sites are
    learned from fundus labels; without OCT images, from fundus labels alone). ``span_jitter`` > 0
    (training only) stretches each scan's line by a factor drawn from ``exp(U(-j, j))``: the sites
    learn a spread of eccentricities instead of one camera's field angle."""
    if site_source not in SITE_SOURCES:
        raise ConfigError(f"site_source must be one of {SITE_SOURCES}, got {site_source!r}")
    rows = model.texts.sample() if (model.texts is not None and model.training) else None
    classes = model.class_embeddings(rows)  # (1 + C, E)
    diseases = classes[1:]
    learn_matrix = model.cfg.matrix == "learn"
    sites = model.sites(diseases) if learn_matrix else None
    weight, bias = model.readout(diseases)
    scale = model.logit_scale.exp().clamp(max=100.0)
    terms: dict[str, Tensor] = {}

    labels = batch["labels"]
    content = model.fundus.content(batch["pixels"])
    terms["clip_fundus"] = soft_clip_loss(
        model.global_embedding(content, model.fundus_proj), classes, class_targets(labels), logit_scale=scale
    )
    if sites is not None:
        carried = model.carry_sites(sites.detach() if site_source == "oct" else sites)  # P from OCT only
        logits, _ = predilection(model.fundus.with_position(content), carried, weight, bias)
        terms["site_fundus"] = site_bce(logits, labels)

    if "scan" in batch:
        oct_labels = batch["oct_labels"]
        oct_content = model.oct.content(batch["scan"])
        terms["clip_oct"] = soft_clip_loss(
            model.global_embedding(oct_content, model.oct_proj), classes, class_targets(oct_labels), logit_scale=scale
        )
        if sites is not None:
            geometry = batch.get("oct_geometry")
            if span_jitter > 0 and model.training:
                if geometry is None:
                    geometry = oct_content.new_full((len(oct_labels), 3), float("nan"))
                default = model.cfg.geometry
                fallback = geometry.new_tensor([default.centre_x, default.centre_y, default.span])
                geometry = torch.where(torch.isfinite(geometry), geometry, fallback)
                stretch = torch.exp((torch.rand(len(geometry), device=geometry.device) * 2 - 1) * span_jitter)
                geometry = torch.cat([geometry[:, :2], geometry[:, 2:] * stretch[:, None]], dim=1)
            code = None
            if geometry is not None:
                code = scan_line_code(geometry, model.cfg.geometry, model.cfg.oct.grid, model.cfg.oct.pos_freqs)
            tokens = model.oct.with_position(oct_content, code)
            oct_logits, _ = predilection(tokens, sites, weight, bias)
            terms["site_oct"] = site_bce(oct_logits, oct_labels)
            if weights.diversity > 0:
                terms["diversity"] = site_diversity(site_attention(tokens, sites), oct_labels)
        if weights.pair > 0:  # row i of the OCT batch is the scan of fundus image i's eye
            terms["pair"] = pair_clip_loss(
                model.global_embedding(content, model.fundus_proj),
                model.global_embedding(oct_content, model.oct_proj),
                logit_scale=scale,
            )

    total = sum((getattr(weights, name) * value for name, value in terms.items()), start=labels.new_zeros(()))
    metrics = {name: float(value.detach()) for name, value in terms.items()}
    return total, metrics


def fundus_head_init(model: UopslModel, *, matrix: str) -> dict[str, Tensor]:
    """The served head's parameters carried from a stage-1 model.

    ``matrix``: ``tune``/``freeze`` -> sites ``carry(P)`` and the text-tied site read-out;
    ``ablate`` -> zero sites (uniform attention = mean pooling) and the read-out of the GLOBAL
    fundus embedding against the normal text, ``s * [fundus_proj^T (t_c - t_normal) | 0]``,
    which mean pooling reproduces exactly.
    """
    with torch.no_grad():
        diseases = model.class_embeddings()[1:]
        c, k, d = model.cfg.num_diseases, model.cfg.fundus.sites_per_disease, model.cfg.fundus.dim
        if matrix == "ablate" or model.cfg.matrix == "ablate":
            dc = model.cfg.fundus.content_dim
            weight = torch.zeros(c, d)
            normal = model.class_embeddings()[0]
            # disease c against the normal text, as the zero-shot score reads it
            weight[:, :dc] = model.logit_scale.exp() * (diseases - normal) @ model.fundus_proj.weight
            return {"sites": torch.zeros(c, k, d), "weight": weight, "bias": torch.zeros(c)}
        weight, bias = model.readout(diseases)
        return {"sites": model.carry_sites(model.sites(diseases)), "weight": weight, "bias": bias.clone()}
