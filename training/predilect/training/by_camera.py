"""Screening results per camera: the served macro AUROC and the gradable share of every camera profile,
seen and held out, and (over several trained models) how far each held-out camera falls from the seen ones.

Inputs are what screening returned for a zoo phantom's test split (``predilect phantom --preset zoo``),
in manifest order: per image its scores (the served probabilities, or the audit probabilities of an
ungradable image: the model's ranking over every image), whether it was graded gradable, and its
record (``camera``, ``capture``, patient and eye). The zoo re-photographs each test eye with every
camera, so every camera is scored on the same eyes and the comparison between cameras is paired.

Red-free captures are a different image type: they get no AUROC; what counts for them is how many
were screened as colour (graded gradable, so given a colour model's findings) -- the target is none.

``compare_cameras`` pools several models (training seeds): a camera's AUROC is the mean over the
models of its macro AUROC, with a patient-level bootstrap interval (both eyes of a patient resampled
together, the same resample for every camera and model); the seen reference is the mean over the
seen colour cameras, and each held-out camera's gap to it gets its own paired interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from predilect.errors import UserError
from predilect.manifest import COLOUR_CAPTURES, Record, capture_of
from predilect.metrics import Interval, UndefinedMetricError, bootstrap_ci, macro_auroc, wilson

TARGET_GAP = 0.03
"""A held-out camera's served macro AUROC may fall at most this far below the seen cameras'."""


class CameraEvaluationError(UserError, ValueError):
    """Screening results that cannot be compared per camera (the message says what is missing)."""


@dataclass(frozen=True)
class Screened:
    """What screening returned for a set of test images, in record order."""

    records: Sequence[Record]
    scores: np.ndarray  # (N, C): served probabilities, or audit probabilities where ungradable
    gradable: np.ndarray  # (N,) bool
    ids: Sequence[str]  # the C catalog ids of ``scores``'s columns

    def __post_init__(self) -> None:
        n = len(self.records)
        if self.scores.shape != (n, len(self.ids)) or self.gradable.shape != (n,):
            raise CameraEvaluationError(
                f"{n} records need scores {n}x{len(self.ids)} and {n} gradable flags, "
                f"got {self.scores.shape} and {self.gradable.shape}"
            )


@dataclass(frozen=True)
class CameraRow:
    """One camera's line: images, gradable share, served macro AUROC (colour) or screened-as-colour (red-free)."""

    camera: str
    split: str  # seen | held_out
    capture: str
    images: int
    gradable: int
    macro_auroc: float | None
    screened_as_colour: int | None  # red-free only: images given a colour model's findings

    @property
    def gradable_share(self) -> float:
        return self.gradable / self.images if self.images else math.nan

    def to_dict(self) -> dict[str, Any]:
        low, high = wilson(self.gradable, self.images)
        return {**asdict(self), "gradable_share": self.gradable_share, "gradable_ci95": [low, high]}


def _camera(record: Record) -> str:
    camera = record.extra.get("camera", "")
    if not camera:
        raise CameraEvaluationError(f"{record.path}: no camera column; screen a zoo phantom's test split")
    return camera


def _labels(records: Sequence[Record], ids: Sequence[str]) -> np.ndarray:
    return np.array([[d in r.labels for d in ids] for r in records], dtype=np.float64)


def camera_rows(screened: Screened, split_of: Callable[[str], str]) -> list[CameraRow]:
    """One row per camera, seen cameras first, each in first-seen order; ``split_of(camera)`` is seen/held_out."""
    cameras: dict[str, list[int]] = {}
    for i, record in enumerate(screened.records):
        cameras.setdefault(_camera(record), []).append(i)
    rows = []
    for camera, index in cameras.items():
        rows_of = np.array(index)
        capture = capture_of(screened.records[index[0]])
        graded = int(screened.gradable[rows_of].sum())
        auroc = None
        if capture in COLOUR_CAPTURES:
            labels = _labels([screened.records[i] for i in index], screened.ids)
            auroc = _defined_macro_auroc(labels, screened.scores[rows_of], screened.ids)
        red_free = None if capture in COLOUR_CAPTURES else graded
        rows.append(CameraRow(camera, split_of(camera), capture, len(index), graded, auroc, red_free))
    return sorted(rows, key=lambda r: r.split != "seen")


def pooled_auroc(screened: Screened, split_of: Callable[[str], str], split: str) -> float:
    """The served macro AUROC over every colour image of the cameras of ``split`` together."""
    rows = [
        i for i, r in enumerate(screened.records) if split_of(_camera(r)) == split and capture_of(r) in COLOUR_CAPTURES
    ]
    if not rows:
        return math.nan
    picked = np.array(rows)
    labels = _labels([screened.records[i] for i in rows], screened.ids)
    return _defined_macro_auroc(labels, screened.scores[picked], screened.ids)


def _defined_macro_auroc(labels: np.ndarray, scores: np.ndarray, ids: Sequence[str]) -> float:
    """Macro AUROC, NaN where no disease has both classes (a very small test set)."""
    try:
        return macro_auroc(labels, scores, list(ids))
    except UndefinedMetricError:
        return math.nan


def format_rows(rows: Sequence[CameraRow]) -> list[str]:
    """The camera table as text lines (what ``predilect demo`` prints)."""
    lines = [f"{'camera':<24} {'split':<9} {'capture':<14} {'images':>6} {'gradable':>9} {'macro AUROC':>12}"]
    for r in rows:
        if r.macro_auroc is not None:
            result = f"{r.macro_auroc:12.4f}"
        else:
            result = f"  screened as colour {r.screened_as_colour}/{r.images}"
        share = f"{100 * r.gradable_share:8.1f}%"
        lines.append(f"{r.camera:<24} {r.split:<9} {r.capture:<14} {r.images:>6} {share} {result}")
    return lines


# ----------------------------------------------------------------------------- over several models


@dataclass(frozen=True)
class _Eyes:
    """The test eyes every camera photographed, and each camera's rows for them, in one eye order."""

    keys: list[tuple[str, str]]  # (patient, eye)
    patients: np.ndarray
    labels: np.ndarray  # (E, C)
    rows: dict[str, np.ndarray]  # camera -> (E,) row indices into the screened arrays
    captures: dict[str, str]


def _eyes(records: Sequence[Record], ids: Sequence[str]) -> _Eyes:
    by_camera: dict[str, dict[tuple[str, str], int]] = {}
    captures: dict[str, str] = {}
    for i, r in enumerate(records):
        if r.patient_id is None or r.eye is None:
            raise CameraEvaluationError(f"{r.path}: patient and eye are needed to pair cameras")
        camera = _camera(r)
        by_camera.setdefault(camera, {})[(r.patient_id, r.eye)] = i
        captures[camera] = capture_of(r)
    keys = sorted(next(iter(by_camera.values())))
    for camera, found in by_camera.items():
        if sorted(found) != keys:
            raise CameraEvaluationError(f"camera {camera!r} did not photograph the same test eyes as the others")
    first = next(iter(by_camera.values()))
    labels = _labels([records[first[k]] for k in keys], ids)
    rows = {camera: np.array([found[k] for k in keys]) for camera, found in by_camera.items()}
    return _Eyes(keys, np.array([k[0] for k in keys]), labels, rows, captures)


@dataclass(frozen=True)
class CameraComparison:
    """Per camera over models: mean macro AUROC with its interval, the gap to the seen cameras, the gradable share."""

    models: int
    eyes: int
    patients: int
    seen_reference: Interval
    auroc: dict[str, Interval]
    gap: dict[str, Interval]  # held-out camera -> its AUROC minus the seen reference
    gradable: dict[str, tuple[int, int]]  # camera -> (gradable, images), over the models' screenings
    screened_as_colour: dict[str, tuple[int, int]]  # red-free camera -> (screened as colour, images)
    splits: dict[str, str]
    per_model: dict[str, list[float]] = field(default_factory=dict)  # camera -> each model's macro AUROC

    def met(self, camera: str) -> bool:
        """Whether the held-out ``camera``'s gap is within ``TARGET_GAP`` (point estimate)."""
        return self.gap[camera].value >= -TARGET_GAP

    def to_dict(self) -> dict[str, Any]:
        def interval(i: Interval) -> dict[str, float]:
            return {"value": i.value, "low": i.low, "high": i.high, "resamples": i.resamples}

        return {
            "models": self.models,
            "eyes": self.eyes,
            "patients": self.patients,
            "target_gap": TARGET_GAP,
            "seen_reference": interval(self.seen_reference),
            "auroc": {c: interval(v) for c, v in self.auroc.items()},
            "per_model_auroc": self.per_model,
            "gap": {c: {**interval(v), "met": self.met(c)} for c, v in self.gap.items()},
            "gradable": {
                c: {"gradable": g, "images": n, "share": g / n if n else None} for c, (g, n) in self.gradable.items()
            },
            "screened_as_colour": {c: {"screened": s, "images": n} for c, (s, n) in self.screened_as_colour.items()},
            "splits": self.splits,
        }


def compare_cameras(
    runs: Sequence[Screened],
    split_of: Callable[[str], str],
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> CameraComparison:
    """Pool ``runs`` (the same test images screened by several models) per camera; see the module docstring."""
    if not runs:
        raise CameraEvaluationError("no screening runs to compare")
    first = runs[0]
    for run in runs[1:]:
        if [r.path for r in run.records] != [r.path for r in first.records] or list(run.ids) != list(first.ids):
            raise CameraEvaluationError("every run must screen the same images with the same catalog")
    eyes = _eyes(first.records, first.ids)
    ids = list(first.ids)
    colour = [c for c, cap in eyes.captures.items() if cap in COLOUR_CAPTURES]
    seen = [c for c in colour if split_of(c) == "seen"]
    held = [c for c in colour if split_of(c) != "seen"]
    if not seen:
        raise CameraEvaluationError("no seen colour camera to compare the held-out ones with")

    def camera_auroc(camera: str, rows: np.ndarray) -> float:
        picked = eyes.rows[camera][rows]
        return float(np.mean([macro_auroc(eyes.labels[rows], run.scores[picked], ids) for run in runs]))

    def seen_mean(rows: np.ndarray) -> float:
        return float(np.mean([camera_auroc(c, rows) for c in seen]))

    n = len(eyes.keys)

    def ci(statistic: Callable[[np.ndarray], float]) -> Interval:
        return bootstrap_ci(statistic, n, groups=eyes.patients, resamples=resamples, seed=seed)

    def of_camera(camera: str) -> Callable[[np.ndarray], float]:
        return lambda rows: camera_auroc(camera, rows)

    def gap_of(camera: str) -> Callable[[np.ndarray], float]:
        return lambda rows: camera_auroc(camera, rows) - seen_mean(rows)

    auroc = {c: ci(of_camera(c)) for c in colour}
    gap = {c: ci(gap_of(c)) for c in held}
    per_model = {c: [macro_auroc(eyes.labels, run.scores[eyes.rows[c]], ids) for run in runs] for c in colour}
    gradable = {c: (int(sum(run.gradable[eyes.rows[c]].sum() for run in runs)), n * len(runs)) for c in eyes.captures}
    red_free = {c: gradable[c] for c, cap in eyes.captures.items() if cap not in COLOUR_CAPTURES}
    return CameraComparison(
        models=len(runs),
        eyes=n,
        patients=len(set(eyes.patients.tolist())),
        seen_reference=ci(seen_mean),
        auroc=auroc,
        gap=gap,
        gradable=gradable,
        screened_as_colour=red_free,
        splits={c: split_of(c) for c in eyes.captures},
        per_model=per_model,
    )


def paired_difference(
    a: Sequence[Screened],
    b: Sequence[Screened],
    cameras: Sequence[str],
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> Interval:
    """Mean over ``cameras`` of (models ``a``'s mean macro AUROC minus models ``b``'s), with a paired
    patient-level bootstrap interval: what one training recipe costs or gains against another."""
    eyes = _eyes(a[0].records, a[0].ids)
    ids = list(a[0].ids)

    def mean_auroc(runs: Sequence[Screened], rows: np.ndarray) -> float:
        return float(
            np.mean(
                [macro_auroc(eyes.labels[rows], run.scores[eyes.rows[c][rows]], ids) for c in cameras for run in runs]
            )
        )

    def difference(rows: np.ndarray) -> float:
        return mean_auroc(a, rows) - mean_auroc(b, rows)

    return bootstrap_ci(difference, len(eyes.keys), groups=eyes.patients, resamples=resamples, seed=seed)


def splits_of(mapping: Mapping[str, str]) -> Callable[[str], str]:
    """``split_of`` from a camera -> split table (a phantom's ``phantom.json`` ``camera_split``, inverted)."""

    def split_of(camera: str) -> str:
        try:
            return mapping[camera]
        except KeyError as e:
            raise CameraEvaluationError(f"camera {camera!r} is in neither list of the camera split") from e

    return split_of
