"""Gradability and the referral decision, server-side: the logic both CPU layouts (and the GPU profile) run.

``Screening.quality`` grades a batch (``predilect.quality``) on the squares preprocessing cut at
the calibrated size: the model inputs themselves when their side is that size, else the quality
squares cut beside them (``PreprocessCfg.quality_size``); ``Screening.decide`` turns a batch's
logits, quality rows and (when the model exports it) attention into the per-image outputs of the
ensemble: PROBABILITIES, FINDINGS, REFERRAL and HEATMAPS, by the referral rules served with the
model (``predilect.referral``).
The split layout runs ``quality`` in its ``preprocess`` step and ``decide`` in ``postprocess``;
the fused layout runs both in its one model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from predilect import contract, quality
from predilect.preprocess import PreprocessCfg, Preprocessed
from predilect.quality import Assessment
from predilect.referral import ReferralRules
from predilect.serving.backends.postprocess import stable_sigmoid

Outputs = dict[str, np.ndarray]


class Screening:
    """The served rules (and their gradability thresholds) applied to batches."""

    def __init__(self, rules: ReferralRules, preprocess: PreprocessCfg) -> None:
        """Raises ``quality.QualitySizeError`` when the thresholds were calibrated at another size
        than ``preprocess.quality_size`` (a model initialize then fails with that one line)."""
        self.rules = rules
        self.preprocess = preprocess
        self.quality_cfg = quality.QualityCfg.from_dict(rules.quality)
        quality.check_size(self.quality_cfg, preprocess.quality_size)
        self._index = {d.id: i for i, d in enumerate(rules.diseases)}

    @classmethod
    def from_parameters(cls, params: Mapping[str, str]) -> Screening:
        """From a model's config parameters (``KEY_RULES`` and ``KEY_PREPROCESS``)."""
        return cls(
            ReferralRules.from_json(params[contract.KEY_RULES]),
            PreprocessCfg.from_json(params[contract.KEY_PREPROCESS]),
        )

    def quality(
        self,
        pixels: np.ndarray,
        planes: np.ndarray | None = None,
        *,
        boxes: Sequence[Any] | np.ndarray | None = None,
        frames: Sequence[Any] | np.ndarray | None = None,
    ) -> quality.Assessment:
        """The ``QUALITY`` and ``QUALITY_MEASURES`` rows of a batch of model inputs ``(N, 3, S, S)``.

        ``planes``: the quality squares ``(N, 3, Q, Q)`` uint8 (``Preprocessed.quality_planes``),
        required when ``preprocess.separate_quality_square``; otherwise the pixels are graded.
        ``boxes`` and ``frames``: each image's field box (``FIELD_BOX`` row) and decoded frame (width,
        height), where the frame lies on the square and how many source pixels it spans
        (``quality.frames_of``).
        """
        cfg = self.preprocess
        if planes is None and cfg.separate_quality_square:
            raise ValueError(
                f"a {cfg.size}-px model input cannot be graded: quality is measured on the {cfg.quality_size}-px "
                "square preprocessing cuts beside it (pass its planes)"
            )
        squares = planes if planes is not None else quality.planes_from_pixels(pixels, cfg.mean, cfg.std)
        return quality.assess_planes(
            squares,
            self.quality_cfg,
            fov_threshold=cfg.fov_threshold,
            frames=quality.frames_of(self.quality_cfg.size, boxes, frames),
        )

    def quality_of(self, done: Preprocessed) -> Assessment:
        """``quality`` of a ``Preprocessor.run(..., quality=True)`` batch: its accepted images, each with its frame."""
        accepted = done.accepted
        return self.quality(
            done.pixels,
            done.quality_planes,
            boxes=[done.boxes[j] for j in accepted],
            frames=[done.frames[j] for j in accepted],
        )

    def decide(self, logits: np.ndarray, quality_rows: np.ndarray, attention: np.ndarray | None = None) -> Outputs:
        """Batch outputs by tensor name: PROBABILITIES, FINDINGS, REFERRAL (and HEATMAPS with ``attention``)."""
        probabilities = stable_sigmoid(logits)
        gradable = ~(np.asarray(quality_rows)[:, 1:] > 0.5).any(axis=1)
        findings = np.zeros(probabilities.shape, dtype=bool)
        codes = np.empty((len(probabilities), 1), dtype=np.int32)
        for row, (p, ok) in enumerate(zip(probabilities, gradable, strict=True)):
            decision = self.rules.decide(p.tolist(), gradable=bool(ok))  # the one definition of the rules
            findings[row, [self._index[f] for f in decision.findings]] = True
            codes[row, 0] = decision.code
        outputs: Outputs = {
            contract.PROBABILITIES: probabilities,
            contract.FINDINGS: findings,
            contract.REFERRAL: codes,
        }
        if attention is not None:
            # Each positive finding's map; zero where there is no finding (and on ungradable images).
            outputs[contract.HEATMAPS] = np.where(findings[:, :, None, None], attention, 0.0).astype(np.float32)
        return outputs


def split_rows(batch: Outputs, sizes: list[int]) -> list[Outputs]:
    """Per-request outputs from batch outputs: consecutive row groups of ``sizes``."""
    bounds = np.cumsum(sizes)[:-1]
    parts = {name: np.split(value, bounds) for name, value in batch.items()}
    return [{name: np.ascontiguousarray(parts[name][i]) for name in batch} for i in range(len(sizes))]
