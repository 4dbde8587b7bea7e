"""The field of view measured on the host: what every DALI graph crops by.

Triton's DALI backend creates its pipelines with DALI's legacy executor (``daliCreatePipeline``
passes no dynamic-executor flag, and the executor it passes overrides the serialized one). That
executor takes an operator's named arguments, such as the crop's side, from CPU nodes only, and
allows no GPU->CPU transition, so a side measured on the nvJPEG-decoded frame (a GPU node) cannot
reach the crop. The field of view is therefore measured before DALI, on the host, with the one
measurement the CPU profile's decoder makes (``pil_draft.draft_field``: libjpeg-turbo's DCT-scaled
decode, full resolution for PNG), and given to the graph as its ``FOV_EXTENT`` input; the decoded
frame's size comes from the same header. The GPU profile's ``validate_image`` step measures it per
request; ``DaliDecoder`` measures it before each pipeline run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from predilect.preprocess.config import PreprocessCfg
from predilect.preprocess.decoders import Sniffed
from predilect.preprocess.decoders.pil_draft import draft_field
from predilect.preprocess.result import InvalidImageError, decode_failure


@dataclass(frozen=True)
class HostField:
    """One image's field of view and decoded frame, ``(width, height)`` each, and the side of the square
    to crop (``result.crop_side``), in source pixels as displayed."""

    fov: tuple[float, float]
    frame: tuple[float, float]
    side: float

    def crop_extent(self) -> np.ndarray:
        """``FOV_EXTENT`` as the DALI graph reads it: float32 ``(side, side)``, the square it crops."""
        return np.asarray((self.side, self.side), np.float32)

    def frame_extent(self) -> np.ndarray:
        """``FRAME_EXTENT``: float32 ``(width, height)`` of the decoded photograph."""
        return np.asarray(self.frame, np.float32)


def measure_field(item: Sniffed, cfg: PreprocessCfg) -> HostField | InvalidImageError:
    """The field of view of one sniffed payload (and the crop its ``field_angle_deg`` asks for), or its
    rejection when its bytes do not decode cleanly."""
    try:
        field = draft_field(item.data, cfg, item.header, field_angle_deg=item.field_angle_deg)
    except InvalidImageError as e:
        return e
    # libjpeg-turbo's corrupt-data warnings (strict decoding) and Pillow's format errors: this payload's own.
    except (ValueError, OSError) as e:
        return decode_failure(e)
    return HostField(field.fov, field.frame, field.side)
