"""Gradability: would a grader grade this fundus photograph? Pure NumPy, on the field-of-view square.

The checks follow what screening programmes write down for an ungradable image -- the field of view
must show the retina (macula and disc) and be in focus at the scale of the vessels, well enough exposed
over enough of the field, free of artefacts that hide it -- read on the square the model screens
(``PreprocessCfg.quality_size``, the crop preprocessing cut; ``Preprocessor.run(..., quality=True)`` and
the GPU profile's DALI step cut it at that side when the model's input has another). Each square is
measured over the *field a grader reads*, not over a fixed disc: ``field.find_field`` finds the camera's
circular mask (whole, cut by a 3:2 frame, with a notch or burned-in text beside it) or a frame-filling
crop, from where the frame ends on the square (``Frame``, from the field box and frame size preprocessing
reports). ``measures`` defines each measure (``MEASURES``, also ``contract.QUALITY_MEASURES``).

Checks (``CHECKS``; thresholds in ``QualityCfg``, chosen by ``predilect gradability`` on calibration
images, or on a site's own labelled images with ``--manifest``):

* ``too_small``: the field is fewer than ``field_px`` source pixels across: too coarse to grade.
* ``field_of_view``: too little of the mask circle on the square (``field_visible``) or its centre off
  the square's centre (``field_offset``): the camera was not aligned and the square misses retina.
* ``focus``: vessel-edge blur (``blur``) above the threshold over half the field.
* ``underexposed``: a quarter of the field or more darker than ``exposure``; ``overexposed``:
  ``saturated``.
* ``artefact``: lid or lash shadow (``unlit``), glare, haze, dust.
* ``monochrome``: a red-free or greyscale photograph (``chroma`` below its threshold) in a camera
  mask: its own type, reported, never screened as colour by a colour model.
* ``wrong_image_type``: not a colour fundus photograph: too little red for a fundus in a camera mask
  (unless over-exposure, glare or haze explain it), or, without a mask, not fundus-red or of one colour
  (an external eye, a room, an OCT B-scan).

A check's badness is ``measure / threshold`` (or the inverse for a lower bound) and ``score`` is
``clip(1 - max badness / 2, 0, 1)``: gradable iff every check passes (score > 0.5). ``wrong_image_type``
stands alone (the other checks say nothing useful about a photograph that is not of a fundus); a
monochrome photograph is not also called glary (its blue equals its red).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from predilect.quality.config import (
    CHECK_NAMES,
    CHECKS,
    DEFAULT_CALIBRATION,
    DEFAULT_SIZE,
    MEASURES,
    Check,
    QualityCfg,
    QualityConfigError,
    QualitySizeError,
    check_size,
    default_quality_cfg,
    load_quality_cfg,
)
from predilect.quality.field import Frame
from predilect.quality.grading import Grade, frames_of, grade, measure, planes_from_pixels

__all__ = [
    "CHECKS",
    "CHECK_NAMES",
    "DEFAULT_CALIBRATION",
    "DEFAULT_SIZE",
    "MEASURES",
    "Assessment",
    "Check",
    "Frame",
    "Grade",
    "QualityCfg",
    "QualityConfigError",
    "QualitySizeError",
    "assess_pixels",
    "assess_planes",
    "check_size",
    "default_quality_cfg",
    "frames_of",
    "grade",
    "load_quality_cfg",
    "measure",
    "planes_from_pixels",
]


@dataclass(frozen=True)
class Assessment:
    """A batch's ``contract.QUALITY`` rows ``(N, 1 + reasons)`` and ``QUALITY_MEASURES`` rows, both float32."""

    quality: np.ndarray
    measures: np.ndarray


def assess_planes(
    planes: np.ndarray, cfg: QualityCfg, *, fov_threshold: int, frames: Sequence[Frame] | None = None
) -> Assessment:
    """Grade a batch of uint8 squares ``(N, 3, S, S)``; S must be ``cfg.size``."""
    planes = np.asarray(planes)
    if planes.ndim == 4 and len(planes) and planes.shape[2] != cfg.size:
        raise ValueError(f"quality thresholds calibrated at {cfg.size} px cannot grade {planes.shape[2]}-px squares")
    measures = measure(planes, fov_threshold=fov_threshold, frames=frames)
    return Assessment(grade(measures, cfg).tensor(), measures.astype(np.float32))


def assess_pixels(
    pixels: np.ndarray,
    cfg: QualityCfg,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    fov_threshold: int,
    frames: Sequence[Frame] | None = None,
) -> Assessment:
    """Grade a batch of normalised model inputs ``(N, 3, S, S)``; S must be ``cfg.size``."""
    return assess_planes(planes_from_pixels(pixels, mean, std), cfg, fov_threshold=fov_threshold, frames=frames)
