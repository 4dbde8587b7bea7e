"""OCT-CoDA (MultiEYE, arXiv 2412.09402) on this project's stage-1 model: the prior method UOPSL is
compared against, with the same encoders, data, loaders and epochs.

MultiEYE distils an OCT teacher into a fundus student through *concepts*: text descriptions of
each disease's signs. Each image is read as its vector of similarities to every concept
(``g @ E^T``, the global image embedding against the concept embeddings); a linear classifier
over that vector predicts the disease. Unpaired, the two modalities meet through the classes:
every fundus image is shown with an OCT image of its class (``OctPartners`` with
``same_class``), and

* a *global prototype distillation* pulls the class means of the student's concept
  similarities towards the teacher's (mean squared error over the classes in the batch);
* a *local contrastive distillation* makes the student's concept-similarity vector of an
  image closer to the teacher's vectors of its class than to those of other classes
  (supervised contrastive loss, the teacher's side detached).

Here the concepts are the catalog's descriptions (the normal-eye texts included), embedded by
the text encoder that the CLIP terms train on both modalities (MultiEYE uses a frozen FLAIR
text model, which is not available here); the teacher (the OCT encoder) trains on its OCT
labels in the same steps instead of beforehand, and receives no gradient from the
distillation; MultiEYE's per-batch gate (distil only while the teacher beats the student) is
left out. Stage 2 then fine-tunes the student's fundus encoder with mean pooling, as it does
every variant without a sites matrix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch.nn.functional as F
from torch import Tensor

from predilect.errors import ConfigError
from predilect.models.losses import class_targets, site_bce, soft_clip_loss
from predilect.models.uopsl import UopslModel


@dataclass(frozen=True)
class CodaWeights:
    """Weights of the OCT-CoDA terms (MultiEYE's defaults: beta 0.05, alpha 0.6)."""

    clip_fundus: float = 1.0
    clip_oct: float = 1.0
    cls_fundus: float = 1.0
    cls_oct: float = 1.0
    prototype: float = 0.05
    contrast: float = 0.6
    temperature: float = 0.1

    def __post_init__(self) -> None:
        if min(asdict(self).values()) < 0 or self.temperature == 0:
            raise ConfigError(f"OCT-CoDA weights must be >= 0 and the temperature > 0, got {asdict(self)}")


def concept_embeddings(model: UopslModel) -> Tensor:
    """Every description of every class (the concepts), L2-normalised: ``(M, E)``."""
    if model.texts is None:
        raise ConfigError("OCT-CoDA reads the catalog's descriptions as concepts; it needs text (drop --no-text)")
    device = next(model.parameters()).device
    return F.normalize(model.text(model.texts.ids.to(device)), dim=-1)


def prototype_distillation(student: Tensor, s_labels: Tensor, teacher: Tensor, t_labels: Tensor) -> Tensor:
    """Mean squared error between the class means of ``student (B, M)`` and ``teacher (B', M)``
    over the classes (``normal`` included) present in both batches; labels ``(B, C)``."""
    s_cls, t_cls = class_targets(s_labels), class_targets(t_labels)
    both = (s_cls.sum(0) > 0) & (t_cls.sum(0) > 0)
    if not bool(both.any()):
        return student.new_zeros(())
    s_mean = (s_cls[:, both].t() @ student) / s_cls[:, both].sum(0)[:, None]
    t_mean = (t_cls[:, both].t() @ teacher) / t_cls[:, both].sum(0)[:, None]
    return F.mse_loss(s_mean, t_mean)


def contrastive_distillation(
    student: Tensor, s_labels: Tensor, teacher: Tensor, t_labels: Tensor, *, temperature: float
) -> Tensor:
    """Supervised contrastive loss of each student vector against the teacher vectors: positives
    are the teacher's images with the same label set."""
    s, t = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
    logits = s @ t.t() / temperature  # (B, B')
    same = (class_targets(s_labels)[:, None, :] == class_targets(t_labels)[None, :, :]).all(-1).to(logits.dtype)
    has = same.sum(1) > 0
    if not bool(has.any()):
        return student.new_zeros(())
    log_prob = F.log_softmax(logits, dim=1)
    return -((same * log_prob).sum(1)[has] / same.sum(1)[has]).mean()


def coda_loss(
    model: UopslModel, batch: dict[str, Tensor], *, weights: CodaWeights = CodaWeights()
) -> tuple[Tensor, dict[str, float]]:
    """The OCT-CoDA stage-1 loss on a batch whose OCT scans are class partners of its fundus images."""
    if not model.cfg.concepts:
        raise ConfigError("OCT-CoDA needs the model built with its concept classifiers (UopslCfg.concepts)")
    rows = model.texts.sample() if (model.texts is not None and model.training) else None
    classes = model.class_embeddings(rows)
    concepts = concept_embeddings(model)
    scale = model.logit_scale.exp().clamp(max=100.0)
    labels = batch["labels"]
    fundus = model.global_embedding(model.fundus.content(batch["pixels"]), model.fundus_proj)
    student = fundus @ concepts.t()
    terms: dict[str, Tensor] = {
        "clip_fundus": soft_clip_loss(fundus, classes, class_targets(labels), logit_scale=scale),
        "cls_fundus": site_bce(model.fundus_concepts(student), labels),
    }
    if "scan" in batch:
        oct_labels = batch["oct_labels"]
        octs = model.global_embedding(model.oct.content(batch["scan"]), model.oct_proj)
        teacher = octs @ concepts.t()
        terms["clip_oct"] = soft_clip_loss(octs, classes, class_targets(oct_labels), logit_scale=scale)
        terms["cls_oct"] = site_bce(model.oct_concepts(teacher), oct_labels)
        fixed = teacher.detach()
        terms["prototype"] = prototype_distillation(student, labels, fixed, oct_labels)
        terms["contrast"] = contrastive_distillation(
            student, labels, fixed, oct_labels, temperature=weights.temperature
        )
    total = sum((getattr(weights, k) * v for k, v in terms.items()), start=labels.new_zeros(()))
    return total, {k: float(v.detach()) for k, v in terms.items()}
