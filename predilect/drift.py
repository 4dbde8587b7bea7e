"""Shift monitoring: a model's reference distributions, and how far what it sees now lies from them.

A ``Reference`` holds, for each *series* -- every quality measure (``quality.<measure>``, all images)
and every disease probability (``probability.<disease>``, gradable images) -- the inner edges of
``BINS`` equal-mass bins on held-out images and each bin's share, plus the ungradable share. ``predilect
assemble --reference-manifest`` stores one with the model (``contract.KEY_REFERENCE``); the served shift
metrics use its edges as histogram buckets, so a Prometheus histogram reads against it directly.

``compare`` bins what a site sees (a screening journal's measures and probabilities) on the same edges
and reports per series the population stability index, ``PSI = sum (o - r) ln(o / r)`` over the bins
(shares ``o`` observed, ``r`` reference, each floored at ``SHARE_FLOOR``), the binned Kolmogorov-Smirnov
distance (the largest gap between the two cumulative shares) and an alert level by the customary PSI
bands: below ``PSI_WARN`` stable, up to ``PSI_ALERT`` a shift to watch, beyond it a shift to act on (a new
camera, a changed protocol). The ungradable share is a two-bin series of its own. Fewer than
``MIN_IMAGES`` images are too few to tell (level ``too_few``). Between two samples of one population PSI
over k bins is about ``(k - 1) (1/n + 1/m)`` by chance alone (``chance_psi``: 0.07 for 200 images against a
400-image reference), so the level is read from PSI less that expectation. Bin values fall in
``(e[i-1], e[i]]``, the buckets' ``le`` semantics.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from predilect.errors import UserError

REFERENCE_FORMAT = "predilect.reference.v1"
BINS = 10
SHARE_FLOOR = 1e-4
PSI_WARN, PSI_ALERT = 0.1, 0.25
MIN_IMAGES = 200
LEVELS = ("stable", "watch", "alert")
TOO_FEW = "too_few"
UNGRADABLE = "ungradable"
QUALITY_PREFIX, PROBABILITY_PREFIX = "quality.", "probability."


class ReferenceError(UserError, ValueError):
    """A reference that is missing, malformed, or does not describe the model it is compared with."""


@dataclass(frozen=True)
class Histogram:
    """``edges``: ascending inner bin edges (``len(shares) - 1`` of them); ``shares``: each bin's share."""

    edges: tuple[float, ...]
    shares: tuple[float, ...]
    count: int

    def bin_counts(self, values: np.ndarray) -> np.ndarray:
        """How many of ``values`` fall in each bin (``(e[i-1], e[i]]``); NaN values are left out."""
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        index = np.searchsorted(np.asarray(self.edges, dtype=np.float64), values, side="left")
        return np.bincount(index, minlength=len(self.shares)).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "shares": list(self.shares), "count": self.count}

    @classmethod
    def of(cls, values: np.ndarray, *, bins: int = BINS) -> Histogram:
        """Equal-mass bins of ``values``; a bin holding under half its share (ties: a measure that is mostly 0)
        is merged into its neighbour, so that no reference bin is nearly empty (PSI divides by its share)."""
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        if not len(values):
            raise ReferenceError("a reference series needs at least one value")
        edges = list(np.unique(np.round(np.quantile(values, np.arange(1, bins) / bins), 9)))
        smallest = 0.5 / bins
        while edges:
            counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
            shares = counts / len(values)
            thin = int(np.argmin(shares))
            if shares[thin] >= smallest:
                break
            del edges[min(thin, len(edges) - 1)]  # the bin's upper edge (the last bin: its lower one)
        if not edges:
            edges = [float(np.median(values))]
        counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
        return cls(tuple(float(e) for e in edges), tuple(float(c) / len(values) for c in counts), int(len(values)))


@dataclass(frozen=True)
class Reference:
    """A model's reference distributions (see the module docstring)."""

    series: Mapping[str, Histogram]
    ungradable_share: float
    count: int
    source: str = ""
    format: str = REFERENCE_FORMAT

    @classmethod
    def build(
        cls,
        *,
        measures: Mapping[str, np.ndarray],
        probabilities: Mapping[str, np.ndarray],
        ungradable: np.ndarray,
        source: str,
    ) -> Reference:
        """From held-out images: each quality measure over all of them, each probability over the gradable ones."""
        ungradable = np.asarray(ungradable, dtype=bool)
        series = {QUALITY_PREFIX + name: Histogram.of(values) for name, values in measures.items()}
        for disease, values in probabilities.items():
            gradable = np.asarray(values)[~ungradable]
            if len(gradable):
                series[PROBABILITY_PREFIX + disease] = Histogram.of(gradable)
        return cls(series=series, ungradable_share=float(ungradable.mean()), count=int(len(ungradable)), source=source)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "source": self.source,
            "count": self.count,
            "ungradable_share": self.ungradable_share,
            "series": {name: h.to_dict() for name, h in sorted(self.series.items())},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Reference:
        try:
            data = json.loads(text)
            if data.get("format") != REFERENCE_FORMAT:
                raise ReferenceError(f"not a {REFERENCE_FORMAT} reference (format {data.get('format')!r})")
            series = {
                str(name): Histogram(
                    tuple(float(e) for e in h["edges"]), tuple(float(s) for s in h["shares"]), int(h["count"])
                )
                for name, h in dict(data["series"]).items()
            }
            for name, h in series.items():
                if len(h.shares) != len(h.edges) + 1 or list(h.edges) != sorted(h.edges):
                    raise ReferenceError(f"reference series {name}: {len(h.edges)} edges for {len(h.shares)} bins")
            return cls(
                series=series,
                ungradable_share=float(data["ungradable_share"]),
                count=int(data["count"]),
                source=str(data.get("source", "")),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            if isinstance(e, ReferenceError):
                raise
            raise ReferenceError(f"not a readable reference: {e}") from e

    def buckets(self, name: str) -> list[float]:
        """The histogram bucket bounds (``le``) of a series: its inner edges; [] when the reference lacks it."""
        histogram = self.series.get(name)
        return list(histogram.edges) if histogram is not None else []


def psi(observed: np.ndarray, reference: Sequence[float]) -> float:
    """Population stability index of observed bin counts against reference shares."""
    counts = np.asarray(observed, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return math.nan
    o = np.maximum(counts / total, SHARE_FLOOR)
    r = np.maximum(np.asarray(reference, dtype=np.float64), SHARE_FLOOR)
    return float(np.sum((o - r) * np.log(o / r)))


def ks_distance(observed: np.ndarray, reference: Sequence[float]) -> float:
    """The largest gap between the observed and the reference cumulative bin shares."""
    counts = np.asarray(observed, dtype=np.float64)
    if counts.sum() <= 0:
        return math.nan
    return float(np.max(np.abs(np.cumsum(counts / counts.sum()) - np.cumsum(np.asarray(reference, dtype=np.float64)))))


def chance_psi(bins: int, count: int, reference_count: int) -> float:
    """The PSI two samples of one population show by chance over ``bins`` bins: ``(bins - 1) (1/n + 1/m)``."""
    return (bins - 1) * (1.0 / max(count, 1) + 1.0 / max(reference_count, 1))


def level(value: float, count: int, *, chance: float = 0.0) -> str:
    """The alert level of a PSI over ``count`` images, less the PSI expected by ``chance``."""
    if count < MIN_IMAGES or not math.isfinite(value):
        return TOO_FEW
    excess = value - chance
    return LEVELS[0] if excess < PSI_WARN else LEVELS[1] if excess < PSI_ALERT else LEVELS[2]


@dataclass(frozen=True)
class SeriesDrift:
    """One series of one group: how many images, PSI, KS, level, and the observed shares beside the reference."""

    name: str
    count: int
    psi: float
    ks: float
    level: str
    observed: tuple[float, ...]
    reference: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "count": self.count,
            "psi": self.psi,
            "ks": self.ks,
            "level": self.level,
            "observed": list(self.observed),
            "reference": list(self.reference),
        }


@dataclass(frozen=True)
class Drift:
    """Every series of one group of images (all, or one camera): ``level`` is the worst series' level."""

    group: str
    count: int
    ungradable_share: float
    series: list[SeriesDrift] = field(default_factory=list)

    @property
    def level(self) -> str:
        levels = [s.level for s in self.series if s.level != TOO_FEW]
        if not levels:
            return TOO_FEW
        return max(levels, key=LEVELS.index)

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "count": self.count,
            "ungradable_share": self.ungradable_share,
            "level": self.level,
            "series": [s.to_dict() for s in self.series],
        }


def compare(
    reference: Reference,
    *,
    measures: Mapping[str, np.ndarray],
    probabilities: Mapping[str, np.ndarray],
    ungradable: np.ndarray,
    group: str = "all",
) -> Drift:
    """How far one group's measures (all images), probabilities (gradable images) and ungradable share lie
    from ``reference`` (see the module docstring); series the reference lacks are left out."""
    ungradable = np.asarray(ungradable, dtype=bool)
    count = int(len(ungradable))
    rows: list[SeriesDrift] = []
    share = float(ungradable.mean()) if count else math.nan
    two_bins = np.array([count - int(ungradable.sum()), int(ungradable.sum())])
    expected = (1.0 - reference.ungradable_share, reference.ungradable_share)
    value = psi(two_bins, expected)
    rows.append(
        SeriesDrift(
            UNGRADABLE,
            count,
            value,
            ks_distance(two_bins, expected),
            level(value, count, chance=chance_psi(2, count, reference.count)),
            tuple((two_bins / max(count, 1)).tolist()),
            expected,
        )
    )
    observed_series = {QUALITY_PREFIX + k: np.asarray(v) for k, v in measures.items()}
    observed_series |= {PROBABILITY_PREFIX + k: np.asarray(v)[~ungradable] for k, v in probabilities.items()}
    for name, values in observed_series.items():
        histogram = reference.series.get(name)
        if histogram is None:
            continue
        counts = histogram.bin_counts(values)
        total = int(counts.sum())
        value = psi(counts, histogram.shares)
        rows.append(
            SeriesDrift(
                name,
                total,
                value,
                ks_distance(counts, histogram.shares),
                level(value, total, chance=chance_psi(len(histogram.shares), total, histogram.count)),
                tuple((counts / max(total, 1)).tolist()),
                histogram.shares,
            )
        )
    return Drift(group=group, count=count, ungradable_share=share, series=rows)


def report_markdown(drifts: Sequence[Drift], reference: Reference, *, header: Sequence[str]) -> str:
    """The drift of each group as markdown: its level, then each series by PSI, worst first."""
    lines = [*header, ""]
    lines += [
        f"Reference: {reference.count} images ({reference.source or 'source not recorded'}), ungradable "
        f"{100 * reference.ungradable_share:.1f}%. PSI beyond what chance gives two samples of one population "
        f"(k - 1)(1/n + 1/m) over k bins: < {PSI_WARN} stable; < {PSI_ALERT} watch; else alert; "
        f"fewer than {MIN_IMAGES} images: too few to tell.",
        "",
    ]
    for drift in drifts:
        lines += [
            f"## {drift.group}: **{drift.level}** "
            f"({drift.count} images, ungradable {100 * drift.ungradable_share:.1f}%)",
            "",
            "| series | images | PSI | KS | level |",
            "|---|---|---|---|---|",
        ]
        ordered = sorted(drift.series, key=lambda s: -(s.psi if math.isfinite(s.psi) else -1.0))
        lines += [f"| {s.name} | {s.count} | {s.psi:.3f} | {s.ks:.3f} | {s.level} |" for s in ordered]
        lines.append("")
    return "\n".join(lines)
