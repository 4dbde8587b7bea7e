"""Choosing gradability thresholds from measured images: shared by the phantom calibration (``predilect.training
.gradability``) and the calibration on a site's own labelled images (``predilect.client.site_calibration``).

For a check, the *clean* images are those it must pass (clean phantom copies, or photographs a site's grader
called gradable) and the *target* images those it must flag (the degradations it is aimed at, or what the
grader called ungradable for its reason). ``tail_threshold`` places the threshold at the clean images'
``clean_quantile`` tail, moved to the midpoint between it and the targets' 5% tail where those lie beyond it,
so that unseen clean variation keeps room. Area checks never fail below ``MIN_AREA``. ``DEFINED`` thresholds
are set by what they mean and never chosen on images. ``auc`` scores how well a check's measure separates
the two groups (0.5: not at all, 1: perfectly), the site report's per-measure ROC summary.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from predilect.errors import UserError
from predilect.quality.config import ALWAYS, MASKED, MEASURES, Check

DEFINED: Mapping[str, float] = {
    "field_px": 200.0,
    "field_visible": 0.8,
    "chroma": 0.1,
    "redness": 0.05,
}
"""Thresholds set by what they mean, not chosen on images: a field under 200 px across is upsampled by more
than 12% into the 224-px grading square, finer than it holds (``too_small``); a grader needs at least four
fifths of the camera's field (a 3:2 frame keeps about nine tenths); a second colour channel carries
at least a tenth of the light in a colour photograph (a colour fundus, pale, cast or pseudo-colour, a quarter
or more; a red-free or greyscale one 0 to 0.02 after JPEG); a colour fundus in a camera mask has
red above blue (blood and melanin absorb blue first), pale, pigmented or cast, by more than 0.05 of its
brightness."""
MIN_AREA: Mapping[str, float] = {"saturated": 0.01, "unlit": 0.01, "glare": 0.01, "dust": 0.002}
"""The smallest share of the field each area check may fail at: glare, saturation or shadow on under 1% of
the field, or dust shadows (measured as blob cores) on under 0.2%, do not stop a grader."""
DEGRADED_TAIL = 0.05


class CalibrationError(UserError, ValueError):
    """Images (or an option) the gradability thresholds cannot be calibrated from; the message says what to change."""


def check_values(measures: np.ndarray, check: Check, *, usable: np.ndarray | None = None) -> np.ndarray:
    """The measure ``check`` reads from rows ``(N, len(MEASURES))``, NaN where it does not apply (masked or
    unmasked photographs only) or where ``usable`` is False."""
    values = np.asarray(measures, dtype=np.float64)[:, MEASURES.index(check.measure)].copy()
    circular = np.asarray(measures)[:, MEASURES.index("masked")] > 0.5
    if check.when != ALWAYS:
        values[~circular if check.when == MASKED else circular] = np.nan
    if usable is not None:
        values[~np.asarray(usable, dtype=bool)] = np.nan
    return values


def tail_threshold(clean: np.ndarray, target: np.ndarray, *, upper: bool, clean_quantile: float) -> float:
    """The threshold between ``clean`` and ``target`` values of an upper ("max") or lower bound (module docstring)."""
    if not 0.5 < clean_quantile <= 1.0:
        raise CalibrationError(f"clean_quantile must lie in (0.5, 1], got {clean_quantile}")
    if not len(clean):
        raise CalibrationError("a check has no clean image to place its threshold on")
    clean_tail = float(np.quantile(clean, clean_quantile if upper else 1.0 - clean_quantile))
    if not len(target):
        return clean_tail
    degraded_tail = float(np.quantile(target, DEGRADED_TAIL if upper else 1.0 - DEGRADED_TAIL))
    if (degraded_tail > clean_tail) if upper else (degraded_tail < clean_tail):
        return (clean_tail + degraded_tail) / 2.0
    return clean_tail


def floored(name: str, threshold: float) -> float:
    """``threshold`` raised to the check's ``MIN_AREA`` where it has one."""
    return max(threshold, MIN_AREA.get(name, threshold))


def auc(clean: np.ndarray, target: np.ndarray, *, upper: bool) -> float:
    """Probability that a target image lies further past the clean ones than a clean image (ties count half):
    the area under the ROC curve of the check's measure; NaN without both groups."""
    clean, target = np.asarray(clean, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if not len(clean) or not len(target):
        return float("nan")
    if not upper:
        clean, target = -clean, -target
    order = np.concatenate([clean, target])
    ranks = _average_ranks(order)
    target_ranks = ranks[len(clean) :].sum()
    return float((target_ranks - len(target) * (len(target) + 1) / 2.0) / (len(clean) * len(target)))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    sorted_values = values[order]
    _, first, counts = np.unique(sorted_values, return_index=True, return_counts=True)
    for start, count in zip(first, counts, strict=True):
        if count > 1:
            ranks[order[start : start + count]] = start + (count + 1) / 2.0
    return ranks


def roc_points(
    clean: np.ndarray, target: np.ndarray, *, upper: bool, points: int = 11
) -> list[tuple[float, float, float]]:
    """(threshold, share of targets flagged, share of clean images flagged) at ``points`` thresholds spread
    over the values' quantiles: the ROC curve of the check's measure, for the site report."""
    values = np.concatenate([clean, target])
    if not len(values):
        return []
    out = []
    for t in np.unique(np.quantile(values, np.linspace(0.0, 1.0, points))):
        flag_t = float(np.mean(target >= t)) if upper else float(np.mean(target <= t))
        flag_c = float(np.mean(clean >= t)) if upper else float(np.mean(clean <= t))
        out.append((float(t), flag_t if len(target) else float("nan"), flag_c if len(clean) else float("nan")))
    return out
