"""Screening metrics in plain numpy (no scikit-learn dependency)."""

from __future__ import annotations

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
