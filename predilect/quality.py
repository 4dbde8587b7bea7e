"""Gradability: is a fundus photograph good enough to screen? Pure NumPy, from the model's own input.

``measure`` reads the field-of-view square that the model screens -- the uint8 image that
preprocessing resized to ``size`` x ``size`` before normalising it, recovered exactly from the
normalised tensor by ``squares_from_pixels`` -- so every serving layout (split, fused, the GPU
profile's DALI preprocessing) grades the same pixels the classifier sees, from the same decoded
frame. ``grade`` compares the measures with calibrated thresholds (``QualityCfg``, chosen by
``predilect gradability`` on phantom photographs with controlled degradations) and returns a
score and one flag per reason of ``contract.QUALITY_REASONS``.

Measures (``MEASURES``), on the square: ``S`` side, the expected field of view is the inscribed
disc (preprocessing centres the square on the lit field), "inner" is the disc of radius 0.4 S:

* ``sharpness``: mean |G - 3x3 box mean of G| over the inner disc, over the mean of G: fine detail
  (vessel edges) relative to brightness; defocus lowers it.
* ``brightness``: median luminance (0-255) over the inner disc; under-exposure lowers it.
* ``saturated``: share of inner pixels with a channel at 250 or above; over-exposure raises it.
* ``outside``: share of the square's corners (beyond radius 0.53 S) that is lit: a field of view
  off-centre or clipped, or a frame lit edge to edge (no fundus camera mask).
* ``occluded``: share of the inscribed disc that is dark (unlit) beyond what ``outside`` explains
  by displacement: an eyelid or lash shadow.
* ``glare``: share of inner pixels that are bluish white (blue >= 0.75 red and blue > 110):
  corneal / lens reflections; the fundus itself is red-orange.
* ``haze``: the inner disc's 2nd-percentile blue over its median blue: a veil of scattered light
  adds to every level, lifting the floor towards the median, where a colour cast (a gain) keeps
  the ratio.
* ``dust``: share of inner pixels darker than 0.75 of their neighbourhood (a 10% of S box)
  with the neighbourhood's colour kept: shadows of dirt on the optics darken without changing
  hue, where haemorrhages and vessels turn redder.
* ``redness``: median (R - B) / (R + G + B) over lit inner pixels: a colour fundus photograph is
  red-orange; an OCT B-scan is grey, an external eye photograph skin, white and iris.

Each check (``CHECKS``) fails when its measure passes its threshold in its direction; its
badness is ``measure / threshold`` (or the inverse for a lower bound), and ``score`` is
``clip(1 - max badness / 2, 0, 1)``: 1 for a perfect image, 0.5 at a threshold, gradable iff
every check passes (score > 0.5). ``wrong_image_type`` (low redness) is claimed when the frame is
also lit beyond the expected disc (no fundus camera mask: ``outside`` fails) or when no
over-exposure, glare or haze explains the colour; it then stands alone, since the other checks
say nothing useful about a photograph that is not of a fundus.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from predilect.contract import QUALITY_REASONS
from predilect.errors import UserError

MEASURES = (
    "sharpness",
    "brightness",
    "saturated",
    "outside",
    "occluded",
    "glare",
    "haze",
    "dust",
    "redness",
)
_INNER_R, _DISC_R, _CORNER_R = 0.40, 0.48, 0.53
_DUST_DARKER, _DUST_HUE = 0.75, 0.03


class QualityConfigError(UserError, ValueError):
    """A gradability configuration that names unknown measures or lacks thresholds."""


@dataclass(frozen=True)
class Check:
    """One gradability check: ``measure`` fails past ``threshold`` ("max": above, "min": below)."""

    measure: str
    reason: str
    direction: str

    def badness(self, values: np.ndarray, threshold: float) -> np.ndarray:
        """``values / threshold`` ("max") or ``threshold / values`` ("min"): >= 1 fails."""
        values = np.asarray(values, dtype=np.float64)
        if self.direction == "max":
            return values / max(threshold, 1e-9)
        return threshold / np.maximum(values, 1e-9)


CHECKS = (
    Check("sharpness", "focus", "min"),
    Check("brightness", "underexposed", "min"),
    Check("saturated", "overexposed", "max"),
    Check("outside", "field_of_view", "max"),
    Check("occluded", "artefact", "max"),
    Check("glare", "artefact", "max"),
    Check("haze", "artefact", "max"),
    Check("dust", "artefact", "max"),
    Check("redness", "wrong_image_type", "min"),
)
_EXPLAINS_COLOUR = ("saturated", "glare", "haze")
"""Checks whose failure also lowers redness: the image is then not called the wrong type."""


@dataclass(frozen=True)
class QualityCfg:
    """Calibrated thresholds of every check (``CHECKS``), keyed by measure; travels in the model repository.

    ``source`` says where the thresholds come from (the calibration command and data).
    """

    thresholds: Mapping[str, float]
    version: str = "1"
    source: str = ""
    _order: tuple[str, ...] = field(default=MEASURES, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        missing = [c.measure for c in CHECKS if c.measure not in self.thresholds]
        unknown = sorted(set(self.thresholds) - set(MEASURES))
        if missing or unknown:
            raise QualityConfigError(f"quality thresholds: missing {missing}, unknown {unknown}")
        bad = {k: v for k, v in self.thresholds.items() if not (isinstance(v, (int, float)) and np.isfinite(v))}
        if bad:
            raise QualityConfigError(f"quality thresholds must be finite numbers, got {bad}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "source": self.source,
            "thresholds": {k: float(self.thresholds[k]) for k in MEASURES if k in self.thresholds},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        """First 16 hex of the sha256 of the canonical JSON."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QualityCfg:
        try:
            thresholds = {str(k): float(v) for k, v in dict(data["thresholds"]).items()}
            return cls(thresholds=thresholds, version=str(data.get("version", "1")), source=str(data.get("source", "")))
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, QualityConfigError):
                raise
            raise QualityConfigError(f"not a quality configuration: {e!r}") from e

    @classmethod
    def from_json(cls, text: str) -> QualityCfg:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise QualityConfigError(f"quality configuration is not valid JSON: {e}") from e


DEFAULT_CALIBRATION = Path(__file__).with_name("quality_calibration.json")
"""The packaged thresholds: a copy of what ``predilect gradability`` calibrated (see its results)."""


def default_quality_cfg() -> QualityCfg:
    """The packaged calibration (``DEFAULT_CALIBRATION``)."""
    return load_quality_cfg(DEFAULT_CALIBRATION)


def load_quality_cfg(path: str | Path) -> QualityCfg:
    """Read a calibration file written by ``predilect gradability``."""
    path = Path(path)
    try:
        return QualityCfg.from_json(path.read_text(encoding="utf-8"))
    except QualityConfigError as e:
        raise QualityConfigError(f"{path}: {e}") from e


# --------------------------------------------------------------------------- pixels


def squares_from_pixels(pixels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """The uint8 ``(N, S, S, 3)`` squares behind normalised ``(N, 3, S, S)`` float32 model input.

    Exact for tensors made by ``predilect.preprocess`` (each level maps to one float32 value).
    """
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must be shaped (N, 3, S, S), got {pixels.shape}")
    scale = np.float32(255.0) * np.asarray(std, np.float32)[None, :, None, None]
    offset = np.float32(255.0) * np.asarray(mean, np.float32)[None, :, None, None]
    levels = np.rint(pixels * scale + offset)
    return np.clip(levels, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def _box_mean(images: np.ndarray, k: int) -> np.ndarray:
    """Mean over a ``k`` x ``k`` window (k odd), edges replicated; ``images`` (N, H, W) float."""
    pad = k // 2
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    sums = np.pad(padded.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
    h, w = images.shape[1:]
    total = sums[:, k : k + h, k : k + w] - sums[:, :h, k : k + w] - sums[:, k : k + h, :w] + sums[:, :h, :w]
    return total / np.float32(k * k)


@dataclass(frozen=True)
class _Geometry:
    inner: np.ndarray
    disc: np.ndarray
    corners: np.ndarray


_GEOMETRY: dict[int, _Geometry] = {}


def _geometry(size: int) -> _Geometry:
    if size not in _GEOMETRY:
        centre = (np.arange(size, dtype=np.float32) + 0.5 - size / 2) / size
        r = np.hypot(centre[None, :], centre[:, None])
        _GEOMETRY[size] = _Geometry(inner=r < _INNER_R, disc=r < _DISC_R, corners=r > _CORNER_R)
    return _GEOMETRY[size]


def measure(squares: np.ndarray, *, fov_threshold: int = 20) -> np.ndarray:
    """The ``MEASURES`` of each uint8 ``(N, S, S, 3)`` field-of-view square: float64 ``(N, len(MEASURES))``.

    ``fov_threshold`` is preprocessing's level above which a pixel is lit (``PreprocessCfg.fov_threshold``).
    """
    squares = np.asarray(squares)
    if squares.ndim != 4 or squares.shape[3] != 3 or squares.shape[1] != squares.shape[2] or squares.dtype != np.uint8:
        raise ValueError(f"squares must be uint8 shaped (N, S, S, 3), got {squares.dtype} {squares.shape}")
    n, size = squares.shape[0], squares.shape[1]
    if n == 0:
        return np.zeros((0, len(MEASURES)))
    geo = _geometry(size)
    rgb = squares.astype(np.float32)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    lit = squares.max(axis=3) > fov_threshold
    inner = geo.inner

    green_inner = green[:, inner]
    fine = np.abs(green - _box_mean(green, 3))[:, inner].mean(axis=1)
    sharpness = fine / (green_inner.mean(axis=1) + 1.0)
    brightness = np.median(luma[:, inner], axis=1)
    saturated = (squares[:, inner].max(axis=2) >= 250).mean(axis=1)
    outside = lit[:, geo.corners].mean(axis=1)
    unlit = 1.0 - lit[:, geo.disc].mean(axis=1)
    occluded = np.maximum(unlit - outside, 0.0)
    red_inner, blue_inner = red[:, inner], blue[:, inner]
    glare = ((blue_inner >= 0.75 * red_inner) & (blue_inner > 110)).mean(axis=1)
    haze = np.percentile(blue_inner, 2, axis=1) / (np.median(blue_inner, axis=1) + 1.0)

    k = max(3, size // 10 | 1)
    total = red + green + blue + 1.0
    chroma_r, chroma_g = red / total, green / total
    darker = luma < _DUST_DARKER * _box_mean(luma, k)
    same_hue = (np.abs(chroma_r - _box_mean(chroma_r, k)) < _DUST_HUE) & (
        np.abs(chroma_g - _box_mean(chroma_g, k)) < _DUST_HUE
    )
    dust = (darker & same_hue)[:, inner].mean(axis=1)

    redness_map = (red - blue) / total
    lit_inner = lit[:, inner]
    redness = np.array(
        [np.median(redness_map[i][inner][lit_inner[i]]) if lit_inner[i].any() else 0.0 for i in range(n)]
    )
    columns = {
        "sharpness": sharpness,
        "brightness": brightness,
        "saturated": saturated,
        "outside": outside,
        "occluded": occluded,
        "glare": glare,
        "haze": haze,
        "dust": dust,
        "redness": redness,
    }
    return np.stack([np.asarray(columns[m], dtype=np.float64) for m in MEASURES], axis=1)


# --------------------------------------------------------------------------- grading


@dataclass(frozen=True)
class Grade:
    """Per image: ``score`` (N,) in [0, 1], ``flags`` (N, len(QUALITY_REASONS)) bool, ``badness`` per check."""

    score: np.ndarray
    flags: np.ndarray
    badness: np.ndarray

    @property
    def gradable(self) -> np.ndarray:
        return ~self.flags.any(axis=1)

    def tensor(self) -> np.ndarray:
        """The ``contract.QUALITY`` rows: ``[score, flag per reason]`` as float32 ``(N, 1 + reasons)``."""
        return np.concatenate([self.score[:, None], self.flags.astype(np.float32)], axis=1).astype(np.float32)


def grade(measures: np.ndarray, cfg: QualityCfg) -> Grade:
    """Score and flag each image's ``measures`` (from ``measure``) against ``cfg``'s thresholds."""
    measures = np.asarray(measures, dtype=np.float64)
    if measures.ndim != 2 or measures.shape[1] != len(MEASURES):
        raise ValueError(f"measures must be shaped (N, {len(MEASURES)}), got {measures.shape}")
    column = {m: i for i, m in enumerate(MEASURES)}
    badness = np.stack(
        [c.badness(measures[:, column[c.measure]], cfg.thresholds[c.measure]) for c in CHECKS], axis=1
    ).reshape(len(measures), len(CHECKS))
    failed = badness >= 1.0
    by_measure = {c.measure: failed[:, i] for i, c in enumerate(CHECKS)}
    explained = np.zeros(len(measures), dtype=bool)
    for name in _EXPLAINS_COLOUR:
        explained |= by_measure[name]
    wrong_type = by_measure["redness"] & (by_measure["outside"] | ~explained)
    flags = np.zeros((len(measures), len(QUALITY_REASONS)), dtype=bool)
    for i, check in enumerate(CHECKS):
        if check.reason != "wrong_image_type":
            flags[:, QUALITY_REASONS.index(check.reason)] |= failed[:, i] & ~wrong_type
    flags[:, QUALITY_REASONS.index("wrong_image_type")] = wrong_type
    # Low redness that over-exposure, glare or haze explains is flagged through that check, so
    # flags and score agree: gradable iff no flag iff every badness < 1 iff score > 0.5.
    score = np.clip(1.0 - badness.max(axis=1) / 2.0, 0.0, 1.0)
    return Grade(score=score, flags=flags, badness=badness)


def reasons_of(flags_row: np.ndarray | list[float] | list[bool]) -> list[str]:
    """The reason names of one ``flags`` row (or of the flag part of a ``QUALITY`` row)."""
    return [reason for reason, flag in zip(QUALITY_REASONS, flags_row, strict=True) if bool(flag)]


def assess_pixels(pixels: np.ndarray, cfg: QualityCfg, *, mean, std, fov_threshold: int) -> np.ndarray:
    """The ``contract.QUALITY`` rows of a batch of normalised model inputs ``(N, 3, S, S)``."""
    squares = squares_from_pixels(pixels, mean, std)
    return grade(measure(squares, fov_threshold=fov_threshold), cfg).tensor()
