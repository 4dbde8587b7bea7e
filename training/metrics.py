"""Screening metrics in plain numpy (no scikit-learn dependency)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic, ties counted half."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs positives and negatives, got {n_pos} and {n_neg}")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def per_disease_auroc(labels: np.ndarray, scores: np.ndarray, ids: list[str]) -> dict[str, float]:
    """AUROC for each column; columns without both classes are left out."""
    result = {}
    for j, disease in enumerate(ids):
        column = labels[:, j]
        if 0 < column.sum() < len(column):
            result[disease] = auroc(column, scores[:, j])
    return result


def macro_auroc(labels: np.ndarray, scores: np.ndarray, ids: list[str]) -> float:
    per = per_disease_auroc(labels, scores, ids)
    if not per:
        raise ValueError("no disease has both positives and negatives; macro AUROC is undefined")
    return float(np.mean(list(per.values())))


@dataclass(frozen=True)
class BootstrapCI:
    """A paired bootstrap of the macro-AUROC difference ``b - a`` over the same images."""

    difference: float
    """On all images."""
    low: float
    high: float
    confidence: float
    resamples: int

    def describe(self) -> str:
        return (
            f"{self.difference:+.4f} ({self.confidence:.0%} CI [{self.low:+.4f}, {self.high:+.4f}], "
            f"paired bootstrap, {self.resamples} resamples)"
        )


def paired_bootstrap_ci(
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    ids: list[str],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapCI:
    """Percentile CI of ``macro_auroc(b) - macro_auroc(a)`` resampling images with replacement.

    Both score sets are evaluated on the same resample each time (paired), so what varies
    between the models, not between image draws, sets the interval. Resamples in which no
    disease has both classes are drawn again.
    """
    if scores_a.shape != scores_b.shape or len(labels) != len(scores_a):
        raise ValueError(f"labels {labels.shape} and scores {scores_a.shape}, {scores_b.shape} must match")
    if not 0 < confidence < 1 or resamples < 1:
        raise ValueError("confidence must lie in (0, 1) and resamples be >= 1")
    difference = macro_auroc(labels, scores_b, ids) - macro_auroc(labels, scores_a, ids)  # raises if undefined
    rng = np.random.default_rng(seed)
    n, diffs = len(labels), []
    for _ in range(20 * resamples):
        idx = rng.integers(0, n, n)
        try:
            diffs.append(macro_auroc(labels[idx], scores_b[idx], ids) - macro_auroc(labels[idx], scores_a[idx], ids))
        except ValueError:
            continue
        if len(diffs) == resamples:
            break
    else:
        raise ValueError(f"only {len(diffs)} of {resamples} resamples had a disease with both classes")
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(diffs, [tail, 100.0 - tail])
    return BootstrapCI(
        difference=difference,
        low=float(low),
        high=float(high),
        confidence=confidence,
        resamples=resamples,
    )
