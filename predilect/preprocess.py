"""Preprocessing: the one definition shared by training, evaluation and serving.

``PreprocessCfg`` travels inside every checkpoint and every served model repository; the
pipeline its ``decoder`` names (``pil_draft`` or a DALI pipeline derived from the cfg) is
the only code that turns encoded image bytes into model input. Training caches its tensors
through the same ``Preprocessor`` that the Triton ``preprocess`` model runs, so served tensors
equal training-time tensors bit for bit.

Pipeline, per image: decode (RGB, 8 bit) -> field-of-view crop (the square around the
fundus disc, padded with black where the disc is clipped by the frame) -> antialiased resize
to ``size`` x ``size`` -> (x/255 - mean) / std -> CHW float32. Where ``quality_size`` differs
from ``size``, the same crop is also resized to ``quality_size`` (uint8 planes): the square the
gradability step measures, at the side its thresholds were calibrated at
(``Preprocessor.run_with_quality``; ``fundus_graph(quality_square=True)`` in DALI).

Decoders: ``pil_draft`` (the CPU default) decodes JPEGs at the smallest libjpeg DCT scale
(1/2, 1/4, 1/8, the scale Pillow's ``draft`` picks) that still leaves the field-of-view square
at least ``max(size, quality_size)`` pixels (``decode_px``: neither square is upsampled), then
runs the same steps with NumPy and Pillow; ``dali_cpu`` and ``dali_mixed`` run the steps as a
DALI pipeline on the full-resolution frame (host or nvJPEG decode).

``pil_draft`` at the decode floor: JPEGs are decoded by libjpeg-turbo through simplejpeg
(the pixels Pillow's draft mode gives, bit for bit, and with ``strict`` decoding: corrupt or
premature scan data is an error, not a grey-filled image); the field of view is found on the
DCT-scaled frame by two max-projections; the crop + resize is one Pillow call on the square;
normalisation is one lookup-table gather per channel, written straight into the batch tensor.

What is screened: 8-bit greyscale or colour JPEG (YCbCr/RGB) and 8-bit PNG (greyscale, RGB,
palette, or with a fully opaque alpha channel), EXIF orientation applied. Everything else is
refused with ``InvalidImageError`` naming the cause, from the header alone where it can be
(size, colour space, bit depth) so that no decompression bomb reaches a decoder.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
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
        quality_size: side of the square the gradability step measures (``predilect.quality``), in
            pixels: the side its thresholds were calibrated at (``QualityCfg.size``). When it differs
            from ``size``, preprocessing cuts a second square of this side from the same decoded
            frame with the same crop (``Preprocessor.run_with_quality``); the ``pil_draft`` decoder
            then decodes for ``max(size, quality_size)`` so that neither square is upsampled, for
            training as for serving. Older cfg JSON without the key reads as 224.
    """

    size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    fov_threshold: int = 20
    interpolation: str = "linear"
    decoder: str = "pil_draft"
    min_side_px: int = 64
    max_pixels: int = 40_000_000
    quality_size: int = 224

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"size must be >= 16, got {self.size}")
        if self.quality_size < 32:
            raise ValueError(
                f"quality_size must be >= 32 (the gradability measures' smallest square), got {self.quality_size}"
            )
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

    @property
    def separate_quality_square(self) -> bool:
        """Whether quality is measured on a square of its own (``quality_size != size``), not on the model input."""
        return self.quality_size != self.size

    @property
    def quality_shape(self) -> tuple[int, int, int]:
        """The uint8 colour planes ``(3, Q, Q)`` the gradability step measures, Q = ``quality_size``."""
        return (3, self.quality_size, self.quality_size)

    @property
    def decode_px(self) -> int:
        """The side the field-of-view square must reach when decoded: the larger of the two squares cut from it."""
        return max(self.size, self.quality_size)

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
    return np.frombuffer(payload, dtype=np.uint8)


@dataclass(frozen=True)
class ImageHeader:
    """What an encoded image declares before any pixel is decoded.

    ``colour``: the JPEG colour space as libjpeg-turbo reports it (``Gray``, ``YCbCr``, ...)
    or the PNG colour type's name; ``orientation``: the EXIF orientation tag (1-8, 1 when absent).
    """

    format: str
    width: int
    height: int
    colour: str
    orientation: int = 1


_JPEG_SOI, _PNG_SIGNATURE = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
_JPEG_COLOURS = ("Gray", "YCbCr", "RGB")
"""Screened JPEG colour spaces: 8-bit greyscale and colour. CMYK / YCCK have no exact RGB conversion."""
_PNG_COLOURS = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale+alpha", 6: "RGBA"}
_EXIF_ORIENTATION = 0x0112


def _jpeg_exif_orientation(data: np.ndarray) -> int:
    """The EXIF orientation of a JPEG (1 when absent), from its APP1 segment; markers are walked up to SOS."""
    from PIL import Image

    raw, pos = data[: 4 * 65536].tobytes(), 2  # APPn segments sit before the scan, each <= 64 KiB
    while pos + 4 <= len(raw) and raw[pos] == 0xFF:
        marker, length = raw[pos + 1], int.from_bytes(raw[pos + 2 : pos + 4], "big")
        if marker == 0xDA or length < 2:  # start of scan: no more metadata
            break
        if marker == 0xE1 and raw[pos + 4 : pos + 10] == b"Exif\x00\x00":
            exif = Image.Exif()
            exif.load(raw[pos + 10 : pos + 2 + length])
            value = exif.get(_EXIF_ORIENTATION, 1)
            return value if isinstance(value, int) and 1 <= value <= 8 else 1
        pos += 2 + length
    return 1


def _jpeg_header(data: np.ndarray) -> ImageHeader:
    import simplejpeg

    try:
        height, width, colour, _ = simplejpeg.decode_jpeg_header(data, strict=True)
    except ValueError as e:
        cause = re.sub(r"^tj\w+\(\):\s*", "", str(e))  # libjpeg-turbo's words, without its API function's name
        raise InvalidImageError(f"corrupt JPEG header: {cause}") from e
    if colour not in _JPEG_COLOURS:
        raise InvalidImageError(
            f"unsupported JPEG colour space {colour}: only 8-bit RGB (YCbCr) and greyscale images are screened"
        )
    try:
        orientation = _jpeg_exif_orientation(data)
    except (ValueError, SyntaxError, struct.error, KeyError, IndexError, TypeError) as e:
        raise InvalidImageError(f"corrupt EXIF metadata in the JPEG: {type(e).__name__}: {e}") from e
    return ImageHeader("jpeg", int(width), int(height), str(colour), orientation)


def _png_header(data: np.ndarray) -> ImageHeader:
    head = data[:33].tobytes()
    if len(head) < 33 or head[12:16] != b"IHDR":
        raise InvalidImageError("corrupt PNG header: the first chunk is not IHDR")
    width, height, depth, colour_type = struct.unpack(">IIBB", head[16:26])
    colour = _PNG_COLOURS.get(colour_type)
    if colour is None:
        raise InvalidImageError(f"corrupt PNG header: unknown colour type {colour_type}")
    if depth != 8 and not (colour_type == 3 and depth in (1, 2, 4)):
        raise InvalidImageError(
            f"{depth}-bit {colour} PNG: only 8-bit RGB and greyscale images are screened "
            "(there is no exact conversion to 8 bits)"
        )
    return ImageHeader("png", width, height, colour)


def inspect_image(data: np.ndarray, cfg: PreprocessCfg) -> ImageHeader:
    """Check an encoded image from its header alone, before any pixel buffer is allocated.

    Returns the header; raises ``InvalidImageError`` naming the cause (not a JPEG or PNG,
    truncated, an unsupported colour space or bit depth, dimensions out of range), so that a
    bad request is rejected on its own and a decompression bomb never reaches a decoder.
    """
    if data.size == 0:
        raise InvalidImageError("empty payload: expected the bytes of a JPEG or PNG image")
    head = data[:16].tobytes()
    if head.startswith(_JPEG_SOI):
        # A transmission cut short loses the end-of-image marker.
        if b"\xff\xd9" not in data[-64:].tobytes():
            raise InvalidImageError(f"truncated JPEG: no end-of-image marker in the last bytes of {data.size} bytes")
        header = _jpeg_header(data)
    elif head.startswith(_PNG_SIGNATURE):
        if b"IEND" not in data[-32:].tobytes():
            raise InvalidImageError(f"truncated PNG: no IEND chunk at the end of {data.size} bytes")
        header = _png_header(data)
    else:
        raise InvalidImageError(f"not a JPEG or PNG image: payload of {data.size} bytes starts with {head[:8]!r}")
    width, height = header.width, header.height
    if min(width, height) < cfg.min_side_px:
        raise InvalidImageError(f"image too small: {width}x{height}, need at least {cfg.min_side_px} px a side")
    if width * height > cfg.max_pixels:
        raise InvalidImageError(f"image too large: {width}x{height} exceeds {cfg.max_pixels} pixels")
    return header


def fundus_graph(
    cfg: PreprocessCfg,
    encoded,
    *,
    hw_decoder_load: float | None = None,
    frame_extent: bool = False,
    quality_square: bool = False,
):
    """The DALI operators of the pipeline derived from ``cfg``, applied to ``encoded`` (a DataNode).

    Returns ``(tensor, fov_w, fov_h)``: the CHW float32 tensor and the field-of-view width and
    height in source pixels (zero when the image holds no field of view). With ``dali_mixed``
    the image is decoded by nvJPEG on the GPU (``hw_decoder_load``: the share of images given
    to the hardware JPEG decoder, where the GPU has one); the crop side then lives on the GPU
    and is copied to the CPU, because DALI takes named arguments only from CPU nodes.
    With ``frame_extent`` a fourth node follows: the decoded frame's ``(width, height)`` (EXIF
    orientation applied, as the decoder rectifies it), float32 on the CPU (the shape is
    metadata: nothing is copied from the GPU), from which ``field_box_in_frame`` places the crop.
    With ``quality_square`` and ``cfg.separate_quality_square``, a last node follows: the same
    cropped square resized to ``cfg.quality_size`` as uint8 CHW colour planes (what
    ``predilect.quality.measure`` reads).
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
    nodes = [tensor, fov_w, fov_h]
    if frame_extent:
        height_width = image.shape(dtype=types.FLOAT)  # (H, W, C)
        nodes.append(fn.stack(height_width[1], height_width[0]))
    if quality_square and cfg.separate_quality_square:
        side_px = cfg.quality_size
        graded = fn.resize(square, resize_x=side_px, resize_y=side_px, antialias=True, interp_type=interp)
        nodes.append(fn.transpose(graded, perm=[2, 0, 1]))  # uint8 HWC -> CHW planes
    return tuple(nodes)


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
        return fundus_graph(cfg, encoded, quality_square=True)

    pipe = fundus_pipeline()
    pipe.build()
    return pipe


def _fov_extent(rgb: np.ndarray, threshold: int) -> tuple[int, int]:
    """Columns and rows holding any pixel brighter than the black mask (as the DALI pipeline).

    Exactly ``(rgb.max(axis=2) > threshold).any(axis=0 / 1).sum()``, as two max-projections
    (over rows, then over columns) that numpy vectorises, instead of a per-pixel channel max.
    """
    height, width = rgb.shape[:2]
    columns = rgb.max(axis=0).reshape(width, -1).max(axis=1) > threshold
    rows = rgb.reshape(height, -1).max(axis=1) > threshold
    return int(np.count_nonzero(columns)), int(np.count_nonzero(rows))


def draft_scale(width: int, height: int, request_px: int) -> int:
    """The DCT scale denominator (1, 2, 4 or 8) that Pillow's ``draft`` picks for ``request_px`` a side."""
    scale = min(width // request_px, height // request_px)
    return next((a for a in (8, 4, 2, 1) if scale >= a), 1)


# EXIF orientation -> numpy view of the stored pixels as they are meant to be seen
# (Pillow's ``ImageOps.exif_transpose`` table: 2 mirror, 3 rotate 180, 4 flip, 5 transpose,
# 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise).
_ORIENT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def _decode_jpeg(data: np.ndarray, header: ImageHeader, request_px: int) -> np.ndarray:
    """RGB at the DCT scale Pillow's draft would pick; libjpeg warnings (corrupt data) raise ``ValueError``."""
    import simplejpeg

    a = draft_scale(header.width, header.height, request_px)
    # min_width/min_height of exactly ceil(side / a) select the 1/a scale among libjpeg-turbo's M/8 factors.
    rgb = simplejpeg.decode_jpeg(
        data,
        colorspace="RGB",
        min_width=-(-header.width // a),
        min_height=-(-header.height // a),
        strict=True,
    )
    return rgb


def _decode_png(data: np.ndarray) -> np.ndarray:
    """RGB pixels of an 8-bit PNG: greyscale and palette expand exactly; alpha must be fully opaque."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data.tobytes())) as opened:
        im = ImageOps.exif_transpose(opened)
        if "transparency" in im.info or im.mode in ("RGBA", "LA", "PA"):
            rgba = im.convert("RGBA")
            if int(np.asarray(rgba.getchannel("A")).min()) < 255:
                raise InvalidImageError("PNG with transparency: only opaque images are screened")
            im = rgba
        if im.mode not in ("RGB", "RGBA", "L", "P", "1"):
            raise InvalidImageError(f"PNG mode {im.mode}: only 8-bit RGB and greyscale images are screened")
        return np.asarray(im.convert("RGB"))


def decode_rgb(data: np.ndarray, header: ImageHeader, request_px: int) -> np.ndarray:
    """HxWx3 uint8 pixels as meant to be seen (EXIF orientation applied); JPEGs DCT-scaled for ``request_px``."""
    if header.format == "png":
        return _decode_png(data)
    return _ORIENT[header.orientation](_decode_jpeg(data, header, request_px))


def _crop_square(rgb: np.ndarray, side: int):
    """The centred ``side`` square of ``rgb`` (black outside the frame), as a Pillow image."""
    from PIL import Image

    height, width = rgb.shape[:2]
    left, top = (width - side) // 2, (height - side) // 2
    return Image.fromarray(rgb).crop((left, top, left + side, top + side))  # pads with black outside


def _resized(square, side_px: int, cfg: PreprocessCfg) -> np.ndarray:
    """``square`` (a Pillow image) resized to ``side_px`` a side with ``cfg``'s filter: HxWx3 uint8."""
    from PIL import Image

    resample = getattr(Image.Resampling, _PIL_FILTERS[cfg.interpolation])
    return np.asarray(square.resize((side_px, side_px), resample, reducing_gap=None))


def pil_draft_squares(
    data: np.ndarray, cfg: PreprocessCfg, header: ImageHeader | None = None, *, quality: bool = False
) -> tuple[np.ndarray, np.ndarray | None, float, float]:
    """The ``pil_draft`` steps up to the resized squares: ``(model square, quality square, fov_w, fov_h)``.

    Both squares are HxWx3 uint8, resized from the one field-of-view crop of the one decoded
    frame; the quality square (``cfg.quality_size``) only with ``quality`` and
    ``cfg.separate_quality_square``, else None. The JPEG is DCT-scaled for ``cfg.decode_px``,
    whether or not the quality square is asked for, so the model square does not depend on it.
    The field of view is found on the DCT-scaled frame; its extent is returned in
    full-resolution source pixels. Raises the decoder's ``ValueError``/``OSError`` (or
    ``InvalidImageError``) when the bytes do not decode cleanly.
    """
    header = header or inspect_image(data, cfg)
    full_w, full_h = (header.height, header.width) if header.orientation >= 5 else (header.width, header.height)
    target = request_px = cfg.decode_px
    while True:
        rgb = decode_rgb(data, header, request_px)
        height, width = rgb.shape[:2]
        if header.format == "png":  # decoded at full resolution, EXIF orientation applied by Pillow
            full_w, full_h = width, height
        fov_w, fov_h = _fov_extent(rgb, cfg.fov_threshold)
        side = max(fov_w, fov_h)
        if side >= target or side == 0 or (width, height) == (full_w, full_h):
            break
        # The disc fills less of the frame than the first guess assumed: decode one scale finer.
        request_px = max(math.ceil(min(width, height) * target / side), min(width, height) + 1)
    square = _crop_square(rgb, max(side, 1))
    graded = _resized(square, cfg.quality_size, cfg) if quality and cfg.separate_quality_square else None
    return _resized(square, cfg.size, cfg), graded, fov_w * full_w / width, fov_h * full_h / height


def pil_draft_resized(
    data: np.ndarray, cfg: PreprocessCfg, header: ImageHeader | None = None
) -> tuple[np.ndarray, float, float]:
    """The ``pil_draft`` steps up to the resized model square: ``(HxWx3 uint8 square, fov_w, fov_h)``."""
    resized, _, fov_w, fov_h = pil_draft_squares(data, cfg, header)
    return resized, fov_w, fov_h


@dataclass(frozen=True)
class Normaliser:
    """uint8 HWC -> normalised float32 CHW through a per-channel lookup table.

    Each table entry is ``(v - 255 mean) / (255 std)`` computed in float32, so the result
    equals that arithmetic on every pixel bit for bit, at the cost of one gather.
    """

    lut: np.ndarray  # (3, 256) float32

    @classmethod
    def of(cls, cfg: PreprocessCfg) -> Normaliser:
        mean = np.float32(255.0) * np.asarray(cfg.mean, np.float32)
        std = np.float32(255.0) * np.asarray(cfg.std, np.float32)
        levels = np.arange(256, dtype=np.float32)
        return cls(np.ascontiguousarray((levels[None, :] - mean[:, None]) / std[:, None], dtype=np.float32))

    def into(self, images: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``images`` (N, S, S, 3) uint8 -> ``out`` (N, 3, S, S) float32, in place; returns ``out``."""
        for c in range(3):
            np.take(self.lut[c], images[..., c], out=out[:, c], mode="clip")
        return out


def pil_draft_preprocess(data: np.ndarray, cfg: PreprocessCfg) -> tuple[np.ndarray, float, float]:
    """The ``pil_draft`` decoder on one encoded image: ``(CHW tensor, fov_w, fov_h)``."""
    resized, fov_w, fov_h = pil_draft_resized(data, cfg)
    out = np.empty((1, *cfg.input_shape), np.float32)
    Normaliser.of(cfg).into(resized[np.newaxis], out)
    return out[0], fov_w, fov_h


Decoded = Union[np.ndarray, InvalidImageError]
FieldBox = tuple[float, float, float, float]
"""The model-input square in the source image's normalised coordinates: (left, top, right, bottom),
x right and y down, 0..1 across the image (beyond where the square reaches past the frame)."""


def field_box(header: ImageHeader, fov_w: float, fov_h: float) -> FieldBox:
    """The square that preprocessing crops (centred, of side max(fov_w, fov_h) source pixels), normalised."""
    width, height = (header.height, header.width) if header.orientation >= 5 else (header.width, header.height)
    return field_box_in_frame(width, height, fov_w, fov_h)


def field_box_in_frame(width: float, height: float, fov_w: float, fov_h: float) -> FieldBox:
    """``field_box`` of a ``width`` x ``height`` photograph (as displayed: EXIF orientation applied)."""
    side = max(fov_w, fov_h, 1.0)
    left, top = (width - side) / 2.0, (height - side) / 2.0
    return (left / width, top / height, (left + side) / width, (top + side) / height)


def _decode_failure(error: Exception) -> InvalidImageError:
    """A rejection naming what the decoder said: the exception's type and message, never a traceback."""
    text = " ".join(str(error).split())[:200] or "no detail"
    return InvalidImageError(f"image could not be decoded: {type(error).__name__}: {text}")


@dataclass(frozen=True)
class Preprocessed:
    """What preprocessing made of a batch of payloads (``Preprocessor.run_with_quality``).

    ``pixels``: the accepted payloads' model inputs, one contiguous ``(n_accepted, 3, S, S)``
    float32 array in order; ``errors[i]``: None for an accepted payload, else its rejection;
    ``boxes[i]``: the square it cropped (``field_box``; None when rejected); ``quality_planes``: with
    ``cfg.separate_quality_square``, the same crops at ``quality_size`` as ``(n_accepted, 3, Q, Q)``
    uint8 colour planes (what ``predilect.quality.measure`` reads), else None: the model input is
    then the square to grade (``predilect.quality.planes_from_pixels`` recovers its planes exactly).
    """

    pixels: np.ndarray
    errors: list[InvalidImageError | None]
    boxes: list[FieldBox | None]
    quality_planes: np.ndarray | None = None


@dataclass
class _Chunk:
    """One decoder batch: accepted tensors (and quality planes), per payload its result and FOV extent."""

    pixels: np.ndarray
    decoded: list[Decoded]
    extents: list[tuple[float, float]]
    planes: np.ndarray | None = None


@dataclass
class Preprocessor:
    """Runs the pipeline of ``cfg`` (``cfg.decoder``) on encoded images, isolating bad ones.

    ``run`` returns one entry per payload, either the ``(3, size, size)`` float32 tensor or
    the ``InvalidImageError`` that names why that payload was rejected; ``run_packed`` returns
    the accepted tensors as one contiguous batch; ``run_with_quality`` adds the squares the
    gradability step measures. A bad payload never fails or changes the others in its batch.
    Not thread-safe: one per worker.
    """

    cfg: PreprocessCfg
    max_batch_size: int = 16
    num_threads: int = 2
    device_id: int | None = None
    _pipe: object = field(default=None, init=False, repr=False)
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _normaliser: Normaliser | None = field(default=None, init=False, repr=False)

    def _pipeline(self):
        if self._pipe is None:
            self._pipe = build_pipeline(
                self.cfg, batch_size=self.max_batch_size, num_threads=self.num_threads, device_id=self.device_id
            )
        return self._pipe

    def _run_dali(self, arrays: list[np.ndarray]) -> list[tuple[np.ndarray, float, float, np.ndarray | None]]:
        pipe = self._pipeline()
        pipe.feed_input("encoded", arrays)
        try:
            outputs = pipe.run()
        except RuntimeError:
            self._pipe = None  # DALI invalidates a pipeline after a critical error
            raise
        tensors, widths, heights = outputs[:3]
        squares = outputs[3] if len(outputs) > 3 else None  # the quality square (separate_quality_square)
        if hasattr(tensors, "as_cpu"):
            tensors = tensors.as_cpu()
        if squares is not None and hasattr(squares, "as_cpu"):
            squares = squares.as_cpu()
        return [
            (
                np.array(tensors[i]),
                float(np.array(widths[i])),
                float(np.array(heights[i])),
                None if squares is None else np.array(squares[i]),
            )
            for i in range(len(arrays))
        ]

    def _resize_one(
        self, item: tuple[np.ndarray, ImageHeader, bool]
    ) -> tuple[Decoded, np.ndarray | None, tuple[float, float]]:
        """One payload to its resized uint8 square (and quality square), or the reason it is refused; its FOV extent."""
        array, header, quality = item
        try:
            resized, graded, fov_w, fov_h = pil_draft_squares(array, self.cfg, header, quality=quality)
        except InvalidImageError as e:
            return e, None, (0.0, 0.0)
        # The per-payload boundary: whatever the decoder raises on these bytes (libjpeg's
        # corrupt-data warnings made errors, Pillow's format errors, a bomb guard) belongs to
        # this payload alone and becomes its rejection, with the cause named and chained.
        except Exception as e:  # noqa: BLE001 - see above; the type and message are kept
            failure = _decode_failure(e)
            failure.__cause__ = e
            return failure, None, (0.0, 0.0)
        rejected = self._check_fov(fov_w, fov_h)
        return (rejected if rejected is not None else resized), graded, (fov_w, fov_h)

    def _decode_pil(self, items: list[tuple[np.ndarray, ImageHeader]], *, quality: bool) -> _Chunk:
        # Each image is processed on its own, so results cannot depend on the batch; libjpeg
        # and Pillow's resize release the GIL, so a small thread pool overlaps them.
        jobs = [(array, header, quality) for array, header in items]
        if self.num_threads <= 1 or len(jobs) <= 1:
            results = [self._resize_one(job) for job in jobs]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.num_threads, thread_name_prefix="predilect-decode")
            results = list(self._pool.map(self._resize_one, jobs))
        squares = [square for square, _, _ in results]
        accepted = [sq for sq in squares if not isinstance(sq, InvalidImageError)]
        out = np.empty((len(accepted), *self.cfg.input_shape), np.float32)
        if accepted:
            if self._normaliser is None:
                self._normaliser = Normaliser.of(self.cfg)
            self._normaliser.into(np.stack(accepted), out)
        planes = None
        if quality and self.cfg.separate_quality_square:
            graded = [g for sq, g, _ in results if not isinstance(sq, InvalidImageError) and g is not None]
            planes = np.empty((len(graded), *self.cfg.quality_shape), np.uint8)
            if graded:
                planes[...] = np.stack(graded).transpose(0, 3, 1, 2)
        return _Chunk(out, squares, [extent for _, _, extent in results], planes)

    def _decode_dali(self, arrays: list[np.ndarray]) -> _Chunk:
        try:
            outputs = self._run_dali(arrays)
        except RuntimeError as e:
            if len(arrays) > 1:
                # One image broke the decoder batch: rerun one by one to find it.
                return _joined([self._decode_dali([a]) for a in arrays], self.cfg)
            return _Chunk(
                np.empty((0, *self.cfg.input_shape), np.float32),
                [InvalidImageError(f"image could not be decoded: {_dali_cause(e)}")],
                [(0.0, 0.0)],
                np.empty((0, *self.cfg.quality_shape), np.uint8) if self.cfg.separate_quality_square else None,
            )
        decoded: list[Decoded] = []
        graded: list[np.ndarray] = []
        for tensor, fov_w, fov_h, square in outputs:
            rejected = self._check_fov(fov_w, fov_h)
            decoded.append(rejected if rejected is not None else tensor)
            if rejected is None and square is not None:
                graded.append(square)
        accepted = [d for d in decoded if not isinstance(d, InvalidImageError)]
        packed = np.stack(accepted) if accepted else np.empty((0, *self.cfg.input_shape), np.float32)
        planes = None
        if self.cfg.separate_quality_square:
            planes = np.stack(graded) if graded else np.empty((0, *self.cfg.quality_shape), np.uint8)
        return _Chunk(packed.astype(np.float32, copy=False), decoded, [(w, h) for _, w, h, _ in outputs], planes)

    def _check_fov(self, fov_w: float, fov_h: float) -> InvalidImageError | None:
        return fov_error(self.cfg, fov_w, fov_h)

    def run_packed(self, payloads: Sequence[Payload]) -> tuple[np.ndarray, list[InvalidImageError | None]]:
        """Preprocess encoded images: ``(tensors, errors)``.

        ``tensors`` is one contiguous ``(n_accepted, 3, S, S)`` float32 array of the accepted
        payloads in order; ``errors[i]`` is None for an accepted payload, else its rejection.
        """
        tensors, errors, _ = self.run_with_fields(payloads)
        return tensors, errors

    def run_with_fields(
        self, payloads: Sequence[Payload]
    ) -> tuple[np.ndarray, list[InvalidImageError | None], list[FieldBox | None]]:
        """``run_packed`` and, per payload, the square it cropped (``field_box``; None when rejected)."""
        done = self._run(payloads, quality=False)
        return done.pixels, done.errors, done.boxes

    def run_with_quality(self, payloads: Sequence[Payload]) -> Preprocessed:
        """``run_with_fields`` and the squares the gradability step measures (``Preprocessed.quality_planes``)."""
        return self._run(payloads, quality=True)

    def _run(self, payloads: Sequence[Payload], *, quality: bool) -> Preprocessed:
        with self._lock:
            boxes: list[FieldBox | None] = [None] * len(payloads)
            errors: list[InvalidImageError | None] = [None] * len(payloads)
            valid: list[tuple[int, np.ndarray, ImageHeader]] = []
            for i, payload in enumerate(payloads):
                array = as_uint8(payload)
                try:
                    valid.append((i, array, inspect_image(array, self.cfg)))
                except InvalidImageError as e:
                    errors[i] = e
                except Exception as e:  # noqa: BLE001 - the per-payload boundary, as in _resize_one
                    errors[i] = _decode_failure(e)
                    errors[i].__cause__ = e  # type: ignore[union-attr]
            chunks = []
            for start in range(0, len(valid), self.max_batch_size):
                chunk = valid[start : start + self.max_batch_size]
                if self.cfg.decoder == "pil_draft":
                    done = self._decode_pil([(a, h) for _, a, h in chunk], quality=quality)
                else:
                    done = self._decode_dali([a for _, a, _ in chunk])
                chunks.append(done)
                for (i, _, header), out, (fov_w, fov_h) in zip(chunk, done.decoded, done.extents, strict=True):
                    if isinstance(out, InvalidImageError):
                        errors[i] = out
                    else:
                        boxes[i] = field_box(header, fov_w, fov_h)
            joined = chunks[0] if len(chunks) == 1 else _joined(chunks, self.cfg)
            planes = joined.planes if quality and self.cfg.separate_quality_square else None
            if planes is None and quality and self.cfg.separate_quality_square:
                planes = np.empty((0, *self.cfg.quality_shape), np.uint8)
            return Preprocessed(joined.pixels, errors, boxes, planes)

    def run(self, payloads: Sequence[Payload]) -> list[np.ndarray | InvalidImageError]:
        """Preprocess encoded images; one ``(3, S, S)`` tensor or error per payload, in order."""
        tensors, errors = self.run_packed(payloads)
        accepted = iter(tensors)
        return [error if error is not None else next(accepted) for error in errors]

    def run_strict(self, payloads: Sequence[Payload]) -> np.ndarray:
        """Preprocess images that must all be valid; returns ``(B, 3, size, size)`` float32."""
        tensors, errors = self.run_packed(payloads)
        for i, error in enumerate(errors):
            if error is not None:
                raise InvalidImageError(f"image {i}: {error}") from error
        return tensors


def _joined(chunks: list[_Chunk], cfg: PreprocessCfg) -> _Chunk:
    """Decoder batches as one, in order (no chunk: an empty batch)."""
    tensors = [c.pixels for c in chunks if len(c.pixels)]
    pixels = np.concatenate(tensors) if tensors else np.empty((0, *cfg.input_shape), np.float32)
    planes = None
    if chunks and all(c.planes is not None for c in chunks):
        kept = [c.planes for c in chunks if c.planes is not None and len(c.planes)]
        planes = np.concatenate(kept) if kept else np.empty((0, *cfg.quality_shape), np.uint8)
    return _Chunk(
        pixels,
        [d for c in chunks for d in c.decoded],
        [x for c in chunks for x in c.extents],
        planes,
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
