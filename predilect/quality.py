"""Gradability: is a fundus photograph good enough to screen? Pure NumPy, on the field-of-view square.

``measure`` reads the field-of-view square that preprocessing cut for the model, at the side
the thresholds were calibrated at (``QualityCfg.size``, ``PreprocessCfg.quality_size``): when
the model's input has that side, the uint8 image preprocessing resized before normalising it,
recovered exactly from the normalised tensor by ``planes_from_pixels``; otherwise a second square
of that side cut from the same decoded frame with the same crop (``Preprocessor.run(..., quality=True)``,
and the GPU profile's DALI step). So every serving layout (split, fused, the GPU profile) grades
the crop the classifier sees, at the size its thresholds mean something at: measures are not
comparable across sizes (a 128-px square is too coarse for defocus or dust: graded at 128 px
with thresholds calibrated at 224 px, clean photographs fail and dust goes unseen). ``grade``
compares the measures with
calibrated thresholds (``QualityCfg``, chosen by ``predilect gradability`` on phantom photographs
with controlled degradations) and returns a score and one flag per reason of
``contract.QUALITY_REASONS``.

Measures (``MEASURES``), on the square: ``S`` side, the expected field of view is the inscribed
disc (preprocessing centres the square on the lit field), "inner" is the disc of radius 0.4 S:

* ``sharpness``: mean |G - 3x3 box mean of G| over the inner disc, over the mean of G: fine detail
  (vessel edges) relative to brightness; defocus lowers it.
* ``brightness``: median over the inner disc of each pixel's brightest channel (0-255; red in a
  fundus); under-exposure lowers it. Luminance would weigh green, which pigmentation varies far
  more than red, so the brightest channel spreads less among well-exposed photographs.
* ``saturated``: share of inner pixels with a channel at 250 or above; over-exposure raises it.
* ``outside``: share of the square's corners (beyond radius 0.53 S) that is lit: a field of view
  off-centre or clipped, or a frame lit edge to edge (no fundus camera mask).
* ``occluded``: share of the inscribed disc that is dark (unlit) beyond what ``outside`` explains
  by displacement: an eyelid or lash shadow.
* ``glare``: share of inner pixels that are bluish white (blue >= red and blue > 110): corneal /
  lens reflections; every fundus structure, the pale optic cup and exudates included, is redder.
* ``haze``: the inner disc's 2nd-percentile blue over its median blue: a veil of scattered light
  adds to every level, lifting the floor towards the median, where a colour cast (a gain) keeps
  the ratio.
* ``dust``: share of the expected field (radius 0.48 S) in blob-shaped neutral shadows: pixels at
  least 2% of S inside the lit field whose red and green, once each is divided by its mean on the
  same ring around the centre (removing vignetting and the fall-off towards the rim), are both
  below 0.8 of their lit neighbourhood's (a 20% of S box) and within 0.08 of each other: shadows
  of dirt on the optics darken every channel by one factor, where haemorrhages and vessels darken
  green far more than red. Blue, the dimmest channel, is too quantised to test; an opening by a
  3 x 3 square drops thin lines (pigment spicules, vessels). Within about 0.03 S of the centre a
  ring is too small to hold more than the shadow itself, which it then divides out (the fovea too).
* ``redness``: mean (R - B) / (R + G + B) over lit inner pixels: a colour fundus photograph is
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
_DUST_DARKER, _DUST_HUE = 0.8, 0.08
_RING_UNIT = 256
_FIXED = float(2**20)


class QualityConfigError(UserError, ValueError):
    """A gradability configuration that names unknown measures or lacks thresholds."""


class QualitySizeError(QualityConfigError):
    """Thresholds calibrated at one square size, served with preprocessing that measures at another."""


DEFAULT_SIZE = 224
"""The square side of calibrations that do not say theirs (``PreprocessCfg().quality_size``)."""


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

    ``source`` says where the thresholds come from (the calibration command and data); ``size``
    is the side, in pixels, of the square they were calibrated on: the only side they may be
    applied at (``check_size``). JSON without it was calibrated at 224.
    """

    thresholds: Mapping[str, float]
    version: str = "1"
    source: str = ""
    size: int = DEFAULT_SIZE
    _order: tuple[str, ...] = field(default=MEASURES, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        missing = [c.measure for c in CHECKS if c.measure not in self.thresholds]
        unknown = sorted(set(self.thresholds) - set(MEASURES))
        if missing or unknown:
            raise QualityConfigError(f"quality thresholds: missing {missing}, unknown {unknown}")
        bad = {k: v for k, v in self.thresholds.items() if not (isinstance(v, (int, float)) and np.isfinite(v))}
        if bad:
            raise QualityConfigError(f"quality thresholds must be finite numbers, got {bad}")
        if not isinstance(self.size, int) or self.size < 32:
            raise QualityConfigError(f"quality calibration size must be an integer >= 32 px, got {self.size!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "source": self.source,
            "size": self.size,
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
            size = data.get("size", DEFAULT_SIZE)
            if isinstance(size, bool) or not isinstance(size, int):
                raise QualityConfigError(f"quality calibration size must be an integer (pixels), got {size!r}")
            return cls(
                thresholds=thresholds,
                version=str(data.get("version", "1")),
                source=str(data.get("source", "")),
                size=size,
            )
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


def check_size(cfg: QualityCfg, quality_size: int) -> None:
    """Raise ``QualitySizeError`` unless ``cfg`` was calibrated at ``quality_size`` (``PreprocessCfg.quality_size``)."""
    if cfg.size != quality_size:
        raise QualitySizeError(
            f"gradability thresholds calibrated on {cfg.size}-px squares cannot grade the {quality_size}-px squares "
            f"this model's preprocessing cuts (preprocess quality_size={quality_size}): serve a calibration made at "
            f"{quality_size} px (`predilect assemble --quality`), or export the model with quality_size={cfg.size}"
        )


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


def planes_from_pixels(pixels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """The uint8 colour planes ``(N, 3, S, S)`` behind normalised ``(N, 3, S, S)`` float32 model input.

    Exact for tensors made by ``predilect.preprocess`` (each level maps to one float32 value);
    values of another pipeline are rounded to the nearest level and clipped to 0..255.
    """
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must be shaped (N, 3, S, S), got {pixels.shape}")
    scale = np.float32(255.0) * np.asarray(std, np.float32)[None, :, None, None]
    offset = np.float32(255.0) * np.asarray(mean, np.float32)[None, :, None, None] + np.float32(0.5)
    levels = pixels * scale
    levels += offset
    np.clip(levels, 0.0, 255.0, out=levels)
    return levels.astype(np.uint8)  # truncating level + 0.5: rounding to the nearest level


def _window_sums(images: np.ndarray, half: int, rows: slice, columns: slice) -> np.ndarray:
    """Sums over the (2 half + 1)-square window around each pixel of ``images[:, rows, columns]``.

    Through an integral image in int64 (exact for integer images); the caller keeps the windows
    inside the image (no padding).
    """
    n, height, width = images.shape
    integral = np.zeros((n, height + 1, width + 1), dtype=np.int64)
    np.cumsum(np.cumsum(images, axis=1, dtype=np.int64), axis=2, out=integral[:, 1:, 1:])
    top, bottom = rows.start - half, rows.stop + half + 1
    left, right = columns.start - half, columns.stop + half + 1
    k = 2 * half + 1
    return (
        integral[:, top + k : bottom, left + k : right]
        - integral[:, top : bottom - k, left + k : right]
        - integral[:, top + k : bottom, left : right - k]
        + integral[:, top : bottom - k, left : right - k]
    )


@dataclass(frozen=True)
class _Geometry:
    """Masks of one square side: ``window`` bounds the inner disc, ``inner`` is the disc within it."""

    window: slice
    inner: np.ndarray  # (w, w) over the window
    disc: np.ndarray  # (S, S)
    corners: np.ndarray  # (S, S)
    rings: np.ndarray  # (S, S) int64: whole pixels from the centre, rounded down


_GEOMETRY: dict[int, _Geometry] = {}


def _geometry(size: int) -> _Geometry:
    if size not in _GEOMETRY:
        centre = (np.arange(size, dtype=np.float64) + 0.5 - size / 2) / size
        r = np.hypot(centre[None, :], centre[:, None])
        inner = r < _INNER_R
        used = np.flatnonzero(inner.any(axis=0))
        window = slice(int(used[0]), int(used[-1]) + 1)
        _GEOMETRY[size] = _Geometry(
            window=window,
            inner=inner[window, window],
            disc=r < _DISC_R,
            corners=r > _CORNER_R,
            rings=(r * size).astype(np.int64),
        )
    return _GEOMETRY[size]


def _half_sums(planes: np.ndarray) -> np.ndarray:
    """Sums of 2 x 2 blocks, int32 ``(N, 3, S/2, S/2)`` (four times the block means; exact)."""
    even = planes.shape[2] - planes.shape[2] % 2
    total = planes[:, :, 0:even:2, 0:even:2].astype(np.int32)
    for dy, dx in ((0, 1), (1, 0), (1, 1)):
        total += planes[:, :, dy:even:2, dx:even:2]
    return total


def _shifted(mask: np.ndarray, combine: np.ufunc, *, outside: bool | None = None) -> np.ndarray:
    """``combine`` (np.logical_and / _or) over each pixel's 3 x 3 neighbourhood. The border keeps
    its value, or with ``outside`` the square is taken to be surrounded by that value.

    Separable: along rows, then along columns (a square neighbourhood is the product of the two).
    """
    if outside is not None:
        padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)), constant_values=outside)
        return _shifted(padded, combine)[:, 1:-1, 1:-1]
    out = mask.copy()
    rows = mask[:, :, 1:-1].copy()
    combine(rows, mask[:, :, :-2], out=rows)
    combine(rows, mask[:, :, 2:], out=rows)
    core = out[:, 1:-1, 1:-1]
    np.copyto(core, rows[:, 1:-1])
    combine(core, rows[:, :-2], out=core)
    combine(core, rows[:, 2:], out=core)
    return out


def _opened(mask: np.ndarray) -> np.ndarray:
    """Binary opening by a 3 x 3 square: what is left of ``mask`` once lines thinner than 3 px are gone."""
    return _shifted(_shifted(mask, np.logical_and), np.logical_or)


def _flattened(quads: np.ndarray, lit: np.ndarray, rings: np.ndarray) -> np.ndarray:
    """Red and green of each lit pixel over their channel's mean on the same ring (the lit pixels at
    the same whole-pixel distance from the centre), in units of 1/256: int64 ``(N, 2, S, S)``, unlit 0.

    Vignetting and the fall-off of illumination towards the rim are radial and smooth: dividing
    them out leaves local shadows, and the rim no longer looks darker than the field inside it.
    """
    n, n_rings = quads.shape[0], int(rings.max()) + 1
    index = np.arange(n)[:, None, None] * n_rings + rings[None]  # one bin per image and ring
    picked = index[lit]
    counts = np.maximum(np.bincount(picked, minlength=n * n_rings), 1)
    flat = np.zeros((n, 2, *quads.shape[2:]), dtype=np.int64)
    for c in range(2):
        profile = np.bincount(picked, weights=quads[:, c][lit], minlength=n * n_rings) / counts
        flat[:, c] = np.rint(_RING_UNIT * quads[:, c] / np.maximum(profile[index], 4.0)) * lit
    return flat


def _dust(quads: np.ndarray, lit: np.ndarray, geo: _Geometry) -> np.ndarray:
    """Share of the expected field's pixels (``geo.disc``) in blob-shaped neutral shadows: see ``MEASURES``."""
    n, size = quads.shape[0], quads.shape[2]
    half = max(1, size // 10)
    stacked = np.zeros((n, 3, size + 2 * half, size + 2 * half), dtype=np.int64)  # zero beyond the square
    inside = slice(half, half + size)
    stacked[:, :2, inside, inside] = _flattened(quads, lit, geo.rings)
    stacked[:, 2, inside, inside] = lit
    sums = _window_sums(stacked.reshape(3 * n, *stacked.shape[2:]), half, inside, inside).reshape(n, 3, size, size)
    ratio_r = stacked[:, 0, inside, inside] * sums[:, 2] / np.maximum(sums[:, 0], 1)
    ratio_g = stacked[:, 1, inside, inside] * sums[:, 2] / np.maximum(sums[:, 1], 1)
    # Clear of the field's soft edge, and of the square's own edge where a field that fills the crop
    # is cut (beyond the square counts as unlit; at S/2 = 64 the expected field reaches row 1).
    solid = _shifted(_shifted(lit, np.logical_and, outside=False), np.logical_and, outside=False)
    shadow = solid & (ratio_r < _DUST_DARKER) & (ratio_g < _DUST_DARKER) & (np.abs(ratio_r - ratio_g) < _DUST_HUE)
    # Keep blobs, drop thin lines (pigment spicules, vessels): a morphological opening of the
    # shadow mask by a 3 x 3 square (erode, then dilate back).
    return _opened(shadow)[:, geo.disc].mean(axis=1)


def measure(planes: np.ndarray, *, fov_threshold: int = 20) -> np.ndarray:
    """The ``MEASURES`` of each screened square, given as uint8 colour planes ``(N, 3, S, S)`` (the
    model input's layout; ``planes_from_pixels``): float64 ``(N, len(MEASURES))``.

    ``fov_threshold`` is preprocessing's level above which a pixel is lit (``PreprocessCfg.fov_threshold``).
    Sharpness reads the full-resolution green plane; the other measures a 2 x 2 averaged copy
    (they describe regions, not edges). Sums are exact integers, so each row depends on its
    image alone, whatever the batch.
    """
    planes = np.asarray(planes)
    if planes.ndim != 4 or planes.shape[1] != 3 or planes.shape[2] != planes.shape[3] or planes.dtype != np.uint8:
        raise ValueError(f"planes must be uint8 shaped (N, 3, S, S), got {planes.dtype} {planes.shape}")
    n, size = planes.shape[0], planes.shape[2]
    if n == 0:
        return np.zeros((0, len(MEASURES)))
    if size < 32:
        raise ValueError(f"squares must be at least 32 px a side, got {size}")

    full = _geometry(size)
    win = full.window
    green_plane = planes[:, 1]
    green = green_plane[:, win, win].astype(np.int32)
    nine = np.zeros_like(green)  # 9 x the 3 x 3 mean around each window pixel (the window lies inside the square)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            nine += green_plane[:, win.start + dy : win.stop + dy, win.start + dx : win.stop + dx]
    mask = full.inner.astype(np.int32)
    fine = (np.abs(9 * green - nine) * mask).sum(axis=(1, 2)) / 9.0
    sharpness = fine / ((green * mask).sum(axis=(1, 2)) + mask.sum())
    brightest = np.maximum(np.maximum(planes[:, 0, win, win], planes[:, 1, win, win]), planes[:, 2, win, win])
    saturated = (brightest[:, full.inner] >= 250).mean(axis=1)

    quads = _half_sums(planes)  # 4 x the 2 x 2 means, (N, 3, S/2, S/2)
    geo = _geometry(quads.shape[2])
    w, inner = geo.window, geo.inner
    lit = np.maximum(np.maximum(quads[:, 0], quads[:, 1]), quads[:, 2]) > 4 * fov_threshold
    outside = lit[:, geo.corners].mean(axis=1)
    unlit = 1.0 - lit[:, geo.disc].mean(axis=1)
    occluded = np.maximum(unlit - outside, 0.0)

    red, green_h, blue = (quads[:, c, w, w] for c in range(3))
    r_in, g_in, b_in = red[:, inner], green_h[:, inner], blue[:, inner]
    brightness = np.median(np.maximum(np.maximum(r_in, g_in), b_in), axis=1) / 4.0
    glare = ((b_in >= r_in) & (b_in > 4 * 110)).mean(axis=1)
    haze = np.percentile(b_in, 2, axis=1) / (np.median(b_in, axis=1) + 4.0)

    dust = _dust(quads, lit, geo)

    lit_in = lit[:, w, w][:, inner]
    # Fixed point (2^-20), so that the sum is exact and the row the same in any batch: a float sum
    # along a row may group its terms differently with the batch's shape.
    redness_map = np.rint((r_in - b_in) / (r_in + g_in + b_in + 4.0) * _FIXED).astype(np.int64)
    redness = (redness_map * lit_in).sum(axis=1) / _FIXED / np.maximum(lit_in.sum(axis=1), 1)
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


def assess_planes(planes: np.ndarray, cfg: QualityCfg, *, fov_threshold: int) -> np.ndarray:
    """The ``contract.QUALITY`` rows of a batch of uint8 squares ``(N, 3, S, S)``; S must be ``cfg.size``."""
    planes = np.asarray(planes)
    if planes.ndim == 4 and len(planes) and planes.shape[2] != cfg.size:
        raise ValueError(f"quality thresholds calibrated at {cfg.size} px cannot grade {planes.shape[2]}-px squares")
    return grade(measure(planes, fov_threshold=fov_threshold), cfg).tensor()


def assess_pixels(pixels: np.ndarray, cfg: QualityCfg, *, mean, std, fov_threshold: int) -> np.ndarray:
    """The ``contract.QUALITY`` rows of a batch of normalised model inputs ``(N, 3, S, S)``; S must be ``cfg.size``."""
    return assess_planes(planes_from_pixels(pixels, mean, std), cfg, fov_threshold=fov_threshold)
