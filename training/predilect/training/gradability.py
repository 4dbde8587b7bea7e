"""Calibrate and measure the gradability step (``predilect.quality``) on phantom photographs.

The calibration set is the phantom's train + val images and degraded copies of them; the
measurement set is its test images (every one, clean) and degraded copies of other test
images made with another seed -- patients, and the test-only camera profile, never seen by the
calibration. Images go through the served path: ``Preprocessor.run(..., quality=True)`` (the square
the gradability step measures, at ``PreprocessCfg.quality_size``: the model input itself, through
``quality.planes_from_pixels``, when the model's side is that size), ``quality.measure``,
``quality.grade``; the thresholds record that size (``QualityCfg.size``), the only one serving
applies them at. An image
that preprocessing refuses outright (no field of view at all) is counted as flagged, and
reported as refused.

Thresholds: per check, the clean calibration images' ``clean_quantile`` (its complement for a
lower bound); where the degraded images aimed at that check (``TARGET_KINDS``) lie beyond it --
their 5% tail past the clean tail -- the threshold moves to the midpoint between the two
tails, so that unseen clean variation has room. Area measures never fail below ``MIN_AREA``: a
small glare spot or shadow does not stop a grader, and a clean quantile of an almost-always-zero
measure would otherwise flag the first unusual clean image. Whatever the figures show is reported,
and for each kind that misses its target (< 95% flagged) the report shows where the measure its
check reads lies (``spreads``): the clean images per camera, the kind per strength, and the share of
clean images that a threshold flagging 95% of each group would fail -- whether the kind lies
inside the clean spread, where no threshold on that measure can tell it apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from predilect import quality
from predilect.catalog import Catalog
from predilect.contract import QUALITY_REASONS
from predilect.manifest import Record, capture_of, colour_screened, field_angle_of, read_manifest, write_manifest
from predilect.metrics import wilson
from predilect.preprocess import PreprocessCfg, Preprocessor
from predilect.quality import calibration
from predilect.quality.calibration import DEFINED, CalibrationError

CLEAN = "none"
RED_FREE = "red_free"
"""The kind of a clean red-free capture: another image type, for the gradability step to name (``monochrome``),
never a clean colour photograph; it is counted as a kind to flag, and never degraded."""
TARGET_KINDS: Mapping[str, tuple[str, ...]] = {
    "field_px": (),
    "field_visible": ("fov",),
    "field_offset": ("fov",),
    "unlit": ("occlusion",),
    "blur": ("blur",),
    "exposure": ("dark",),
    "saturated": ("bright",),
    "glare": ("reflection",),
    "haze": ("reflection",),
    "dust": ("dust",),
    "chroma": (RED_FREE,),
    "redness": (),
    "redness_unmasked": ("external", "oct"),
}
"""Per check (``quality.CHECKS`` names): the degradation kinds it is aimed at."""
EXPECTED_REASON: Mapping[str, str] = {
    "blur": "focus",
    "dark": "underexposed",
    "bright": "overexposed",
    "fov": "field_of_view",
    "occlusion": "artefact",
    "dust": "artefact",
    "reflection": "artefact",
    "external": "wrong_image_type",
    "oct": "wrong_image_type",
    RED_FREE: "monochrome",
}
_FLAG_SHARE = 0.95


@dataclass(frozen=True)
class Measured:
    """The measures of a set of images: one row per image, ``None`` rows for images preprocessing refused."""

    kinds: list[str]
    strengths: list[float]
    cameras: list[str]
    paths: list[str]
    measures: np.ndarray  # (N, len(MEASURES)); NaN rows where refused
    refused: np.ndarray  # (N,) bool
    size: int = quality.DEFAULT_SIZE  # side of the squares measured (PreprocessCfg.quality_size)


def measure_payloads(
    payloads: Sequence[bytes],
    preprocess: PreprocessCfg,
    *,
    batch_size: int = 32,
    field_angles_deg: Sequence[float | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The measures of encoded images through the served preprocessing (their quality squares and frames) and
    ``quality.measure``: ``(N, len(MEASURES))`` with NaN rows, and the refused mask; ``field_angles_deg``: per
    payload, its camera's (as the request would send it)."""
    angles = list(field_angles_deg) if field_angles_deg is not None else [None] * len(payloads)
    preprocessor = Preprocessor(preprocess, max_batch_size=batch_size, num_threads=2)
    rows = np.full((len(payloads), len(quality.MEASURES)), np.nan)
    refused = np.zeros(len(payloads), dtype=bool)
    for start in range(0, len(payloads), batch_size):
        done = preprocessor.run(
            list(payloads[start : start + batch_size]),
            quality=True,
            field_angles_deg=angles[start : start + batch_size],
        )
        refused[[start + i for i, e in enumerate(done.errors) if e is not None]] = True
        if done.accepted:
            planes = done.quality_planes
            if planes is None:  # the model input is the quality square
                planes = quality.planes_from_pixels(done.pixels, preprocess.mean, preprocess.std)
            frames = quality.frames_of(
                planes.shape[2], [done.boxes[i] for i in done.accepted], [done.frames[i] for i in done.accepted]
            )
            rows[[start + i for i in done.accepted]] = quality.measure(
                planes, fov_threshold=preprocess.fov_threshold, frames=frames
            )
    preprocessor.close()
    return rows, refused


def _kind(record: Record) -> str:
    kind = record.extra.get("degradation", CLEAN) or CLEAN
    return RED_FREE if kind == CLEAN and capture_of(record) == "red_free" else kind


def measure_records(records: Sequence[Record], preprocess: PreprocessCfg, *, batch_size: int = 32) -> Measured:
    """Measure each record's image through preprocessing (its quality square) and ``quality.measure``."""
    rows, refused = measure_payloads(
        [r.path.read_bytes() for r in records],
        preprocess,
        batch_size=batch_size,
        field_angles_deg=[field_angle_of(r) for r in records],
    )
    return Measured(
        kinds=[_kind(r) for r in records],
        strengths=[float(r.extra.get("degradation_strength") or 0.0) for r in records],
        cameras=[r.extra.get("camera", "") for r in records],
        paths=[str(r.path) for r in records],
        measures=rows,
        refused=refused,
        size=preprocess.quality_size,
    )


def check_values(measured: Measured, check: quality.Check) -> np.ndarray:
    """The measure ``check`` reads, NaN where it does not apply (refused images, or masked / unmasked only)."""
    return calibration.check_values(measured.measures, check, usable=~measured.refused)


def calibrate(measured: Measured, *, clean_quantile: float = 0.995, source: str = "") -> quality.QualityCfg:
    """Thresholds from clean and degraded calibration images (see the module docstring), for their square size."""
    if not 0.5 < clean_quantile <= 1.0:
        raise CalibrationError(f"clean_quantile must lie in (0.5, 1], got {clean_quantile}")
    kinds = np.array(measured.kinds)
    if int(((kinds == CLEAN) & ~measured.refused).sum()) < 20:
        raise CalibrationError(
            f"calibration needs at least 20 clean images, got {int(((kinds == CLEAN) & ~measured.refused).sum())}: "
            "give a larger phantom (`predilect phantom --count`)"
        )
    thresholds: dict[str, float] = {}
    for check in quality.CHECKS:
        if check.name in DEFINED:
            thresholds[check.name] = DEFINED[check.name]
            continue
        values = check_values(measured, check)
        upper = check.direction == "max"
        clean = values[(kinds == CLEAN) & np.isfinite(values)]
        if not len(clean):  # no clean image is masked (or unmasked): the clean images' measure whatever their field
            all_values = measured.measures[:, quality.MEASURES.index(check.measure)]
            clean = all_values[(kinds == CLEAN) & ~measured.refused]
        target = values[np.isin(kinds, TARGET_KINDS[check.name]) & np.isfinite(values)]
        threshold = calibration.tail_threshold(clean, target, upper=upper, clean_quantile=clean_quantile)
        thresholds[check.name] = calibration.floored(check.name, threshold)
    return quality.QualityCfg(thresholds=thresholds, source=source, size=measured.size)


@dataclass
class Rate:
    hits: int
    total: int

    @property
    def rate(self) -> float:
        return self.hits / self.total if self.total else math.nan

    def to_dict(self) -> dict[str, Any]:
        low, high = wilson(self.hits, self.total)
        return {"hits": self.hits, "total": self.total, "rate": self.rate, "ci95": [low, high]}


@dataclass
class Spread:
    """One group of images on one check's measure: quantiles, and the share the check itself fails."""

    count: int
    low: float  # 0.5% quantile
    median: float
    high: float  # 99.5% quantile
    failing: float
    clean_cost: float | None = None  # share of clean images a threshold flagging 95% of this group would fail

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "q005": self.low,
            "median": self.median,
            "q995": self.high,
            "failing": self.failing,
            "clean_cost": self.clean_cost,
        }


CLEAN_GROUP = "clean"


def _clean_cost(group: np.ndarray, clean: np.ndarray, upper: bool) -> float | None:
    """Share of ``clean`` that fails a threshold placed to flag 95% of ``group``."""
    if not len(clean):
        return None
    if upper:
        return float(np.mean(clean >= np.quantile(group, 1.0 - _FLAG_SHARE)))
    return float(np.mean(clean <= np.quantile(group, _FLAG_SHARE)))


def spreads(measured: Measured, cfg: quality.QualityCfg) -> dict[str, dict[str, Spread]]:
    """Per check measure: its clean images (all, and per camera) and each target kind per strength.

    Where a kind misses its target, this shows whether its images lie inside the clean spread
    of the measure its check reads (no threshold can then tell them apart) or beyond it.
    """
    ok = ~measured.refused
    kinds, cameras, strengths = np.array(measured.kinds), np.array(measured.cameras), np.array(measured.strengths)
    out: dict[str, dict[str, Spread]] = {}
    for check in quality.CHECKS:
        values = check_values(measured, check)
        failing = check.badness(values, cfg.thresholds[check.name]) >= 1.0
        upper = check.direction == "max"
        clean = ok & (kinds == CLEAN) & np.isfinite(values)
        groups = {CLEAN_GROUP: clean}
        groups |= {f"{CLEAN_GROUP} {c}": clean & (cameras == c) for c in sorted(set(cameras[kinds == CLEAN]))}
        for kind in TARGET_KINDS[check.name]:
            levels = sorted(set(strengths[kinds == kind]))
            groups |= {f"{kind} {s:.2f}": ok & (kinds == kind) & (strengths == s) & np.isfinite(values) for s in levels}
        out[check.name] = {
            name: Spread(
                count=int(rows.sum()),
                low=float(np.quantile(values[rows], 0.005)),
                median=float(np.median(values[rows])),
                high=float(np.quantile(values[rows], 0.995)),
                failing=float(failing[rows].mean()),
                clean_cost=None if name.startswith(CLEAN_GROUP) else _clean_cost(values[rows], values[clean], upper),
            )
            for name, rows in groups.items()
            if rows.any()
        }
    return out


@dataclass
class Evaluation:
    """Flag rates per degradation kind (and strength), clean pass rate (and per camera), reason agreement."""

    clean_pass: Rate
    clean_pass_by_camera: dict[str, Rate]
    flagged: dict[str, Rate]
    flagged_by_strength: dict[str, dict[str, Rate]]
    expected_reason: dict[str, Rate]
    refused: dict[str, int]
    reasons_on_clean: dict[str, int] = field(default_factory=dict)
    spread: dict[str, dict[str, Spread]] = field(default_factory=dict)
    flagged_by_camera: dict[str, dict[str, Rate]] = field(default_factory=dict)
    """Per degradation kind and camera profile: the share flagged."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "flagged_by_camera": {k: {c: r.to_dict() for c, r in v.items()} for k, v in self.flagged_by_camera.items()},
            "clean_pass": self.clean_pass.to_dict(),
            "clean_pass_by_camera": {k: v.to_dict() for k, v in self.clean_pass_by_camera.items()},
            "flagged": {k: v.to_dict() for k, v in self.flagged.items()},
            "flagged_by_strength": {
                k: {s: r.to_dict() for s, r in v.items()} for k, v in self.flagged_by_strength.items()
            },
            "expected_reason": {k: v.to_dict() for k, v in self.expected_reason.items()},
            "refused": self.refused,
            "reasons_on_clean": self.reasons_on_clean,
            "spread": {k: {g: v.to_dict() for g, v in by.items()} for k, by in self.spread.items()},
        }


def evaluate(measured: Measured, cfg: quality.QualityCfg) -> Evaluation:
    """Grade every measured image with ``cfg`` and count what the targets ask for."""
    ok = ~measured.refused
    flags = np.ones((len(measured.kinds), len(QUALITY_REASONS)), dtype=bool)  # refused: every flag
    if ok.any():
        flags[ok] = quality.grade(measured.measures[ok], cfg).flags
    ungradable = flags.any(axis=1)
    kinds = np.array(measured.kinds)
    cameras = np.array(measured.cameras)
    clean = kinds == CLEAN
    by_camera = {
        str(c): Rate(int((~ungradable[clean & (cameras == c)]).sum()), int((clean & (cameras == c)).sum()))
        for c in sorted(set(cameras[clean]))
    }
    flagged, by_strength, reason_hits, refused, by_kind_camera = {}, {}, {}, {}, {}
    for kind in sorted(set(measured.kinds) - {CLEAN}):
        rows = kinds == kind
        flagged[kind] = Rate(int(ungradable[rows].sum()), int(rows.sum()))
        by_kind_camera[kind] = {
            str(c): Rate(int(ungradable[rows & (cameras == c)].sum()), int((rows & (cameras == c)).sum()))
            for c in sorted(set(cameras[rows]))
        }
        strengths = np.array(measured.strengths)
        by_strength[kind] = {
            f"{s:.2f}": Rate(int(ungradable[rows & (strengths == s)].sum()), int((rows & (strengths == s)).sum()))
            for s in sorted(set(strengths[rows]))
        }
        expected = QUALITY_REASONS.index(EXPECTED_REASON[kind]) if kind in EXPECTED_REASON else None
        if expected is not None:
            reason_hits[kind] = Rate(int(flags[rows & ok, expected].sum()), int((rows & ok).sum()))
        refused[kind] = int((rows & measured.refused).sum())
    reasons_on_clean = {
        reason: int(flags[clean & ok, i].sum())
        for i, reason in enumerate(QUALITY_REASONS)
        if flags[clean & ok, i].any()
    }
    return Evaluation(
        clean_pass=Rate(int((~ungradable[clean]).sum()), int(clean.sum())),
        clean_pass_by_camera=by_camera,
        flagged=flagged,
        flagged_by_strength=by_strength,
        expected_reason=reason_hits,
        refused=refused,
        reasons_on_clean=reasons_on_clean,
        spread=spreads(measured, cfg),
        flagged_by_camera=by_kind_camera,
    )


def degraded_set(
    phantom_manifest: Path, catalog: Catalog, folder: Path, *, splits: Sequence[str], count_per_kind: int, seed: int
) -> list[Record]:
    """The clean images of ``splits`` and degraded copies of ``count_per_kind`` of them per kind (in ``folder``)."""
    from predilect.training.phantom.degrade import KINDS, degrade_dataset

    clean = [r for r in read_manifest(phantom_manifest, catalog=catalog) if r.split in splits]
    if not clean:
        raise CalibrationError(f"{phantom_manifest} has no {'/'.join(splits)} images")
    folder.mkdir(parents=True, exist_ok=True)
    source = write_manifest(folder / "clean_manifest.csv", colour_screened(clean), catalog=catalog)
    degraded = degrade_dataset(source, folder, kinds=KINDS, catalog=catalog, count=count_per_kind, seed=seed)
    copies = [r for r in read_manifest(degraded, catalog=catalog) if r.extra.get("degradation", CLEAN) != CLEAN]
    return [*clean, *copies]


def degraded_sets(
    phantom_manifest: Path, catalog: Catalog, out_dir: Path, *, count_per_kind: int, seeds: tuple[int, int] = (1, 2)
) -> tuple[list[Record], list[Record]]:
    """(calibration, measurement): train+val and test images, each with degraded copies (different seeds)."""
    calibration = degraded_set(
        phantom_manifest,
        catalog,
        out_dir / "calibration",
        splits=("train", "val"),
        count_per_kind=count_per_kind,
        seed=seeds[0],
    )
    measurement = degraded_set(
        phantom_manifest,
        catalog,
        out_dir / "measurement",
        splits=("test",),
        count_per_kind=count_per_kind,
        seed=seeds[1],
    )
    return calibration, measurement


def _spread_lines(evaluation: Evaluation, cfg: quality.QualityCfg, missed: Sequence[str]) -> list[str]:
    """Tables of where the measure lies, for each check aimed at a kind in ``missed``."""
    lines: list[str] = []
    for check in quality.CHECKS:
        if not set(TARGET_KINDS[check.name]) & set(missed) or check.name not in evaluation.spread:
            continue
        sign = "<=" if check.direction == "min" else ">="
        lines += [
            "",
            f"Where `{check.measure}` lies for check `{check.name}` "
            f"(fails at {sign} {cfg.thresholds[check.name]:.4g}):",
            "",
        ]
        lines += [
            "| images | n | 0.5% quantile | median | 99.5% quantile | failing | clean failing if 95% of these failed |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {v.count} | {v.low:.4g} | {v.median:.4g} | {v.high:.4g} | {100 * v.failing:.0f}% | "
            + ("-" if v.clean_cost is None else f"{100 * v.clean_cost:.1f}%")
            + " |"
            for name, v in evaluation.spread[check.name].items()
        ]
    return lines


def camera_table(evaluation: Evaluation) -> list[str]:
    """Per camera profile: clean photographs graded gradable and each degradation flagged, with counts."""
    cameras = sorted(
        set(evaluation.clean_pass_by_camera) | {c for v in evaluation.flagged_by_camera.values() for c in v}
    )
    kinds = sorted(evaluation.flagged_by_camera)
    lines = ["", "Per camera profile (clean: graded gradable; each degradation: flagged ungradable):", ""]
    lines += ["| camera | clean | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]

    def cell(rate: Rate | None) -> str:
        if rate is None or not rate.total:
            return "-"
        mark = "" if rate.rate >= _FLAG_SHARE else " **<95%**"
        return f"{100 * rate.rate:.0f}% ({rate.hits}/{rate.total}){mark}"

    for camera in cameras:
        cells = [cell(evaluation.flagged_by_camera[k].get(camera)) for k in kinds]
        lines.append(f"| {camera} | {cell(evaluation.clean_pass_by_camera.get(camera))} | " + " | ".join(cells) + " |")
    return lines


def report_markdown(
    calibration: Evaluation, measurement: Evaluation, cfg: quality.QualityCfg, *, header: Sequence[str]
) -> str:
    """The results as markdown: measurement first (the figure that counts), calibration beside it."""

    def pct(rate: Rate) -> str:
        low, high = wilson(rate.hits, rate.total)
        return f"{100 * rate.rate:.1f}% ({rate.hits}/{rate.total}; 95% CI {100 * low:.1f}-{100 * high:.1f})"

    lines = [*header, ""]
    lines += ["## Held-out measurement (test split, unseen patients and camera)", ""]
    lines += [f"Clean images passed: **{pct(measurement.clean_pass)}**", ""]
    lines += ["| camera | clean passed |", "|---|---|"]
    lines += [f"| {c} | {pct(r)} |" for c, r in measurement.clean_pass_by_camera.items()]
    if measurement.reasons_on_clean:
        lines += [
            "",
            "Reasons given on the clean images flagged: "
            + ", ".join(f"{k} {v}" for k, v in measurement.reasons_on_clean.items()),
        ]
    lines += ["", "| degradation | flagged | target met (>= 95%) | expected reason given | refused by preprocessing |"]
    lines += ["|---|---|---|---|---|"]
    for kind, rate in measurement.flagged.items():
        reason = measurement.expected_reason.get(kind)
        lines.append(
            f"| {kind} | {pct(rate)} | {'yes' if rate.rate >= 0.95 else 'no'} | "
            f"{pct(reason) if reason else '-'} | {measurement.refused.get(kind, 0)} |"
        )
    lines += camera_table(measurement)
    strengths = sorted({s for v in measurement.flagged_by_strength.values() for s in v})
    lines += ["", "Flagged by strength (0.25 borderline ... 1.00 clearly ungradable):", ""]
    lines += ["| degradation | " + " | ".join(strengths) + " |", "|---|" + "---|" * len(strengths)]
    for kind, by in measurement.flagged_by_strength.items():
        cells = [f"{100 * by[s].rate:.0f}% ({by[s].hits}/{by[s].total})" if s in by else "-" for s in strengths]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    missed = [kind for kind, rate in measurement.flagged.items() if rate.rate < 0.95]
    lines += _spread_lines(measurement, cfg, missed)
    lines += ["", "## Calibration set (train + val; the thresholds were chosen on it)", ""]
    lines += [f"Clean images passed: {pct(calibration.clean_pass)}", ""]
    lines += ["| degradation | flagged |", "|---|---|"]
    lines += [f"| {kind} | {pct(rate)} |" for kind, rate in calibration.flagged.items()]
    lines += _spread_lines(calibration, cfg, missed)
    lines += ["", "## Thresholds", ""]
    lines += [
        "| check | measure | reason | applies | fails when | threshold | chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for check in quality.CHECKS:
        sign = "<=" if check.direction == "min" else ">="
        chosen = "by definition" if check.name in DEFINED else "on the calibration set"
        lines.append(
            f"| {check.name} | {check.measure} | {check.reason} | {check.when} | {sign} | "
            f"{cfg.thresholds[check.name]:.4g} | {chosen} |"
        )
    return "\n".join(lines) + "\n"
