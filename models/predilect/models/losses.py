"""The losses of the two stages (see ``predilect.models.uopsl`` for which term shapes what, and why).

* ``soft_clip_loss``: CLIP's symmetric InfoNCE between image embeddings and CLASS text
  embeddings, with soft multi-label targets (an image with two diseases puts half its target
  mass on each; a disease-free image on the ``normal`` text), as FLAIR/UniCL generalise CLIP
  from pairs to categories. Image -> text: a softmax over the classes; text -> image: for each
  class present in the batch, a softmax over the images with its positives as the target.
* ``site_bce``: per-disease binary cross-entropy of the site read-out (what the sites attend to
  must decide whether the disease is there).
* ``pair_clip_loss``: CLIP's symmetric InfoNCE between the fundus and the OCT image of the same
  eye (row ``i`` of both batches is one eye): what paired data adds, for the paired upper bound.
* ``site_diversity``: mean cosine overlap between the attention maps of a disease's K sites on
  images that have the disease (the K sites should cover different places, e.g. the superior
  and inferior arcades, instead of collapsing onto one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def class_targets(labels: Tensor) -> Tensor:
    """``(B, C)`` 0/1 disease labels -> ``(B, 1 + C)`` over ``[normal, *diseases]``: a row
    without disease is ``normal``."""
    normal = (labels.sum(dim=1, keepdim=True) == 0).to(labels.dtype)
    return torch.cat([normal, labels], dim=1)


def soft_clip_loss(
    image_emb: Tensor, class_emb: Tensor, targets: Tensor, *, logit_scale: Tensor, smoothing: float = 0.1
) -> Tensor:
    """Symmetric soft-target InfoNCE between ``image_emb (B, E)`` and ``class_emb (J, E)``
    (both L2-normalised) for ``targets (B, J)`` in {0, 1}."""
    logits = logit_scale * image_emb @ class_emb.t()  # (B, J)
    n_classes = class_emb.shape[0]
    row_mass = targets.sum(dim=1, keepdim=True).clamp_min(1.0)
    i2t_target = (1.0 - smoothing) * targets / row_mass + smoothing / n_classes
    image_to_text = -(i2t_target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    present = targets.sum(dim=0) > 0
    if not bool(present.any()):
        return image_to_text
    cols = targets[:, present]  # (B, J')
    t2i_target = cols / cols.sum(dim=0, keepdim=True)
    text_to_image = -(t2i_target * F.log_softmax(logits[:, present], dim=0)).sum(dim=0).mean()
    return 0.5 * (image_to_text + text_to_image)


def pair_clip_loss(fundus_emb: Tensor, oct_emb: Tensor, *, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE of ``fundus_emb (B, E)`` against ``oct_emb (B, E)`` (L2-normalised), row
    ``i`` of each the same eye."""
    logits = logit_scale * fundus_emb @ oct_emb.t()
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def site_bce(logits: Tensor, labels: Tensor, *, pos_weight: Tensor | None = None) -> Tensor:
    """Mean per-disease BCE of ``logits (B, C)`` against ``labels (B, C)``."""
    return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight)


def site_attention(tokens: Tensor, sites: Tensor) -> Tensor:
    """Each site's softmax attention over the tokens: ``(B, N, D), (C, K, D) -> (B, C, K, N)``."""
    n_diseases, n_sites, dim = sites.shape
    scores = torch.einsum("bnd,qd->bqn", tokens, sites.reshape(n_diseases * n_sites, dim)) * dim**-0.5
    return torch.softmax(scores, dim=-1).reshape(tokens.shape[0], n_diseases, n_sites, tokens.shape[1])


def site_diversity(attention: Tensor, labels: Tensor) -> Tensor:
    """Mean cosine overlap (0 = disjoint, 1 = identical) between the K attention maps of each
    disease on its positive images; ``attention (B, C, K, N)``, ``labels (B, C)``."""
    n_sites = attention.shape[2]
    if n_sites < 2:
        return attention.new_zeros(())
    unit = F.normalize(attention, dim=-1)
    gram = unit @ unit.transpose(-1, -2)  # (B, C, K, K)
    off_diagonal = (gram.sum(dim=(-1, -2)) - gram.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n_sites * (n_sites - 1))
    weights = labels.to(off_diagonal.dtype)
    return (off_diagonal * weights).sum() / weights.sum().clamp_min(1.0)
