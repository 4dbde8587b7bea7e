"""What preprocessing returns: ``Preprocessed``, the per-image rejection, and where the crop lies.

NumPy and the standard library only: the postprocess steps and the lesion geometry use these
without any decoder installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from predilect.errors import UserError
from predilect.preprocess.config import PreprocessCfg


class InvalidImageError(UserError):
    """The payload is not an image this service screens; the message names the cause.

    A rejection belongs to one payload: preprocessing returns it in ``Preprocessed.errors`` and
    the other payloads of the batch are preprocessed unchanged.
    """


FieldBox = tuple[float, float, float, float]
"""The model-input square in the source image's normalised coordinates: (left, top, right, bottom),
x right and y down, 0..1 across the image (beyond where the square reaches past the frame)."""


def crop_side(fov_w: float, fov_h: float, *, fills_frame: bool, scale: float) -> float:
    """The side, in source pixels, of the square preprocessing crops: the field's diameter (the lit extent's
    larger side; the frame's diagonal when the field fills the frame) times ``scale``
    (``PreprocessCfg.crop_scale`` of the photograph's field angle)."""
    diameter = math.hypot(fov_w, fov_h) if fills_frame else max(fov_w, fov_h)
    return diameter * scale


def field_box_in_frame(
    width: float, height: float, fov_w: float, fov_h: float, *, side: float | None = None
) -> FieldBox:
    """The square that preprocessing crops (centred, of side ``side`` source pixels; by default
    ``max(fov_w, fov_h)``) in a ``width`` x ``height`` photograph (as displayed: EXIF orientation
    applied), normalised."""
    side = max(max(fov_w, fov_h) if side is None else side, 1.0)
    left, top = (width - side) / 2.0, (height - side) / 2.0
    return (left / width, top / height, (left + side) / width, (top + side) / height)


def fov_error(cfg: PreprocessCfg, fov_w: float, fov_h: float) -> InvalidImageError | None:
    """The rejection of an image whose field of view is smaller than ``cfg.min_side_px``; None if it is large enough."""
    if min(fov_w, fov_h) < cfg.min_side_px:
        return InvalidImageError(
            f"no fundus field of view: {int(fov_w)}x{int(fov_h)} px brighter than level "
            f"{cfg.fov_threshold}; is this a colour fundus photograph?"
        )
    return None


def decode_failure(error: BaseException) -> InvalidImageError:
    """A rejection naming what a decoder said (the exception's type and message, never a traceback),
    chained to ``error``."""
    text = " ".join(str(error).split())[:200] or "no detail"
    failure = InvalidImageError(f"image could not be decoded: {type(error).__name__}: {text}")
    failure.__cause__ = error
    return failure


@dataclass(frozen=True)
class Preprocessed:
    """What ``Preprocessor.run`` made of a batch of payloads, in payload order.

    ``pixels``: the accepted payloads' model inputs, one contiguous ``(n_accepted, 3, S, S)``
    float32 array in order; ``errors[i]``: None for an accepted payload, else its rejection;
    ``boxes[i]``: the square it cropped (``field_box_in_frame``; None when rejected); ``frames[i]``:
    the decoded photograph's ``(width, height)`` as displayed (None when rejected);
    ``quality_planes``: when asked for and ``cfg.separate_quality_square``, the same crops at
    ``quality_size`` as ``(n_accepted, 3, Q, Q)`` uint8 colour planes (what
    ``predilect.quality.measure`` reads), else None: the model input is then the square to grade
    (``predilect.quality.planes_from_pixels`` recovers its planes exactly).
    """

    pixels: np.ndarray
    errors: list[InvalidImageError | None]
    boxes: list[FieldBox | None]
    frames: list[tuple[float, float] | None]
    quality_planes: np.ndarray | None = None

    @property
    def accepted(self) -> list[int]:
        """The indices of the accepted payloads, in order: row ``r`` of ``pixels`` (and of
        ``quality_planes``) is payload ``accepted[r]``."""
        return [i for i, error in enumerate(self.errors) if error is None]

    def per_payload(self) -> list[np.ndarray | InvalidImageError]:
        """One ``(3, S, S)`` tensor (a view into ``pixels``) or one rejection per payload, in order."""
        rows = {i: row for row, i in enumerate(self.accepted)}
        return [self.pixels[rows[i]] if error is None else error for i, error in enumerate(self.errors)]

    def pixels_or_raise(self) -> np.ndarray:
        """``pixels`` of a batch that must be accepted whole; raises ``InvalidImageError`` naming the
        first rejected payload's index and cause."""
        for i, error in enumerate(self.errors):
            if error is not None:
                raise InvalidImageError(f"image {i}: {error}") from error
        return self.pixels
