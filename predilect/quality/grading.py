"""From measures to the served QUALITY row: which checks fail, which reasons are given, and the score."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from predilect.contract import QUALITY_REASONS
from predilect.quality.config import ALWAYS, CHECKS, MASKED, MEASURES, QualityCfg
from predilect.quality.field import Frame
from predilect.quality.measures import measure_square

_EXPLAINS_COLOUR = ("saturated", "glare", "haze")
"""Checks whose failure also lowers redness: a masked photograph is then not called the wrong type."""
_ALONE = ("wrong_image_type",)
"""Reasons that stand alone: the other checks say nothing useful about a photograph that is not of a fundus."""
_TYPED = ("wrong_image_type", "monochrome", "too_small")
"""Reasons given by their own rule rather than by one check's failure alone."""
_COLOUR_CHECKS = ("glare", "dust")
"""Checks that read hue (glare: blue against red; dust: red and green darkened alike): meaningless on a
monochrome photograph, whose channels are one, which says so instead."""


def frames_of(
    size: int,
    boxes: Sequence[Any] | np.ndarray | None,
    frames: Sequence[Any] | np.ndarray | None,
) -> list[Frame] | None:
    """Each square's ``Frame`` from its field box (``FIELD_BOX`` row) and frame (width, height); None without them."""
    if boxes is None or frames is None:
        return None
    rows = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sizes = np.asarray(frames, dtype=np.float64).reshape(-1, 2)
    return [Frame.from_box(tuple(b), tuple(f), size) for b, f in zip(rows.tolist(), sizes.tolist(), strict=True)]


def measure(planes: np.ndarray, *, fov_threshold: int = 20, frames: Sequence[Frame] | None = None) -> np.ndarray:
    """The ``MEASURES`` of each graded square, given as uint8 colour planes ``(N, 3, S, S)`` (the model
    input's layout; ``planes_from_pixels``): float64 ``(N, len(MEASURES))``.

    ``frames``: where each photograph's frame lies on its square and its scale (``frames_of``, from the
    field boxes and frame sizes preprocessing returns); without them each square is taken as the whole
    frame at one source pixel per pixel. ``fov_threshold`` is preprocessing's level above which a pixel
    is lit (``PreprocessCfg.fov_threshold``). Each row depends on its image alone, whatever the batch.
    """
    planes = np.asarray(planes)
    if planes.ndim != 4 or planes.shape[1] != 3 or planes.shape[2] != planes.shape[3] or planes.dtype != np.uint8:
        raise ValueError(f"planes must be uint8 shaped (N, 3, S, S), got {planes.dtype} {planes.shape}")
    n, size = planes.shape[0], planes.shape[2]
    if n == 0:
        return np.zeros((0, len(MEASURES)))
    if size < 32:
        raise ValueError(f"squares must be at least 32 px a side, got {size}")
    if frames is not None and len(frames) != n:
        raise ValueError(f"{len(frames)} frames for {n} squares")
    chosen = frames if frames is not None else [Frame.whole(size)] * n
    return np.stack([measure_square(p, f, fov_threshold=fov_threshold) for p, f in zip(planes, chosen, strict=True)])


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
    circular = measures[:, column["masked"]] > 0.5
    applies = np.stack(
        [np.ones_like(circular) if c.when == ALWAYS else circular if c.when == MASKED else ~circular for c in CHECKS],
        axis=1,
    )
    badness = np.stack(
        [c.badness(measures[:, column[c.measure]], cfg.thresholds[c.name]) for c in CHECKS], axis=1
    ).reshape(len(measures), len(CHECKS))
    badness = np.where(applies, badness, 0.0)
    failed = badness >= 1.0
    by_name = {c.name: failed[:, i] for i, c in enumerate(CHECKS)}
    explained = np.zeros(len(measures), dtype=bool)
    for name in _EXPLAINS_COLOUR:
        explained |= by_name[name]
    single_colour = by_name["chroma"]
    typed = {
        "wrong_image_type": (~circular & (by_name["redness_unmasked"] | single_colour))
        | (circular & by_name["redness"] & ~explained & ~single_colour),
        "monochrome": circular & single_colour,
        "too_small": by_name["field_px"],
    }
    flags = np.zeros((len(measures), len(QUALITY_REASONS)), dtype=bool)
    taken = np.zeros(len(measures), dtype=bool)
    for reason in _ALONE:
        taken |= typed[reason]
    for reason in _TYPED:
        flags[:, QUALITY_REASONS.index(reason)] = typed[reason] & (taken if reason in _ALONE else ~taken)
    monochrome = typed["monochrome"] & ~taken
    for i, check in enumerate(CHECKS):
        if check.reason not in _TYPED:
            hidden = taken | monochrome if check.name in _COLOUR_CHECKS else taken
            flags[:, QUALITY_REASONS.index(check.reason)] |= failed[:, i] & ~hidden
    # Every failed check leaves a flag (a reason standing alone, or its own), so flags and score agree:
    # gradable iff no flag iff every applicable badness < 1 iff score > 0.5.
    score = np.clip(1.0 - badness.max(axis=1) / 2.0, 0.0, 1.0)
    return Grade(score=score, flags=flags, badness=badness)


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
