"""The evidence of an ablation grid: each comparison's difference with an interval over patients and
intervals that include the training seed, on each class subset and camera subset, and a verdict.

A cell is one trained model (variant, seed) scored on the same test images. For a comparison
``a - b`` the difference of test macro AUROC is computed per seed (same seed, same images), and

* ``patients``: the percentile bootstrap over patients (both eyes together) with the trained
  models held fixed: the mean over seeds, each resample drawing the same patients for every
  seed. It says how sure the test set makes us about THESE models;
* ``seeds_and_patients``: the hierarchical bootstrap: each resample also redraws the seeds with
  replacement, so the spread of training runs enters;
* ``between_seeds``: Student's t interval of the per-seed differences (each on the whole test set).

A claim is ``established`` only when both intervals that include the seeds exclude 0 on the
same side as the estimate (``established against`` when they exclude it on the other side);
otherwise ``not established``; with one seed it cannot be (``one seed``). Every resample of a
cell uses one sort of its scores (``predilect.metrics.weighted_auroc``), so a whole grid's table
recomputes from the kept scores in seconds.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from predilect.metrics import Interval, cluster_weights, t_interval, weighted_auroc

ROW_SUBSETS = ("all", "seen", "held_out")
"""Test images: all, those from cameras the training split has (seen), those from cameras it lacks."""
CLASS_SUBSETS = ("all", "oct_visible", "other", "oct_visible - other")
"""Classes: all trained, the OCT-visible ones, the others, and the difference between those two gains."""


@dataclass(frozen=True)
class Claim:
    """One claim of the results table: what it says and the comparison and classes that test it."""

    text: str
    comparison: tuple[str, str]
    classes: str = "all"


CLAIMS: tuple[Claim, ...] = (
    Claim("OCT labels help beyond their images (vs labels shuffled once)", ("full", "shuffled"), "oct_visible"),
    Claim("OCT labels help beyond their images (vs labels re-drawn every epoch)", ("full", "shuffled_redrawn")),
    Claim("... on the OCT-visible diseases", ("full", "shuffled_redrawn"), "oct_visible"),
    Claim("... more on OCT-visible than on the other diseases", ("full", "shuffled_redrawn"), "oct_visible - other"),
    Claim("the OCT stage helps (vs no OCT)", ("full", "no_oct")),
    Claim("... on the OCT-visible diseases", ("full", "no_oct"), "oct_visible"),
    Claim("memorised label noise costs (labels shuffled once vs re-drawn)", ("shuffled_redrawn", "shuffled")),
    Claim("the OCT site loss is what helps (vs OCT present, site loss 0)", ("full", "no_site_oct")),
    Claim("OCT-learned sites beat fundus-learned sites", ("full", "fundus_sites")),
    Claim("the matrix, head held fixed (vs fixed random sites)", ("full", "random_sites")),
    Claim("the attention head (random sites vs mean pooling)", ("random_sites", "mean_pool")),
    Claim("stage 1 helps (vs from scratch)", ("full", "scratch")),
    Claim("UOPSL beats OCT-CoDA (MultiEYE) in its own setting", ("full", "coda")),
    Claim("OCT-CoDA helps (vs no OCT)", ("coda", "no_oct")),
    Claim("paired data would add more (paired upper bound vs full)", ("paired", "full")),
    Claim("the paired upper bound vs no OCT", ("paired", "no_oct")),
    Claim("geometry-robust training: OCT labels help beyond their images", ("full_geo", "shuffled_redrawn_geo")),
    Claim("... on the OCT-visible diseases", ("full_geo", "shuffled_redrawn_geo"), "oct_visible"),
    Claim("geometry-robust training: the OCT stage helps", ("full_geo", "no_oct_geo")),
)


@dataclass
class GridScores:
    """The test scores of a grid's cells on one test set."""

    ids: list[str]
    labels: np.ndarray  # (N, C)
    groups: np.ndarray  # (N,) patient of each image
    cameras: np.ndarray  # (N,) camera profile of each image, "" when unknown
    seen_cameras: frozenset[str]
    oct_visible: list[str]
    probs: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)

    def rows(self, subset: str) -> np.ndarray:
        if subset == "all":
            return np.ones(len(self.labels), dtype=bool)
        known = self.cameras != ""
        seen = np.isin(self.cameras, sorted(self.seen_cameras))
        return (known & seen) if subset == "seen" else (known & ~seen)

    def columns(self, subset: str) -> list[int]:
        visible = set(self.oct_visible)
        if subset == "all":
            return list(range(len(self.ids)))
        return [j for j, d in enumerate(self.ids) if (d in visible) == (subset == "oct_visible")]

    def seeds(self, variant: str) -> list[int]:
        return sorted(s for v, s in self.probs if v == variant)


class Resampled:
    """Per (cell, rows) each column's AUROC on the whole test set (row 0) and on every patient
    resample (rows 1..R), computed once and shared by every comparison."""

    def __init__(self, grid: GridScores, *, resamples: int, seed: int = 0) -> None:
        self.grid, self.resamples, self.seed = grid, resamples, seed
        weights = cluster_weights(grid.groups, resamples, seed=seed)
        self.weights = np.vstack([np.ones((1, len(grid.labels))), weights])
        self._cache: dict[tuple[str, int, str], np.ndarray] = {}

    def column_aurocs(self, variant: str, seed: int, rows: str) -> np.ndarray:
        key = (variant, seed, rows)
        if key not in self._cache:
            mask = self.grid.rows(rows)
            labels, probs = self.grid.labels[mask], self.grid.probs[(variant, seed)][mask]
            out = np.full((len(self.weights), len(self.grid.ids)), np.nan)
            for j in range(len(self.grid.ids)):
                if 0 < labels[:, j].sum() < len(labels):  # defined on the whole subset
                    out[:, j] = weighted_auroc(labels[:, j] > 0.5, probs[:, j], self.weights[:, mask])
            self._cache[key] = out
        return self._cache[key]

    def macro(self, variant: str, seed: int, rows: str, classes: str) -> np.ndarray:
        """Macro AUROC ``(R + 1,)`` over the subset's columns; the difference of two subsets' gains
        is handled by ``difference``."""
        cols = self.grid.columns(classes)
        values = self.column_aurocs(variant, seed, rows)[:, cols]
        if not cols or not np.isfinite(values[0]).any():
            return np.full(len(values), np.nan)
        with warnings.catch_warnings():  # a resample that leaves no class defined is NaN, and dropped
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(values, axis=1)

    def difference(self, a: str, b: str, seed: int, rows: str, classes: str) -> np.ndarray:
        if classes == "oct_visible - other":
            return self.difference(a, b, seed, rows, "oct_visible") - self.difference(a, b, seed, rows, "other")
        return self.macro(a, seed, rows, classes) - self.macro(b, seed, rows, classes)


def _percentile(values: np.ndarray, point: float, resamples: int) -> Interval:
    finite = values[np.isfinite(values)]
    if not len(finite) or not np.isfinite(point):
        return Interval(point, float("nan"), float("nan"), 0.95, 0)
    low, high = np.quantile(finite, [0.025, 0.975])
    return Interval(point, float(low), float(high), 0.95, len(finite))


def verdict(seeds_and_patients: Interval, between_seeds: Interval, n_seeds: int) -> str:
    """``established`` / ``established against`` / ``not established`` (see the module docstring)."""
    if n_seeds < 2:
        return "one seed"
    intervals = (seeds_and_patients, between_seeds)
    if any(not np.isfinite(i.low) for i in intervals):
        return "not established"
    if all(i.low > 0 for i in intervals) and seeds_and_patients.value > 0:
        return "established"
    if all(i.high < 0 for i in intervals) and seeds_and_patients.value < 0:
        return "established against"
    return "not established"


@dataclass(frozen=True)
class Difference:
    """``a - b`` on one class and row subset, over the seeds both have."""

    seeds: tuple[int, ...]
    value: float
    per_seed: dict[int, Interval]
    patients: Interval
    seeds_and_patients: Interval
    between_seeds: Interval

    @property
    def verdict(self) -> str:
        return verdict(self.seeds_and_patients, self.between_seeds, len(self.seeds))

    def to_dict(self) -> dict[str, Any]:
        return {
            "seeds": list(self.seeds),
            "value": self.value,
            "per_seed": {f"seed{s}": dataclasses.asdict(i) for s, i in self.per_seed.items()},
            "patients": dataclasses.asdict(self.patients),
            "seeds_and_patients": dataclasses.asdict(self.seeds_and_patients),
            "between_seeds": dataclasses.asdict(self.between_seeds),
            "verdict": self.verdict,
        }


def compare(resampled: Resampled, a: str, b: str | None, *, rows: str, classes: str) -> Difference | None:
    """The difference ``a - b`` with its intervals (``b`` None: ``a``'s macro AUROC itself), or None
    when no seed has both cells or the subset leaves no class defined."""
    grid = resampled.grid
    seeds = [s for s in grid.seeds(a) if b is None or s in set(grid.seeds(b))]
    if not seeds or not grid.rows(rows).any():
        return None
    if b is None:
        d = np.stack([resampled.macro(a, s, rows, classes) for s in seeds])
    else:
        d = np.stack([resampled.difference(a, b, s, rows, classes) for s in seeds])  # (S, R + 1)
    if not np.isfinite(d[:, 0]).all():
        return None
    r = resampled.resamples
    point = float(d[:, 0].mean())
    patients = _percentile(d[:, 1:].mean(axis=0), point, r)
    rng = np.random.default_rng(resampled.seed + 1)
    runs = rng.multinomial(len(seeds), np.full(len(seeds), 1.0 / len(seeds)), size=r).T  # (S, R)
    hierarchical = _percentile((runs * d[:, 1:]).sum(axis=0) / len(seeds), point, r)
    per_seed = {s: _percentile(d[i, 1:], float(d[i, 0]), r) for i, s in enumerate(seeds)}
    return Difference(tuple(seeds), point, per_seed, patients, hierarchical, t_interval(d[:, 0]))


def cell_table(resampled: Resampled) -> dict[str, dict[str, float]]:
    """Test macro AUROC of every cell on every class and row subset (NaN where undefined)."""
    table: dict[str, dict[str, float]] = {}
    for variant, seed in sorted(resampled.grid.probs):
        row = {}
        for rows in ROW_SUBSETS:
            for classes in CLASS_SUBSETS[:3]:
                if resampled.grid.rows(rows).any():
                    row[f"{classes}@{rows}"] = float(resampled.macro(variant, seed, rows, classes)[0])
        table[f"{variant}/seed{seed}"] = row
    return table


def comparison_table(resampled: Resampled, comparisons: Iterable[tuple[str, str]]) -> dict[str, dict[str, Difference]]:
    """Every comparison on every class and row subset that the grid has cells for."""
    out: dict[str, dict[str, Difference]] = {}
    for a, b in comparisons:
        row = {}
        for rows in ROW_SUBSETS:
            for classes in CLASS_SUBSETS:
                found = compare(resampled, a, b, rows=rows, classes=classes)
                if found is not None:
                    row[f"{classes}@{rows}"] = found
        if row:
            out[f"{a} - {b}"] = row
    return out


def claim_rows(
    table: dict[str, dict[str, Difference]], claims: Sequence[Claim] = CLAIMS
) -> list[tuple[Claim, dict[str, Difference]]]:
    """Each claim with its difference on all, seen and held-out test images (those the grid has)."""
    rows = []
    for claim in claims:
        found = table.get(f"{claim.comparison[0]} - {claim.comparison[1]}", {})
        by_rows = {r: found[f"{claim.classes}@{r}"] for r in ROW_SUBSETS if f"{claim.classes}@{r}" in found}
        if by_rows:
            rows.append((claim, by_rows))
    return rows
