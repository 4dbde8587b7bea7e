"""Preprocessing: the one definition shared by training, evaluation and serving.

``PreprocessCfg`` travels inside every checkpoint and every served model repository; the
decoder its ``decoder`` names is the only code that turns encoded image bytes into model
input. Training caches its tensors through the same ``Preprocessor`` that the Triton
``preprocess`` model runs, so served tensors equal training-time tensors bit for bit.

Pipeline, per image: sniff the header (``sniff``: format, size, colour space, bit depth,
EXIF orientation; bad payloads are refused before any decoder sees them) -> decode (RGB,
8 bit) -> field-of-view crop (the square around the fundus disc, padded with black where the
disc is clipped by the frame) -> antialiased resize to ``size`` x ``size`` -> (x/255 - mean) /
std -> CHW float32; with ``quality=True`` and ``quality_size != size``, the same crop is also
resized to ``quality_size`` (uint8 planes): the square the gradability step measures.

Modules: ``config`` (``PreprocessCfg``), ``result`` (``Preprocessed``, ``InvalidImageError``,
field boxes), ``sniff`` (header checks), ``decoders`` (the interface, and one backend module per
decoder: ``pil_draft`` via simplejpeg and Pillow, ``dali_cpu`` and ``dali_mixed`` via DALI),
``field`` (the field of view measured on the host, which every DALI graph crops by), ``dali``
(the DALI graph and the one pipeline factory every layout uses), ``runner``
(``Preprocessor``), ``pixels`` (manifest records -> cached tensors).

``import predilect.preprocess`` needs NumPy only: the names below that live in modules with
native decoders (``Preprocessor``, ``inspect_image``, ``ImageHeader``, ``as_uint8``: simplejpeg and
Pillow) are imported on first use, and a decoder backend only when a ``Preprocessor`` opens it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from predilect.preprocess.config import DECODERS, INTERPOLATIONS, PreprocessCfg, dali_inputs, dali_outputs
from predilect.preprocess.result import FieldBox, InvalidImageError, Preprocessed, field_box_in_frame, fov_error

if TYPE_CHECKING:
    from predilect.preprocess.runner import Preprocessor
    from predilect.preprocess.sniff import ImageHeader, as_uint8, inspect_image

_ON_FIRST_USE = {
    "Preprocessor": "predilect.preprocess.runner",
    "ImageHeader": "predilect.preprocess.sniff",
    "as_uint8": "predilect.preprocess.sniff",
    "inspect_image": "predilect.preprocess.sniff",
}

__all__ = [
    "DECODERS",
    "INTERPOLATIONS",
    "FieldBox",
    "ImageHeader",
    "InvalidImageError",
    "PreprocessCfg",
    "Preprocessed",
    "Preprocessor",
    "as_uint8",
    "dali_inputs",
    "dali_outputs",
    "field_box_in_frame",
    "fov_error",
    "inspect_image",
]


def __getattr__(name: str) -> Any:
    module = _ON_FIRST_USE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
