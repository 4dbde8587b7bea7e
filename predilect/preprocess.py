"""Preprocessing: the one definition shared by training, evaluation and serving.

``PreprocessCfg`` travels inside every checkpoint and every served model repository; the
pipeline its ``decoder`` names (``pil_draft`` or a DALI pipeline derived from the cfg) is
the only code that turns encoded image bytes into model input. Training caches its tensors
through the same ``Preprocessor`` that the Triton ``preprocess`` model runs, so served tensors
equal training-time tensors bit for bit.

Pipeline, per image: decode (RGB, 8 bit) -> field-of-view crop (the square around the
fundus disc, padded with black where the disc is clipped by the frame) -> antialiased resize
to ``size`` x ``size`` -> (x/255 - mean) / std -> CHW float32.

Decoders: ``pil_draft`` (the CPU default) decodes JPEGs at the smallest libjpeg DCT scale
(1/2, 1/4, 1/8) that still leaves the field-of-view square at least ``size`` pixels, then
runs the same steps with Pillow and NumPy; ``dali_cpu`` and ``dali_mixed`` run the steps as
a DALI pipeline on the full-resolution frame (host or nvJPEG decode).
"""

from __future__ import annotations

import io
import json
import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Union

import numpy as np

Payload = Union[bytes, bytearray, memoryview, np.ndarray]

_INTERPOLATIONS = ("linear", "cubic", "lanczos3", "triangular")
_DECODERS = ("pil_draft", "dali_cpu", "dali_mixed")
_PIL_FILTERS = {"linear": "BILINEAR", "cubic": "BICUBIC", "lanczos3": "LANCZOS", "triangular": "BILINEAR"}


class InvalidImageError(ValueError):
    """The payload is not an image this service screens; the message names the cause."""


@dataclass(frozen=True)
class PreprocessCfg:
    """Preprocessing constants; saved with the checkpoint and served with the model.

    Attributes:
        size: side of the square model input, in pixels.
        mean, std: per-channel normalisation, in units of the [0, 1] intensity range.
        fov_threshold: 8-bit level; a pixel whose brightest channel exceeds it lies inside
            the camera's field of view (the fundus disc), darker pixels are the black mask.
        interpolation: antialiased resize filter.
        decoder: ``pil_draft`` (libjpeg DCT-domain downscaled decode, the CPU profile),
            ``dali_cpu`` (full-resolution host decode in DALI) or ``dali_mixed`` (nvJPEG, GPU
            profile). Checkpoints carry their cfg, so older ones keep ``dali_cpu``.
        min_side_px, max_pixels: accepted image dimensions, checked before decoding.
    """

    size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    fov_threshold: int = 20
    interpolation: str = "linear"
    decoder: str = "pil_draft"
    min_side_px: int = 64
    max_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"size must be >= 16, got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three channels, std > 0")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {self.interpolation!r}")
        if self.decoder not in _DECODERS:
            raise ValueError(f"decoder must be one of {_DECODERS}, got {self.decoder!r}")
        if not 0 <= self.fov_threshold < 255:
            raise ValueError(f"fov_threshold must be an 8-bit level, got {self.fov_threshold}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> PreprocessCfg:
        data = json.loads(text)
        for key in ("mean", "std"):
            data[key] = tuple(data[key])
        return cls(**data)


def as_uint8(payload: Payload) -> np.ndarray:
    """View an encoded payload as a 1-D uint8 array without copying where possible."""
    if isinstance(payload, np.ndarray):
        if payload.dtype == np.object_:  # a Triton BYTES element
            payload = payload.item()
        else:
            return np.ascontiguousarray(payload.reshape(-1).view(np.uint8))
    return np.frombuffer(bytes(payload), dtype=np.uint8)


def inspect_image(data: np.ndarray, cfg: PreprocessCfg) -> tuple[str, int, int]:
    """Check an encoded image before it reaches the decoder.

    Returns ``(format, width, height)``; raises ``InvalidImageError`` naming the cause, so
    that a bad request is rejected on its own instead of failing a whole decoder batch.
    """
    from PIL import Image, UnidentifiedImageError

    head = data[:16].tobytes()
    if data.size == 0:
        raise InvalidImageError("empty payload: expected the bytes of a JPEG or PNG image")
    if head.startswith(b"\xff\xd8\xff"):
        fmt = "jpeg"
        # A transmission cut short loses the end-of-image marker; decoders would otherwise
        # return a silently grey-filled image.
        if b"\xff\xd9" not in data[-64:].tobytes():
            raise InvalidImageError(f"truncated JPEG: no end-of-image marker in the last bytes of {data.size} bytes")
    elif head.startswith(b"\x89PNG\r\n\x1a\n"):
        fmt = "png"
        if b"IEND" not in data[-32:].tobytes():
            raise InvalidImageError(f"truncated PNG: no IEND chunk at the end of {data.size} bytes")
    else:
        raise InvalidImageError(f"not a JPEG or PNG image: payload of {data.size} bytes starts with {head[:8]!r}")
    try:
        with Image.open(io.BytesIO(data.tobytes())) as im:
            width, height = im.size
    except UnidentifiedImageError as e:
        raise InvalidImageError(f"corrupt {fmt.upper()} header: the decoder cannot identify the image") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise InvalidImageError(f"corrupt {fmt.upper()} header: {e}") from e
    if min(width, height) < cfg.min_side_px:
        raise InvalidImageError(f"image too small: {width}x{height}, need at least {cfg.min_side_px} px a side")
    if width * height > cfg.max_pixels:
        raise InvalidImageError(f"image too large: {width}x{height} exceeds {cfg.max_pixels} pixels")
    return fmt, width, height


def fundus_graph(cfg: PreprocessCfg, encoded, *, hw_decoder_load: float | None = None):
    """The DALI operators of the pipeline derived from ``cfg``, applied to ``encoded`` (a DataNode).

    Returns ``(tensor, fov_w, fov_h)``: the CHW float32 tensor and the field-of-view width and
    height in source pixels (zero when the image holds no field of view). With ``dali_mixed``
    the image is decoded by nvJPEG on the GPU (``hw_decoder_load``: the share of images given
    to the hardware JPEG decoder, where the GPU has one); the crop side then lives on the GPU
    and is copied to the CPU, because DALI takes named arguments only from CPU nodes.
    """
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    interp = {
        "linear": types.INTERP_LINEAR,
        "cubic": types.INTERP_CUBIC,
        "lanczos3": types.INTERP_LANCZOS3,
        "triangular": types.INTERP_TRIANGULAR,
    }[cfg.interpolation]
    mixed = cfg.decoder == "dali_mixed"
    decode_args = {"hw_decoder_load": hw_decoder_load} if mixed and hw_decoder_load is not None else {}
    image = fn.decoders.image(encoded, device="mixed" if mixed else "cpu", output_type=types.RGB, **decode_args)
    # Field of view: rows and columns holding any pixel brighter than the black mask.
    inside = fn.cast(fn.reductions.max(image, axes=[2]) > cfg.fov_threshold, dtype=types.FLOAT)
    fov_w = fn.reductions.sum(fn.reductions.max(inside, axes=[0]))
    fov_h = fn.reductions.sum(fn.reductions.max(inside, axes=[1]))
    # Square of side max(w, h), centred as fundus cameras centre the disc; where the disc
    # is clipped by the frame the crop reaches past it and is padded with black.
    side = fov_w + fn.cast(fov_h > fov_w, dtype=types.FLOAT) * (fov_h - fov_w)
    side = side + fn.cast(side < 1.0, dtype=types.FLOAT)  # an all-black frame: keep DALI valid
    if mixed:
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
    return tensor, fov_w, fov_h


def build_pipeline(cfg: PreprocessCfg, *, batch_size: int, num_threads: int, device_id: int | None):
    """Build the DALI pipeline derived from ``cfg`` (``fundus_graph`` on an external source)."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    if cfg.decoder == "dali_mixed" and device_id is None:
        raise ValueError("decoder 'dali_mixed' needs a GPU device_id; use 'dali_cpu' on CPU")

    @pipeline_def(
        batch_size=batch_size, num_threads=num_threads, device_id=device_id, prefetch_queue_depth=1, exec_dynamic=True
    )
    def fundus_pipeline():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1, no_copy=False)
        return fundus_graph(cfg, encoded)

    pipe = fundus_pipeline()
    pipe.build()
    return pipe


def _fov_extent(rgb: np.ndarray, threshold: int) -> tuple[int, int]:
    """Columns and rows holding any pixel brighter than the black mask (as the DALI pipeline)."""
    inside = rgb.max(axis=2) > threshold
    return int(inside.any(axis=0).sum()), int(inside.any(axis=1).sum())


def _decode_draft(raw: bytes, request_px: int) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB pixels at the coarsest DCT scale whose both sides are >= ``request_px``, and the full size."""
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as im:
        full_size = im.size
        im.draft("RGB", (request_px, request_px))  # a no-op for PNG
        return np.asarray(im.convert("RGB")), full_size


def pil_draft_preprocess(data: np.ndarray, cfg: PreprocessCfg) -> tuple[np.ndarray, float, float]:
    """The ``pil_draft`` decoder on one encoded image: ``(CHW tensor, fov_w, fov_h)``.

    The field-of-view extent is returned in full-resolution source pixels. Raises the
    decoder's ``OSError``/``ValueError`` when the bytes do not decode.
    """
    from PIL import Image

    raw = data.tobytes()
    request_px = cfg.size
    while True:
        rgb, (full_w, full_h) = _decode_draft(raw, request_px)
        height, width = rgb.shape[:2]
        fov_w, fov_h = _fov_extent(rgb, cfg.fov_threshold)
        side = max(fov_w, fov_h)
        if side >= cfg.size or side == 0 or (width, height) == (full_w, full_h):
            break
        # The disc fills less of the frame than the first guess assumed: decode one scale finer.
        request_px = max(math.ceil(min(width, height) * cfg.size / side), min(width, height) + 1)
    side = max(side, 1)
    left, top = (width - side) // 2, (height - side) // 2
    square = Image.fromarray(rgb).crop((left, top, left + side, top + side))  # pads with black outside
    resized = square.resize(
        (cfg.size, cfg.size), getattr(Image.Resampling, _PIL_FILTERS[cfg.interpolation]), reducing_gap=None
    )
    mean = np.float32(255.0) * np.asarray(cfg.mean, np.float32)
    std = np.float32(255.0) * np.asarray(cfg.std, np.float32)
    tensor = (np.asarray(resized, dtype=np.float32) - mean) / std
    return (
        np.ascontiguousarray(tensor.transpose(2, 0, 1), dtype=np.float32),
        fov_w * full_w / width,
        fov_h * full_h / height,
    )


@dataclass
class Preprocessor:
    """Runs the pipeline of ``cfg`` (``cfg.decoder``) on encoded images, isolating bad ones.

    ``run`` returns one entry per payload, either the ``(3, size, size)`` float32 tensor or
    the ``InvalidImageError`` that names why that payload was rejected; a bad payload never
    fails or changes the others in its batch. Not thread-safe: one per worker.
    """

    cfg: PreprocessCfg
    max_batch_size: int = 16
    num_threads: int = 2
    device_id: int | None = None
    _pipe: object = field(default=None, init=False, repr=False)
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def _pipeline(self):
        if self._pipe is None:
            self._pipe = build_pipeline(
                self.cfg, batch_size=self.max_batch_size, num_threads=self.num_threads, device_id=self.device_id
            )
        return self._pipe

    def _run_dali(self, arrays: list[np.ndarray]) -> list[tuple[np.ndarray, float, float]]:
        pipe = self._pipeline()
        pipe.feed_input("encoded", arrays)
        try:
            tensors, widths, heights = pipe.run()
        except RuntimeError:
            self._pipe = None  # DALI invalidates a pipeline after a critical error
            raise
        if hasattr(tensors, "as_cpu"):
            tensors = tensors.as_cpu()
        return [
            (np.array(tensors[i]), float(np.array(widths[i])), float(np.array(heights[i]))) for i in range(len(arrays))
        ]

    def _decode_pil_one(self, array: np.ndarray) -> np.ndarray | InvalidImageError:
        try:
            tensor, fov_w, fov_h = pil_draft_preprocess(array, self.cfg)
        except (OSError, ValueError, SyntaxError) as e:
            return InvalidImageError(f"image could not be decoded: {e}")
        return self._check_fov(tensor, fov_w, fov_h)

    def _decode_pil(self, arrays: list[np.ndarray]) -> list[np.ndarray | InvalidImageError]:
        # Each image is processed on its own, so results cannot depend on the batch; libjpeg
        # releases the GIL, so a small thread pool overlaps decodes.
        if self.num_threads <= 1 or len(arrays) <= 1:
            return [self._decode_pil_one(a) for a in arrays]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.num_threads, thread_name_prefix="predilect-decode")
        return list(self._pool.map(self._decode_pil_one, arrays))

    def _decode(self, arrays: list[np.ndarray]) -> list[np.ndarray | InvalidImageError]:
        if self.cfg.decoder == "pil_draft":
            return self._decode_pil(arrays)
        try:
            outputs = self._run_dali(arrays)
        except RuntimeError as e:
            if len(arrays) > 1:
                # One image broke the decoder batch: rerun one by one to find it.
                return [self._decode([a])[0] for a in arrays]
            return [InvalidImageError(f"image could not be decoded: {_dali_cause(e)}")]
        return [self._check_fov(tensor, fov_w, fov_h) for tensor, fov_w, fov_h in outputs]

    def _check_fov(self, tensor: np.ndarray, fov_w: float, fov_h: float) -> np.ndarray | InvalidImageError:
        return fov_error(self.cfg, fov_w, fov_h) or tensor

    def run(self, payloads: Sequence[Payload]) -> list[np.ndarray | InvalidImageError]:
        """Preprocess encoded images; one tensor or error per payload, in order."""
        with self._lock:
            results: list[np.ndarray | InvalidImageError | None] = [None] * len(payloads)
            valid: list[tuple[int, np.ndarray]] = []
            for i, payload in enumerate(payloads):
                array = as_uint8(payload)
                try:
                    inspect_image(array, self.cfg)
                except InvalidImageError as e:
                    results[i] = e
                else:
                    valid.append((i, array))
            for start in range(0, len(valid), self.max_batch_size):
                chunk = valid[start : start + self.max_batch_size]
                outputs = self._decode([a for _, a in chunk])
                for (i, _), out in zip(chunk, outputs, strict=True):
                    results[i] = out
            return results  # type: ignore[return-value]

    def run_strict(self, payloads: Sequence[Payload]) -> np.ndarray:
        """Preprocess images that must all be valid; returns ``(B, 3, size, size)`` float32."""
        outputs = self.run(payloads)
        for i, out in enumerate(outputs):
            if isinstance(out, Exception):
                raise InvalidImageError(f"image {i}: {out}") from out
        return (
            np.stack(outputs).astype(np.float32, copy=False)
            if outputs
            else np.zeros((0, *self.cfg.input_shape), np.float32)
        )


def fov_error(cfg: PreprocessCfg, fov_w: float, fov_h: float) -> InvalidImageError | None:
    """The rejection of an image whose field of view is smaller than ``cfg.min_side_px``; None if it is large enough."""
    if min(fov_w, fov_h) < cfg.min_side_px:
        return InvalidImageError(
            f"no fundus field of view: {int(fov_w)}x{int(fov_h)} px brighter than level "
            f"{cfg.fov_threshold}; is this a colour fundus photograph?"
        )
    return None


def _dali_cause(error: RuntimeError) -> str:
    """The decoder's own words from a DALI pipeline error, without its traceback boilerplate."""
    text = str(error)
    tail = text.split("encountered:")[-1].strip()
    return tail.splitlines()[0] if tail else type(error).__name__
