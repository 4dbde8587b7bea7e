"""The DALI graph of a ``PreprocessCfg``, and the one pipeline factory every layout builds it with.

``fundus_graph`` is the pipeline's operators: decode (RGB, 8 bit) -> centred square crop of the
field of view's side (padded with black where the disc is clipped by the frame) -> antialiased
resize -> normalise to CHW float32, and the same crop at ``quality_size`` when it differs. The
field of view is an input, measured on the host (``predilect.preprocess.field``): Triton's DALI
backend runs the legacy executor, which takes the crop's side from CPU nodes only and allows no
GPU->CPU transition, so the graph computes nothing on the GPU that a CPU operator reads.
``pipeline_definition`` wraps it, fed from two external sources, ``IMAGE`` (the encoded bytes) and
``FOV_EXTENT`` (``dali_inputs``), in a ``pipeline_def`` with the same arguments everywhere
(``PIPELINE_ARGS``: one ``feed_input`` per ``run``, the legacy executor the backend runs): the
``dali_cpu`` and ``dali_mixed`` decoders of ``Preprocessor``, the GPU profile's autoserialized
``dali.py`` and its CPU twin, the tests and the benchmarks. ``gpu_to_cpu_edges`` lists the
transitions a defined graph would need, so a test can refuse them without a GPU.

Where each step runs is a ``Placement``, chosen by the decoder's name: ``dali_cpu`` runs every
step on the host (``device_id=None`` is allowed); ``dali_mixed`` decodes with nvJPEG and crops,
resizes and normalises on the GPU, with the crop's side computed on the CPU from ``FOV_EXTENT``.
The two graphs differ in the decoder's device only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
import nvidia.dali.types as types
from nvidia.dali import pipeline_def

from predilect import contract
from predilect.errors import ConfigError
from predilect.preprocess.config import PreprocessCfg, dali_inputs, dali_outputs
from predilect.preprocess.decoders import DecodedBatch, Sniffed, joined, rejected
from predilect.preprocess.field import HostField, measure_field
from predilect.preprocess.result import InvalidImageError, fov_error

PIPELINE_ARGS: dict[str, Any] = {"prefetch_queue_depth": 1, "exec_dynamic": False}
"""The pipeline arguments every layout shares: one ``feed_input`` per ``run`` (nothing is prefetched
from an external source fed by the caller), and the legacy executor, the one Triton's DALI backend
creates (``daliCreatePipeline`` sets no dynamic-executor flag), so that a graph it would refuse is
refused here, at definition, too."""


@dataclass(frozen=True)
class Placement:
    """Where the steps of one DALI decoder run.

    ``decode_device``: the image decoder's device (``cpu``: libjpeg-turbo / libpng on the host;
    ``mixed``: nvJPEG, output on the GPU); ``needs_gpu``: a ``device_id`` is required.
    """

    decode_device: str
    needs_gpu: bool


PLACEMENTS = {
    "dali_cpu": Placement(decode_device="cpu", needs_gpu=False),
    "dali_mixed": Placement(decode_device="mixed", needs_gpu=True),
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


def fundus_graph(
    cfg: PreprocessCfg, encoded: Any, fov_extent: Any, *, hw_decoder_load: float | None = None
) -> tuple[Any, ...]:
    """The DALI operators derived from ``cfg``, applied to ``encoded`` (a DataNode of encoded bytes) and
    ``fov_extent`` (a CPU DataNode: the square to crop, float32 ``(side, side)`` in source pixels, measured
    on the host: ``field.HostField.crop_extent``).

    Returns the nodes that ``dali_outputs(cfg)`` names, in its order: the CHW float32 tensor and, with
    ``cfg.separate_quality_square``, the same cropped square resized to ``cfg.quality_size`` as uint8
    CHW colour planes (what ``predilect.quality.measure`` reads). ``hw_decoder_load``: with ``mixed``
    decode, the share of images given to the hardware JPEG decoder, where the GPU has one.
    """
    where = placement(cfg)
    interp = _INTERP[cfg.interpolation]
    mixed = where.decode_device == "mixed"
    decode_args = {"hw_decoder_load": hw_decoder_load} if mixed and hw_decoder_load is not None else {}
    image = fn.decoders.image(encoded, device=where.decode_device, output_type=types.RGB, **decode_args)
    # Square of the side measured on the host, centred as fundus cameras centre the disc; where it reaches
    # past the frame (a disc clipped by the frame, a narrow field) it is padded with black. CPU arithmetic
    # on a CPU input.
    side = dmath.max(fov_extent[0], fov_extent[1])
    side = side + fn.cast(side < 1.0, dtype=types.FLOAT)  # an all-black frame: keep DALI valid
    square = fn.crop(image, crop_w=side, crop_h=side, out_of_bounds_policy="pad", fill_values=0)
    resized = fn.resize(square, resize_x=cfg.size, resize_y=cfg.size, antialias=True, interp_type=interp)
    tensor = fn.crop_mirror_normalize(
        resized,
        dtype=types.FLOAT,
        output_layout="CHW",
        mean=[255.0 * m for m in cfg.mean],
        std=[255.0 * s for s in cfg.std],
    )
    nodes = [tensor]
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

    External sources ``IMAGE`` (1-D uint8 encoded bytes, one sample per image) and ``FOV_EXTENT``
    (float32 ``(width, height)``, ``predilect.preprocess.field``) -> ``fundus_graph``, with
    ``PIPELINE_ARGS``. ``device_id``: the GPU (a placeholder where Triton's DALI backend assigns each
    instance's), None for a host-only pipeline (``dali_cpu`` only).
    """
    where = placement(cfg)
    if where.needs_gpu and device_id is None:
        raise ConfigError(f"decoder {cfg.decoder!r} needs a GPU device_id; use 'dali_cpu' on CPU")

    def fundus_preprocess() -> tuple[Any, ...]:
        image_name, fov_name = dali_inputs()
        encoded = fn.external_source(name=image_name, device="cpu", dtype=types.UINT8, ndim=1)
        fov_extent = fn.external_source(name=fov_name, device="cpu", dtype=types.FLOAT, ndim=1)
        return fundus_graph(cfg, encoded, fov_extent, hw_decoder_load=hw_decoder_load)

    definition: Callable[..., Any] = pipeline_def(
        fundus_preprocess, batch_size=batch_size, num_threads=num_threads, device_id=device_id, **PIPELINE_ARGS
    )
    return definition


_ON_GPU = ("gpu", "mixed")


def gpu_to_cpu_edges(pipe: Any) -> list[str]:
    """Every GPU->CPU transition of a defined (not built) pipeline, as ``producer -> consumer`` lines.

    A transition is a GPU node that a CPU operator reads (as an input or a named argument, the
    decoded shape included), or a GPU node copied to the host (``.cpu()``) for any operator or output.
    The legacy executor that Triton's DALI backend runs allows none. Reads the Python graph only, so
    it needs no GPU.
    """
    pipe._build_graph()
    edges: list[str] = []

    def device_of(node: Any) -> str:
        return str(node.source._op.device) if node.source is not None else "cpu"

    for op in pipe._ops:
        consumer_device = str(op._op.device)
        for node in op.inputs:
            producer = device_of(node)
            if producer in _ON_GPU and (node.device == "cpu" or consumer_device == "cpu"):
                edges.append(f"{node.source.name} ({producer}) -> {op.name} ({consumer_device}, reads it on the CPU)")
    for node in pipe._graph_outputs:
        if node.device == "cpu" and device_of(node) in _ON_GPU:
            edges.append(f"{node.source.name} ({device_of(node)}) -> pipeline output (cpu)")
    return list(dict.fromkeys(edges))  # a node read twice by one operator is one transition


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


def run_pipeline(
    pipe: Any, cfg: PreprocessCfg, images: Sequence[np.ndarray], fov_extents: Sequence[np.ndarray]
) -> dict[str, list[np.ndarray]]:
    """Feed ``images`` (1-D uint8 each) and their ``fov_extents`` (float32 ``(side, side)``:
    ``HostField.crop_extent``) to a built pipeline and run it once: per ``dali_outputs(cfg)`` name, one
    host array per image."""
    pipe.feed_input(contract.IMAGE, list(images))
    pipe.feed_input(contract.FOV_EXTENT, [np.asarray(f, np.float32) for f in fov_extents])
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

    Each payload's field of view is measured on the host first (``field.measure_field``; a payload
    that does not decode there is rejected alone), then the others run through the pipeline. A
    payload that fails the pipeline fails its whole run; the batch is then rerun one image at a
    time, so that the rejection names the one payload and the others are decoded unchanged.
    """

    def __init__(self, cfg: PreprocessCfg, *, max_batch_size: int, num_threads: int, device_id: int | None) -> None:
        if placement(cfg).needs_gpu and device_id is None:
            raise ConfigError(f"decoder {cfg.decoder!r} needs a GPU device_id; use 'dali_cpu' on CPU")
        self.cfg = cfg
        self.max_batch_size, self.num_threads, self.device_id = max_batch_size, num_threads, device_id
        self._pipe: Any = None

    def _run(self, images: list[np.ndarray], fields: list[HostField]) -> dict[str, list[np.ndarray]]:
        if self._pipe is None:
            self._pipe = build_pipeline(
                self.cfg, batch_size=self.max_batch_size, num_threads=self.num_threads, device_id=self.device_id
            )
        try:
            return run_pipeline(self._pipe, self.cfg, images, [f.crop_extent() for f in fields])
        except RuntimeError:
            self._pipe = None  # DALI invalidates a pipeline after a critical error
            raise

    def decode(self, batch: Sequence[Sniffed], *, quality: bool) -> DecodedBatch:
        cfg = self.cfg
        measured = [measure_field(item, cfg) for item in batch]
        if any(isinstance(m, InvalidImageError) for m in measured):
            parts = [
                rejected(cfg, m) if isinstance(m, InvalidImageError) else self._decode_measured([item], [m], quality)
                for item, m in zip(batch, measured, strict=True)
            ]
            return joined(cfg, parts, quality=quality)
        fields = [m for m in measured if isinstance(m, HostField)]
        return self._decode_measured(list(batch), fields, quality)

    def _decode_measured(self, batch: list[Sniffed], fields: list[HostField], quality: bool) -> DecodedBatch:
        cfg = self.cfg
        errors = [fov_error(cfg, *f.fov) for f in fields]
        kept = [i for i, error in enumerate(errors) if error is None]
        out: dict[str, list[np.ndarray]] = {}
        if kept:
            try:
                out = self._run([batch[i].data for i in kept], [fields[i] for i in kept])
            except RuntimeError as e:
                if len(batch) > 1:  # one image broke the decoder batch: rerun one by one to find it
                    parts = [self._decode_measured([item], [f], quality) for item, f in zip(batch, fields, strict=True)]
                    return joined(cfg, parts, quality=quality)
                return rejected(cfg, InvalidImageError(f"image could not be decoded: {_dali_cause(e)}"))
        pixels = (
            np.stack(out[contract.PIXELS]).astype(np.float32, copy=False)
            if kept
            else np.empty((0, *cfg.input_shape), np.float32)
        )
        planes = None
        if quality and cfg.separate_quality_square:
            planes = np.stack(out[contract.QUALITY_SQUARE]) if kept else np.empty((0, *cfg.quality_shape), np.uint8)
        return DecodedBatch(
            pixels, errors, [f.fov for f in fields], [f.frame for f in fields], planes, [f.side for f in fields]
        )

    def close(self) -> None:
        self._pipe = None
