"""In-process inference: served-model probabilities, stage-1 scores, zero-shot scores.

``predict_proba`` is the reference that export and serving must match. ``site_scores`` reads a
stage-1 model two ways: through the predilection sites (the matrix carried into fundus space,
``UopslModel.fundus_site_logits``) and through the global fundus embedding against the class
texts (plain CLIP). ``zero_shot_scores`` does the same for categories the model never trained
on, from their descriptions alone: their sites come from ``site_gen(t_c)`` (no residual) and
their read-out from ``W^T t_c``.
"""

from __future__ import annotations

import dataclasses
import json
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


OPEN_VOCABULARY = Path(__file__).with_name("open_vocabulary.json")
"""The zero-shot categories' descriptions in words no trained category uses (``open`` vocabulary)."""


def open_vocabulary_catalog(catalog: Catalog, ids: list[str], path: Path = OPEN_VOCABULARY) -> Catalog | None:
    """``catalog``'s categories ``ids`` with their open-vocabulary descriptions from ``path``, or
    None when the file does not describe every one of them."""
    described = json.loads(path.read_text(encoding="utf-8"))["descriptions"]
    if not all(d in described for d in ids):
        return None
    diseases = tuple(dataclasses.replace(catalog[d], descriptions=tuple(described[d])) for d in ids)
    return Catalog(diseases, version=catalog.version)


def zero_shot_arrays(
    model: UopslModel,
    tokenizer_json: str,
    catalog: Catalog,
    heldout: list[str],
    splits: dict[str, list[Record]],
    *,
    preprocess: PreprocessCfg,
    trained: Catalog,
) -> dict[str, np.ndarray]:
    """Everything the zero-shot table needs from one stage-1 model, as arrays (kept beside it as
    ``zero_shot.npz``, so the table recomputes without the checkpoint):

    * ``{split}__{vocabulary}__{score}`` ``(N, H)``: each held-out category's score on ``val`` and
      ``test``, read from its catalog descriptions (``closed``) and from its open-vocabulary ones
      (``open``, when described), for the scores ``global``, ``site`` and ``sum`` the model has;
    * ``{split}__labels`` ``(N, H)``, ``{split}__paths``;
    * ``val_trained__{score}`` and ``val_trained__labels``: the TRAINED categories on val, read as
      if unseen (no residual, the mean bias): the only data a zero-shot score may be chosen on.
    """
    from predilect.training.stages import fundus_dataset

    out: dict[str, np.ndarray] = {"heldout": np.array(heldout), "trained": np.array(trained.ids)}
    vocabularies = {"closed": catalog.subset(heldout), "open": open_vocabulary_catalog(catalog, heldout)}
    for split, records in splits.items():
        if not records:
            continue
        dataset = fundus_dataset(records, preprocess, catalog, in_memory=True)
        out[f"{split}__paths"] = np.array([str(r.path) for r in records])
        out[f"{split}__labels"] = np.array([[d in r.labels for d in heldout] for r in records], dtype=np.float32)
        for vocabulary, texts in vocabularies.items():
            if texts is None:
                continue
            found = zero_shot_scores(model, tokenizer_json, texts, heldout, dataset)
            if "site" in found:
                found["sum"] = found["site"] + found["global"]
            out |= {f"{split}__{vocabulary}__{name}": v for name, v in found.items()}
    val = [r for r in splits.get("val", []) if not (r.labels & set(heldout))]
    if val:
        dataset = fundus_dataset(val, preprocess, trained, in_memory=True)
        found = site_scores(model, dataset, unseen=True)
        if "site" in found:
            found["sum"] = found["site"] + found["global"]
        out["val_trained__labels"] = dataset.targets
        out |= {f"val_trained__{name}": v for name, v in found.items()}
    return out


def clip_zero_shot_arrays(
    clip: Any,
    tokenizer: Any,
    catalog: Catalog,
    heldout: list[str],
    splits: dict[str, list[Record]],
    *,
    preprocess: PreprocessCfg,
) -> dict[str, np.ndarray]:
    """``zero_shot_arrays``' ``global`` scores of a local CLIP (``ClipZeroShot``): ``s (cos(g, t_c) -
    cos(g, t_normal))``, each class the mean of its descriptions' embeddings (a prompt ensemble)."""
    from predilect.training.stages import fundus_dataset

    device = next(clip.parameters()).device
    context = clip.text.cfg.context_length
    out: dict[str, np.ndarray] = {"heldout": np.array(heldout), "trained": np.array([])}
    vocabularies = {"closed": catalog.subset(heldout), "open": open_vocabulary_catalog(catalog, heldout)}
    with torch.inference_mode():
        classes = {
            v: texts.embed(clip.text.to(device))
            for v, t in vocabularies.items()
            if t is not None
            for texts in [CatalogTexts.build(tokenizer, t, context)]
        }
    for split, records in splits.items():
        if not records:
            continue
        dataset = fundus_dataset(records, preprocess, catalog, in_memory=True)
        image = predict(lambda x: clip.image_embedding(x.to(device)), dataset)["out"]
        out[f"{split}__paths"] = np.array([str(r.path) for r in records])
        out[f"{split}__labels"] = np.array([[d in r.labels for d in heldout] for r in records], dtype=np.float32)
        for vocabulary, emb in classes.items():
            cos = image @ emb.cpu().numpy().T
            out[f"{split}__{vocabulary}__global"] = float(clip.logit_scale) * (cos[:, 1:] - cos[:, :1])
    return out


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
