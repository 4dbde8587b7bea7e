"""The DALI graph of a ``PreprocessCfg``, and the one pipeline factory every layout builds it with.

``fundus_graph`` is the pipeline's operators: decode (RGB, 8 bit) -> field-of-view measure ->
centred square crop (padded with black where the disc is clipped by the frame) -> antialiased
resize -> normalise to CHW float32, and the same crop at ``quality_size`` when it differs.
``pipeline_definition`` wraps it, fed from an external source named ``IMAGE``, in a
``pipeline_def`` with the same arguments everywhere (``PIPELINE_ARGS``: one ``feed_input`` per
``run``, the dynamic executor): the ``dali_cpu`` and ``dali_mixed`` decoders of ``Preprocessor``,
the GPU profile's autoserialized ``dali.py`` and its CPU twin, the tests and the benchmarks.

Where each step runs is a ``Placement``, chosen by the decoder's name: ``dali_cpu`` runs every
step on the host (``device_id=None`` is allowed); ``dali_mixed`` decodes with nvJPEG and crops
and resizes on the GPU, and copies the crop side (a GPU node) to the CPU, because DALI takes
named arguments only from CPU nodes (which needs the dynamic executor). Another placement (say,
measuring the field of view on the host) is one more entry in ``PLACEMENTS`` and the branch
that uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.types as types
from nvidia.dali import pipeline_def

from predilect import contract
from predilect.errors import ConfigError
from predilect.preprocess.config import PreprocessCfg, dali_outputs
from predilect.preprocess.decoders import DecodedBatch, Sniffed, joined, rejected
from predilect.preprocess.result import InvalidImageError, fov_error

PIPELINE_ARGS: dict[str, Any] = {"prefetch_queue_depth": 1, "exec_dynamic": True}
"""The pipeline arguments every layout shares: one ``feed_input`` per ``run`` (nothing is prefetched
from an external source fed by the caller), and the dynamic executor (GPU nodes as CPU arguments)."""


@dataclass(frozen=True)
class Placement:
    """Where the steps of one DALI decoder run.

    ``decode_device``: the image decoder's device (``cpu``: libjpeg-turbo / libpng on the host;
    ``mixed``: nvJPEG, output on the GPU); ``needs_gpu``: a ``device_id`` is required;
    ``arguments_to_cpu``: the crop side is measured on the GPU and copied to the CPU (``.cpu()``).
    """

    decode_device: str
    needs_gpu: bool
    arguments_to_cpu: bool


PLACEMENTS = {
    "dali_cpu": Placement(decode_device="cpu", needs_gpu=False, arguments_to_cpu=False),
    "dali_mixed": Placement(decode_device="mixed", needs_gpu=True, arguments_to_cpu=True),
}

_INTERP = {
    "linear": types.INTERP_LINEAR,
    "cubic": types.INTERP_CUBIC,
    "lanczos3": types.INTERP_LANCZOS3,
    "triangular": types.INTERP_TRIANGULAR,
}


def placement(cfg: PreprocessCfg) -> Placement:
    """The placement of ``cfg.decoder``; a decoder that is not a DALI graph is refused."""
    if cfg.decoder not in PLACEMENTS:
        raise ConfigError(f"decoder {cfg.decoder!r} is not a DALI graph; use one of {sorted(PLACEMENTS)}")
    return PLACEMENTS[cfg.decoder]


def fundus_graph(cfg: PreprocessCfg, encoded: Any, *, hw_decoder_load: float | None = None) -> tuple[Any, ...]:
    """The DALI operators derived from ``cfg``, applied to ``encoded`` (a DataNode of encoded bytes).

    Returns the nodes that ``dali_outputs(cfg)`` names, in its order: the CHW float32 tensor;
    the field of view's ``(width, height)`` in source pixels (zero when the image holds no field
    of view); the decoded frame's ``(width, height)`` (EXIF orientation applied, as the decoder
    rectifies it), float32 on the CPU (the shape is metadata: nothing is copied from the GPU);
    and, with ``cfg.separate_quality_square``, the same cropped square resized to
    ``cfg.quality_size`` as uint8 CHW colour planes (what ``predilect.quality.measure`` reads).
    ``hw_decoder_load``: with ``mixed`` decode, the share of images given to the hardware JPEG
    decoder, where the GPU has one.
    """
    where = placement(cfg)
    interp = _INTERP[cfg.interpolation]
    mixed = where.decode_device == "mixed"
    decode_args = {"hw_decoder_load": hw_decoder_load} if mixed and hw_decoder_load is not None else {}
    image = fn.decoders.image(encoded, device=where.decode_device, output_type=types.RGB, **decode_args)
    # Field of view: rows and columns holding any pixel brighter than the black mask.
    inside = fn.cast(fn.reductions.max(image, axes=[2]) > cfg.fov_threshold, dtype=types.FLOAT)
    fov_w = fn.reductions.sum(fn.reductions.max(inside, axes=[0]))
    fov_h = fn.reductions.sum(fn.reductions.max(inside, axes=[1]))
    # Square of side max(w, h), centred as fundus cameras centre the disc; where the disc
    # is clipped by the frame the crop reaches past it and is padded with black.
    side = fov_w + fn.cast(fov_h > fov_w, dtype=types.FLOAT) * (fov_h - fov_w)
    side = side + fn.cast(side < 1.0, dtype=types.FLOAT)  # an all-black frame: keep DALI valid
    if where.arguments_to_cpu:
        side = side.cpu()  # named arguments must be CPU nodes (needs the dynamic executor)
    square = fn.crop(image, crop_w=side, crop_h=side, out_of_bounds_policy="pad", fill_values=0)
    resized = fn.resize(square, resize_x=cfg.size, resize_y=cfg.size, antialias=True, interp_type=interp)
    tensor = fn.crop_mirror_normalize(
        resized,
        dtype=types.FLOAT,
        output_layout="CHW",
        mean=[255.0 * m for m in cfg.mean],
        std=[255.0 * s for s in cfg.std],
    )
    height_width = image.shape(dtype=types.FLOAT)  # (H, W, C)
    nodes = [tensor, fn.stack(fov_w, fov_h), fn.stack(height_width[1], height_width[0])]
    if cfg.separate_quality_square:
        side_px = cfg.quality_size
        graded = fn.resize(square, resize_x=side_px, resize_y=side_px, antialias=True, interp_type=interp)
        nodes.append(fn.transpose(graded, perm=[2, 0, 1]))  # uint8 HWC -> CHW planes
    return tuple(nodes)


def pipeline_definition(
    cfg: PreprocessCfg,
    *,
    batch_size: int,
    num_threads: int,
    device_id: int | None,
    hw_decoder_load: float | None = None,
) -> Callable[..., Any]:
    """The one DALI pipeline definition of ``cfg`` (a ``pipeline_def``; call it for an unbuilt Pipeline).

    External source ``IMAGE`` (1-D uint8 encoded bytes, one sample per image) -> ``fundus_graph``,
    with ``PIPELINE_ARGS``. ``device_id``: the GPU (a placeholder where Triton's DALI backend
    assigns each instance's), None for a host-only pipeline (``dali_cpu`` only).
    """
    where = placement(cfg)
    if where.needs_gpu and device_id is None:
        raise ConfigError(f"decoder {cfg.decoder!r} needs a GPU device_id; use 'dali_cpu' on CPU")

    def fundus_preprocess() -> tuple[Any, ...]:
        encoded = fn.external_source(name=contract.IMAGE, device="cpu", dtype=types.UINT8, ndim=1)
        return fundus_graph(cfg, encoded, hw_decoder_load=hw_decoder_load)

    definition: Callable[..., Any] = pipeline_def(
        fundus_preprocess, batch_size=batch_size, num_threads=num_threads, device_id=device_id, **PIPELINE_ARGS
    )
    return definition


def build_pipeline(
    cfg: PreprocessCfg,
    *,
    batch_size: int,
    num_threads: int,
    device_id: int | None,
    hw_decoder_load: float | None = None,
) -> Any:
    """``pipeline_definition(...)``'s Pipeline, built."""
    pipe = pipeline_definition(
        cfg, batch_size=batch_size, num_threads=num_threads, device_id=device_id, hw_decoder_load=hw_decoder_load
    )()
    pipe.build()
    return pipe


def run_pipeline(pipe: Any, cfg: PreprocessCfg, images: Sequence[np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Feed ``images`` (1-D uint8 each) to a built pipeline and run it once: per ``dali_outputs(cfg)``
    name, one host array per image."""
    pipe.feed_input(contract.IMAGE, list(images))
    outputs = pipe.run()
    named = {}
    for name, batch in zip(dali_outputs(cfg), outputs, strict=True):
        host = batch.as_cpu() if hasattr(batch, "as_cpu") else batch
        named[name] = [np.array(host[i]) for i in range(len(images))]
    return named


def _dali_cause(error: RuntimeError) -> str:
    """The decoder's own words from a DALI pipeline error, without its traceback boilerplate."""
    tail = str(error).split("encountered:")[-1].strip()
    return tail.splitlines()[0] if tail else type(error).__name__


class DaliDecoder:
    """The ``dali_cpu`` / ``dali_mixed`` backend: one built pipeline (``pipeline_definition``), run per batch.

    A payload that fails the pipeline fails its whole run; the batch is then rerun one image at a
    time, so that the rejection names the one payload and the others are decoded unchanged.
    """

    def __init__(self, cfg: PreprocessCfg, *, max_batch_size: int, num_threads: int, device_id: int | None) -> None:
        if placement(cfg).needs_gpu and device_id is None:
            raise ConfigError(f"decoder {cfg.decoder!r} needs a GPU device_id; use 'dali_cpu' on CPU")
        self.cfg = cfg
        self.max_batch_size, self.num_threads, self.device_id = max_batch_size, num_threads, device_id
        self._pipe: Any = None

    def _run(self, images: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
        if self._pipe is None:
            self._pipe = build_pipeline(
                self.cfg, batch_size=self.max_batch_size, num_threads=self.num_threads, device_id=self.device_id
            )
        try:
            return run_pipeline(self._pipe, self.cfg, images)
        except RuntimeError:
            self._pipe = None  # DALI invalidates a pipeline after a critical error
            raise

    def decode(self, batch: Sequence[Sniffed], *, quality: bool) -> DecodedBatch:
        cfg = self.cfg
        try:
            out = self._run([item.data for item in batch])
        except RuntimeError as e:
            if len(batch) > 1:  # one image broke the decoder batch: rerun one by one to find it
                return joined(cfg, [self.decode([item], quality=quality) for item in batch], quality=quality)
            return rejected(cfg, InvalidImageError(f"image could not be decoded: {_dali_cause(e)}"))
        fov = [(float(w), float(h)) for w, h in (a.tolist() for a in out[contract.FOV_EXTENT])]
        frames = [(float(w), float(h)) for w, h in (a.tolist() for a in out[contract.FRAME_EXTENT])]
        errors = [fov_error(cfg, w, h) for w, h in fov]
        kept = [i for i, error in enumerate(errors) if error is None]
        pixels = (
            np.stack([out[contract.PIXELS][i] for i in kept]).astype(np.float32, copy=False)
            if kept
            else np.empty((0, *cfg.input_shape), np.float32)
        )
        planes = None
        if quality and cfg.separate_quality_square:
            squares = out[contract.QUALITY_SQUARE]
            planes = np.stack([squares[i] for i in kept]) if kept else np.empty((0, *cfg.quality_shape), np.uint8)
        return DecodedBatch(pixels, errors, fov, frames, planes)

    def close(self) -> None:
        self._pipe = None
