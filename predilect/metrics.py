"""Screening metrics in plain numpy (no scikit-learn dependency): AUROC, average precision,
operating points (thresholds tuned on one split, applied to another), calibration (ECE), and
the one bootstrap helper every confidence interval in the project uses (``bootstrap_ci``,
``paired_bootstrap_ci`` for differences between two models on the same images)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from predilect.errors import UserError


class UndefinedMetricError(UserError, ValueError):
    """A metric the labels scored cannot define (no positive, or no negative, image): score a set with both."""


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic, ties counted half."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise UndefinedMetricError(f"AUROC needs positives and negatives, got {n_pos} and {n_neg}")
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
        raise UndefinedMetricError("no disease has both positives and negatives; macro AUROC is undefined")
    return float(np.mean(list(per.values())))


# ----------------------------------------------------------------------------- operating points


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as the mean precision at each positive (ties
    broken against the positives: the pessimistic step interpolation)."""
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    if n_pos == 0:
        raise UndefinedMetricError("average precision needs at least one positive")
    order = np.lexsort((labels, -np.asarray(scores, dtype=np.float64)))  # score desc, negatives first in ties
    hits = labels[order]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at[hits].sum() / n_pos)


def threshold_for_specificity(labels: np.ndarray, scores: np.ndarray, specificity: float) -> float:
    """The lowest threshold whose specificity (``score < t`` among negatives) reaches ``specificity``."""
    negatives = np.sort(np.asarray(scores, dtype=np.float64)[~np.asarray(labels).astype(bool)])
    if len(negatives) == 0:
        raise UndefinedMetricError("a specificity threshold needs negatives")
    k = int(np.ceil(specificity * len(negatives)))  # negatives that must fall below the threshold
    if k <= 0:
        return float(negatives[0])
    if k >= len(negatives):
        return float(np.nextafter(negatives[-1], np.inf))
    return float(np.nextafter(negatives[k - 1], np.inf)) if negatives[k] == negatives[k - 1] else float(negatives[k])


def threshold_max_f1(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold (one of the scores) that maximises F1 of ``score >= t``."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    best, best_f1 = float(scores.max()), -1.0
    for t in np.unique(scores):
        f1 = operating_point(labels, scores, float(t))["f1"]
        if f1 > best_f1:
            best, best_f1 = float(t), f1
    return best


def operating_point(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, precision and F1 of ``score >= threshold``."""
    labels = np.asarray(labels).astype(bool)
    positive = np.asarray(scores) >= threshold
    tp, fp = int((positive & labels).sum()), int((positive & ~labels).sum())
    fn, tn = int((~positive & labels).sum()), int((~positive & ~labels).sum())
    sensitivity = tp / (tp + fn) if tp + fn else float("nan")
    specificity = tn / (tn + fp) if tn + fp else float("nan")
    precision = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {"sensitivity": sensitivity, "specificity": specificity, "precision": precision, "f1": f1}


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, *, bins: int = 10) -> float:
    """ECE over equal-width probability bins: sum over bins of (share of items) x |accuracy -
    confidence|, where for binary probabilities accuracy is the positive rate in the bin."""
    labels = np.asarray(labels, dtype=np.float64).ravel()
    probs = np.asarray(probs, dtype=np.float64).ravel()
    if len(probs) == 0:
        raise UndefinedMetricError("ECE of no predictions")
    which = np.minimum((probs * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(labels[inside].mean() - probs[inside].mean())
    return float(total)


def reliability(labels: np.ndarray, probs: np.ndarray, *, bins: int = 10) -> list[tuple[float, float, int]]:
    """Per non-empty bin: (mean predicted probability, observed positive rate, count)."""
    labels = np.asarray(labels, dtype=np.float64).ravel()
    probs = np.asarray(probs, dtype=np.float64).ravel()
    which = np.minimum((probs * bins).astype(int), bins - 1)
    return [
        (float(probs[which == b].mean()), float(labels[which == b].mean()), int((which == b).sum()))
        for b in range(bins)
        if (which == b).any()
    ]


# ----------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap percentile interval (``level``, e.g. 0.95)."""

    value: float
    low: float
    high: float
    level: float = 0.95
    resamples: int = 0

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _resample(n: int, groups: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Row indices of one bootstrap resample: rows drawn with replacement, or whole groups
    (e.g. both eyes of a patient) when ``groups`` is given."""
    if groups is None:
        return rng.integers(0, n, n)
    _, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    picked = rng.integers(0, len(members), len(members))
    return np.concatenate([members[g] for g in picked])


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    groups: np.ndarray | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap of ``statistic(rows)`` over ``n`` rows (cluster bootstrap over
    ``groups`` when given). Resamples where the statistic is undefined (it raises ValueError, as
    ``UndefinedMetricError`` is, or returns NaN, e.g. no positive drawn) are dropped; the count kept
    is in the result."""
    value = float(statistic(np.arange(n)))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        try:
            stat = float(statistic(_resample(n, groups, rng)))
        except ValueError:
            continue
        if np.isfinite(stat):
            draws.append(stat)
    if not draws:
        return Interval(value, float("nan"), float("nan"), level, 0)
    low, high = np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2])
    return Interval(value, float(low), float(high), level, len(draws))


def paired_bootstrap_ci(
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
    *,
    groups: np.ndarray | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Bootstrap interval of ``metric(labels, scores_a) - metric(labels, scores_b)`` with BOTH
    models scored on the same resampled images (the pairing removes the images' own variance)."""
    labels, scores_a, scores_b = np.asarray(labels), np.asarray(scores_a), np.asarray(scores_b)
    if not (len(labels) == len(scores_a) == len(scores_b)):
        raise ValueError(f"paired scores need equal lengths, got {len(labels)}, {len(scores_a)}, {len(scores_b)}")

    def difference(rows: np.ndarray) -> float:
        return metric(labels[rows], scores_a[rows]) - metric(labels[rows], scores_b[rows])

    return bootstrap_ci(difference, len(labels), groups=groups, resamples=resamples, level=level, seed=seed)


def macro(metric: Callable[[np.ndarray, np.ndarray], float]) -> Callable[[np.ndarray, np.ndarray], float]:
    """A per-column metric averaged over the columns that have both classes (ValueError if none)."""

    def averaged(labels: np.ndarray, scores: np.ndarray) -> float:
        values = [
            metric(labels[:, j], scores[:, j]) for j in range(labels.shape[1]) if 0 < labels[:, j].sum() < len(labels)
        ]
        if not values:
            raise UndefinedMetricError("no disease has both positive and negative images among those scored")
        return float(np.mean(values))

    return averaged


def on_rows(
    metric: Callable[[np.ndarray, np.ndarray], float], labels: np.ndarray, scores: np.ndarray
) -> Callable[[np.ndarray], float]:
    """``rows -> metric(labels[rows], scores[rows])``: a statistic for ``bootstrap_ci``."""

    def statistic(rows: np.ndarray) -> float:
        return metric(labels[rows], scores[rows])

    return statistic


def wilson(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95% interval of a proportion."""
    if total == 0:
        return (math.nan, math.nan)
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


_EDGE = 1e-6


@dataclass(frozen=True)
class Rates:
    sensitivity: float
    specificity: float
    positives: int
    negatives: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def threshold_for_sensitivity(labels: np.ndarray, scores: np.ndarray, target: float) -> float | None:
    """The highest threshold with sensitivity >= ``target`` on (labels, scores); None without positives."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must lie in (0, 1], got {target}")
    positive = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(labels, dtype=bool)])[::-1]
    if len(positive) == 0:
        return None
    k = max(1, math.ceil(target * len(positive) - 1e-9))
    return float(np.clip(positive[k - 1], _EDGE, 1.0 - _EDGE))


def rates(labels: np.ndarray, scores: np.ndarray, threshold: float) -> Rates:
    """Sensitivity and specificity of ``scores >= threshold`` (NaN where a class is absent)."""
    labels = np.asarray(labels, dtype=bool)
    called = np.asarray(scores) >= threshold
    positives, negatives = int(labels.sum()), int((~labels).sum())
    return Rates(
        sensitivity=float(called[labels].mean()) if positives else math.nan,
        specificity=float((~called[~labels]).mean()) if negatives else math.nan,
        positives=positives,
        negatives=negatives,
    )


# ----------------------------------------------------------------------------- many resamples at once


def cluster_weights(groups: np.ndarray, resamples: int, *, seed: int = 0) -> np.ndarray:
    """Row weights ``(resamples, n)`` of a cluster bootstrap: each resample draws the clusters
    (``groups``, e.g. patients) with replacement, and a row weighs as often as its cluster was drawn."""
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(inverse.max()) + 1 if len(inverse) else 0
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=resamples) if n_groups else None
    return np.zeros((resamples, 0)) if counts is None else counts[:, inverse].astype(np.float64)


def weighted_auroc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of ``scores`` for each row of ``weights (R, n)`` (a row's items counted that many
    times; ties counted half), ``NaN`` where a weighting leaves no positive or no negative. With
    integer weights it equals ``auroc`` of the rows repeated, so one sort serves every resample."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(scores, kind="mergesort")
    ranked, positive = scores[order], labels[order]
    w = weights[:, order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]]) if len(ranked) else np.array([0])
    pos = np.add.reduceat(w * positive, starts, axis=1)
    neg = np.add.reduceat(w * ~positive, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, (pos * (below + 0.5 * neg)).sum(axis=1) / pairs, np.nan)


_T975: tuple[float, ...] = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
_T975 += (2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086)
_T975 += (2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (a table to 30; beyond, within 0.002)."""
    if df < 1:
        raise ValueError(f"Student's t needs df >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df


def t_interval(values: np.ndarray) -> Interval:
    """95% interval of the mean of ``values`` (e.g. one difference per training seed) from Student's
    t: the between-run interval. NaN bounds with fewer than two values."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean()) if len(values) else float("nan")
    if len(values) < 2:
        return Interval(mean, float("nan"), float("nan"), 0.95, len(values))
    half = t_quantile_975(len(values) - 1) * float(values.std(ddof=1)) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half, 0.95, len(values))
