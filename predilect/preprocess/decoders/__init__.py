"""The decoder interface, and the registry that loads a backend by the name ``PreprocessCfg.decoder`` gives.

A backend is a module of this package named after its decoder (``pil_draft``, ``dali_cpu``,
``dali_mixed``) that imports its library at the top and defines ``open_decoder``. Only the
selected backend's module is imported, when a ``Preprocessor`` first needs it, so this package
and ``predilect.preprocess`` need NumPy only.

A decoder turns one batch of sniffed payloads (at most ``max_batch_size``) into a
``DecodedBatch``: the accepted model inputs packed in order, per payload its rejection (a
decoder error, or no field of view: ``fov_error``) or None, its field-of-view extent in
source pixels and its decoded frame's size; and the quality squares when asked for. A bad
payload never changes the others' results. Decoders are not thread-safe; ``Preprocessor``
serialises the calls.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from predilect.preprocess.config import PreprocessCfg
from predilect.preprocess.result import InvalidImageError

if TYPE_CHECKING:
    from predilect.preprocess.sniff import ImageHeader


@dataclass(frozen=True)
class Sniffed:
    """One payload that passed ``inspect_image``: its bytes (1-D uint8), its header and the field angle of
    the camera that took it (None: the model's; ``PreprocessCfg.crop_scale``)."""

    data: np.ndarray
    header: ImageHeader
    field_angle_deg: float | None = None


@dataclass(frozen=True)
class DecodedBatch:
    """One decoder batch: ``pixels`` ``(n_accepted, 3, S, S)`` float32 in payload order; per payload its
    rejection or None, its field of view ``(width, height)`` and its frame ``(width, height)`` in
    source pixels (zeros when rejected before decoding); ``planes`` ``(n_accepted, 3, Q, Q)`` uint8 when
    the quality square was asked for and ``cfg.separate_quality_square``, else None; ``sides``: per
    payload the side of the square it cropped, source pixels (``result.crop_side``; 0 when rejected)."""

    pixels: np.ndarray
    errors: list[InvalidImageError | None]
    fov: list[tuple[float, float]]
    frames: list[tuple[float, float]]
    planes: np.ndarray | None = None
    sides: list[float] = field(default_factory=list)


class Decoder(Protocol):
    """A backend, built for one ``PreprocessCfg``."""

    def decode(self, batch: Sequence[Sniffed], *, quality: bool) -> DecodedBatch:
        """Decode, crop, resize and normalise ``batch`` (at most ``max_batch_size`` payloads)."""
        ...

    def close(self) -> None:
        """Release threads and pipelines; the decoder is not used afterwards."""
        ...


BACKEND_MODULES: dict[str, str] = {
    "pil_draft": "predilect.preprocess.decoders.pil_draft",
    "dali_cpu": "predilect.preprocess.decoders.dali_cpu",
    "dali_mixed": "predilect.preprocess.decoders.dali_mixed",
}
"""Each decoder's backend module, imported only when a ``PreprocessCfg`` selects it."""


def open_decoder(cfg: PreprocessCfg, *, max_batch_size: int, num_threads: int, device_id: int | None) -> Decoder:
    """The backend ``cfg.decoder`` names, built for ``cfg`` (its module imported now)."""
    if cfg.decoder not in BACKEND_MODULES:  # PreprocessCfg checks it against DECODERS too
        raise ValueError(f"unknown decoder {cfg.decoder!r}")
    backend = importlib.import_module(BACKEND_MODULES[cfg.decoder])
    decoder: Decoder = backend.open_decoder(
        cfg, max_batch_size=max_batch_size, num_threads=num_threads, device_id=device_id
    )
    return decoder


def rejected(cfg: PreprocessCfg, error: InvalidImageError) -> DecodedBatch:
    """The batch of one payload refused by the decoder."""
    planes = np.empty((0, *cfg.quality_shape), np.uint8)
    return DecodedBatch(np.empty((0, *cfg.input_shape), np.float32), [error], [(0.0, 0.0)], [(0.0, 0.0)], planes, [0.0])


def joined(cfg: PreprocessCfg, batches: Sequence[DecodedBatch], *, quality: bool) -> DecodedBatch:
    """Decoder batches as one, in order (no batch: an empty one); ``planes`` when ``quality`` and separate."""
    kept = [b.pixels for b in batches if len(b.pixels)]
    pixels = np.concatenate(kept) if kept else np.empty((0, *cfg.input_shape), np.float32)
    planes = None
    if quality and cfg.separate_quality_square:
        squares = [b.planes for b in batches if b.planes is not None and len(b.planes)]
        planes = np.concatenate(squares) if squares else np.empty((0, *cfg.quality_shape), np.uint8)
    return DecodedBatch(
        pixels,
        [e for b in batches for e in b.errors],
        [x for b in batches for x in b.fov],
        [x for b in batches for x in b.frames],
        planes,
        [x for b in batches for x in b.sides],
    )
