"""In-process inference: served-model probabilities, stage-1 scores, zero-shot scores.

``predict_proba`` is the reference that export and serving must match. ``site_scores`` reads a
stage-1 model two ways: through the predilection sites (the matrix carried into fundus space,
``UopslModel.fundus_site_logits``) and through the global fundus embedding against the class
texts (plain CLIP). ``zero_shot_scores`` does the same for categories the model never trained
on, from their descriptions alone: their sites come from ``site_gen(t_c)`` (no residual) and
their read-out from ``W^T t_c``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from predilect.catalog import Catalog
from predilect.lesions import DrawnImage, lesion_cells
from predilect.manifest import Record
from predilect.models.classifier import FundusClassifier
from predilect.models.text import CatalogTexts, load_tokenizer
from predilect.models.uopsl import UopslModel
from predilect.preprocess import PreprocessCfg
from predilect.training.stages import predict


def site_scores(
    model: UopslModel,
    dataset: Any,
    *,
    class_emb: Tensor | None = None,
    unseen: bool = False,
    device: torch.device | None = None,
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Scores ``(N, C)`` of a fundus dataset for the diseases of ``class_emb`` (``(1 + C, E)``,
    row 0 normal; default: the model's own classes).

    ``site``: logits of the sites read-out (only when the model learned a matrix); ``global``:
    ``s * (cos(g, t_c) - cos(g, t_normal))``. With ``unseen`` the sites get no per-disease
    residual and the mean trained bias (they were never trained).
    """
    model.eval()
    device = device or torch.device("cpu")
    with torch.inference_mode():
        classes = (model.class_embeddings() if class_emb is None else class_emb).to(device)
        diseases = classes[1:]
        residual = bias = None
        if unseen:
            k, d = model.cfg.fundus.sites_per_disease, model.cfg.fundus.dim
            residual = diseases.new_zeros((len(diseases), k, d))
            bias = model.site_bias.mean().expand(len(diseases))
        scale = model.logit_scale.exp()

    def score(pixels: Tensor) -> dict[str, Tensor]:
        pixels = pixels.to(device)
        cos = model.fundus_global_scores(pixels, classes)
        out = {"global": scale * (cos[:, 1:] - cos[:, :1])}
        if model.cfg.matrix == "learn":
            out["site"], _ = model.fundus_site_logits(pixels, diseases, residual=residual, bias=bias)
        return out

    return predict(score, dataset, batch_size=batch_size)


def zero_shot_scores(
    model: UopslModel,
    tokenizer_json: str,
    catalog: Catalog,
    ids: list[str],
    dataset: Any,
    *,
    device: torch.device | None = None,
) -> dict[str, np.ndarray]:
    """``site_scores`` for categories ``ids`` of ``catalog`` that the model never trained on,
    from their descriptions alone."""
    texts = CatalogTexts.build(load_tokenizer(tokenizer_json), catalog.subset(ids), model.cfg.text.context_length)
    model.to(device or torch.device("cpu"))
    with torch.inference_mode():
        class_emb = model.embed_texts(texts)
    return site_scores(model, dataset, class_emb=class_emb, unseen=True, device=device)


# ----------------------------------------------------------------------------- the served model


@dataclass(frozen=True)
class ClassifierScores:
    """A served classifier's outputs on one split: probabilities ``(N, C)``, attention ``(N, C, g, g)``."""

    probs: np.ndarray
    attention: np.ndarray
    labels: np.ndarray
    records: list[Record]


def score_classifier(
    model: FundusClassifier, records: list[Record], preprocess: PreprocessCfg, catalog: Catalog, **data: Any
) -> ClassifierScores:
    """Probabilities and attention maps of ``records`` (streamed through the shared preprocessing
    unless ``in_memory=True``), on the model's device."""
    from predilect.training.stages import fundus_dataset

    model.eval()
    device = next(model.parameters()).device
    dataset = fundus_dataset(records, preprocess, catalog, **data)

    def run(pixels: Tensor) -> dict[str, Tensor]:
        logits, attention = model.forward_with_attention(pixels.to(device))
        return {"probs": torch.sigmoid(logits), "attention": attention}

    out = predict(run, dataset)
    return ClassifierScores(out["probs"], out["attention"], dataset.targets, list(records))


# ----------------------------------------------------------------------------- lesion localisation


@dataclass(frozen=True)
class Localisation:
    """Attention vs drawn lesions, per disease: mean attention mass on lesion cells, the mass a
    uniform map would put there (the area share: chance), pointing-game hit rate, and pairs."""

    mass: float
    chance: float
    pointing: float
    pairs: int

    @property
    def lift(self) -> float:
        return self.mass / self.chance if self.chance else float("nan")


def localisation(
    attention: np.ndarray,
    labels: np.ndarray,
    records: list[Record],
    lesions: dict[Path, DrawnImage],
    ids: list[str],
) -> dict[str, Localisation]:
    """Score each positive (image, disease) with drawn lesions; ``attention (N, C, g, g)``; ``lesions``
    keyed by resolved image path (``lesions.by_resolved_path``). Lesion cells: those that meet a
    lesion in the square cropped from the drawn field of view (``predilect.lesions``, the geometry
    ``predilect localisation`` scores served heatmaps with). The key ``all`` pools every pair."""
    grid = attention.shape[-1]
    per: dict[str, list[tuple[float, float, float]]] = {}
    for i, record in enumerate(records):
        drawn = lesions.get(record.path.resolve())
        if drawn is None:
            continue
        box = drawn.field_box()
        for j, disease in enumerate(ids):
            if labels[i, j] < 0.5:
                continue
            mask = lesion_cells(drawn, disease, grid, box)
            if not mask.any() or mask.all():
                continue
            a = attention[i, j] / max(attention[i, j].sum(), 1e-12)
            hit = float(mask.flat[int(np.argmax(a))])
            per.setdefault(disease, []).append((float(a[mask].sum()), float(mask.mean()), hit))
    out = {d: _summarise(v) for d, v in per.items()}
    pooled = [x for v in per.values() for x in v]
    if pooled:
        out["all"] = _summarise(pooled)
    return out


def _summarise(rows: list[tuple[float, float, float]]) -> Localisation:
    arr = np.asarray(rows)
    return Localisation(float(arr[:, 0].mean()), float(arr[:, 1].mean()), float(arr[:, 2].mean()), len(rows))


# ----------------------------------------------------------------------------- learned sites


def site_priors(model: FundusClassifier) -> np.ndarray:
    """Each site's content-free spatial preference over the token grid ``(C, K, g, g)``: the
    softmax of its anatomical slice against the grid's anatomical code (what the site prefers
    before any image content; zero everywhere for models without the code)."""
    cfg = model.cfg
    with torch.no_grad():
        code = model.encoder.anatomy  # (N, D_p)
        pos = model.head.sites[..., cfg.content_dim :]  # (C, K, D_p)
        scores = torch.einsum("ckp,np->ckn", pos, code) * cfg.dim**-0.5
        priors = torch.softmax(scores, dim=-1)
    return priors.reshape(*priors.shape[:2], cfg.grid, cfg.grid).cpu().numpy()
