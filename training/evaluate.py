"""In-process inference: served-model probabilities, stage-1 scores, zero-shot scores.

``predict_proba`` is the reference that export and serving must match. ``site_scores`` reads a
stage-1 model two ways: through the predilection sites (the matrix carried into fundus space,
``UopslModel.fundus_site_logits``) and through the global fundus embedding against the class
texts (plain CLIP). ``zero_shot_scores`` does the same for categories the model never trained
on, from their descriptions alone: their sites come from ``site_gen(t_c)`` (no residual) and
their read-out from ``W^T t_c``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from predilect.catalog import Catalog

from .text import CatalogTexts, load_tokenizer
from .uopsl import UopslModel


def predict_proba(model: nn.Module, pixels: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """Sigmoid probabilities ``(N, C)`` for preprocessed pixels ``(N, 3, S, S)``."""
    model.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(pixels), batch_size):
            outputs.append(torch.sigmoid(model(torch.from_numpy(pixels[start : start + batch_size]))).numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def _batched(pixels: Tensor | np.ndarray, batch_size: int) -> list[Tensor]:
    x = torch.as_tensor(pixels)
    return [x[i : i + batch_size] for i in range(0, len(x), batch_size)]


def site_scores(
    model: UopslModel,
    pixels: Tensor | np.ndarray,
    *,
    class_emb: Tensor | None = None,
    unseen: bool = False,
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Scores ``(N, C)`` of fundus images for the diseases of ``class_emb`` (``(1 + C, E)``, row 0
    normal; default: the model's own classes).

    ``site``: logits of the sites read-out (only when the model learned a matrix); ``global``:
    ``s * (cos(g, t_c) - cos(g, t_normal))``. With ``unseen`` the sites get no per-disease
    residual and the mean trained bias (they were never trained).
    """
    model.eval()
    with torch.inference_mode():
        classes = model.class_embeddings() if class_emb is None else class_emb
        diseases = classes[1:]
        residual = bias = None
        if unseen:
            k, d = model.cfg.fundus.sites_per_disease, model.cfg.fundus.dim
            residual = diseases.new_zeros((len(diseases), k, d))
            bias = model.site_bias.mean().expand(len(diseases))
        site, glob = [], []
        for x in _batched(pixels, batch_size):
            if model.cfg.matrix == "learn":
                logits, _ = model.fundus_site_logits(x, diseases, residual=residual, bias=bias)
                site.append(logits.numpy())
            cos = model.fundus_global_scores(x, classes)
            glob.append((model.logit_scale.exp() * (cos[:, 1:] - cos[:, :1])).numpy())
    out = {"global": np.concatenate(glob) if glob else np.zeros((0, len(diseases)), np.float32)}
    if site:
        out["site"] = np.concatenate(site)
    return out


def zero_shot_scores(
    model: UopslModel, tokenizer_json: str, catalog: Catalog, ids: list[str], pixels: Tensor | np.ndarray
) -> dict[str, np.ndarray]:
    """``site_scores`` for categories ``ids`` of ``catalog`` that the model never trained on,
    from their descriptions alone."""
    texts = CatalogTexts.build(load_tokenizer(tokenizer_json), catalog.subset(ids), model.cfg.text.context_length)
    with torch.inference_mode():
        class_emb = model.embed_texts(texts)
    return site_scores(model, pixels, class_emb=class_emb, unseen=True)
