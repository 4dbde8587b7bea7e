"""The ``pil_draft`` decoder (the CPU default): libjpeg-turbo's DCT-scaled decode, then NumPy and Pillow.

JPEGs are decoded by libjpeg-turbo through simplejpeg at the smallest DCT scale (1/2, 1/4, 1/8,
the scale Pillow's ``draft`` picks) that still leaves the field-of-view square at least
``cfg.decode_px`` pixels (neither the model square nor the quality square is upsampled): the
pixels Pillow's draft mode gives, bit for bit, and with ``strict`` decoding, so that corrupt or
premature scan data is an error, not a grey-filled image. PNGs are decoded by Pillow at full
resolution. The field of view is found on the decoded frame by two max-projections; the crop +
resize is one Pillow call on the square; normalisation is one lookup-table gather per channel,
written straight into the batch tensor. Each image is processed on its own, so results cannot
depend on the batch; libjpeg and Pillow's resize release the GIL, so a small thread pool
overlaps them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Union

import numpy as np
import simplejpeg
from PIL import Image, ImageOps

from predilect.preprocess.budget import PixelBudget
from predilect.preprocess.config import PreprocessCfg
from predilect.preprocess.decoders import DecodedBatch, Sniffed
from predilect.preprocess.result import InvalidImageError, crop_side, decode_failure, fov_error
from predilect.preprocess.sniff import ImageHeader

_PIL_FILTERS = {
    "linear": Image.Resampling.BILINEAR,
    "cubic": Image.Resampling.BICUBIC,
    "lanczos3": Image.Resampling.LANCZOS,
    "triangular": Image.Resampling.BILINEAR,
}


def draft_scale(width: int, height: int, request_px: int) -> int:
    """The DCT scale denominator (1, 2, 4 or 8) that Pillow's ``draft`` picks for ``request_px`` a side."""
    scale = min(width // request_px, height // request_px)
    return next((a for a in (8, 4, 2, 1) if scale >= a), 1)


# EXIF orientation -> numpy view of the stored pixels as they are meant to be seen
# (Pillow's ``ImageOps.exif_transpose`` table: 2 mirror, 3 rotate 180, 4 flip, 5 transpose,
# 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise).
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
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
    a = draft_scale(header.width, header.height, request_px)
    # min_width/min_height of exactly ceil(side / a) select the 1/a scale among libjpeg-turbo's M/8 factors.
    rgb: np.ndarray = simplejpeg.decode_jpeg(
        data,
        colorspace="RGB",
        min_width=-(-header.width // a),
        min_height=-(-header.height // a),
        strict=True,
    )
    return rgb


def _decode_png(data: np.ndarray) -> np.ndarray:
    """RGB pixels of an 8-bit PNG: greyscale and palette expand exactly; alpha must be fully opaque."""
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


def _fov_extent(rgb: np.ndarray, threshold: int) -> tuple[int, int]:
    """Columns and rows holding any pixel brighter than the black mask (as the DALI graph).

    Exactly ``(rgb.max(axis=2) > threshold).any(axis=0 / 1).sum()``, as two max-projections
    (over rows, then over columns) that numpy vectorises, instead of a per-pixel channel max.
    """
    height, width = rgb.shape[:2]
    columns = rgb.max(axis=0).reshape(width, -1).max(axis=1) > threshold
    rows = rgb.reshape(height, -1).max(axis=1) > threshold
    return int(np.count_nonzero(columns)), int(np.count_nonzero(rows))


def _crop_square(rgb: np.ndarray, side: int) -> Image.Image:
    """The centred ``side`` square of ``rgb`` (black outside the frame), as a Pillow image."""
    height, width = rgb.shape[:2]
    left, top = (width - side) // 2, (height - side) // 2
    return Image.fromarray(rgb).crop((left, top, left + side, top + side))  # pads with black outside


def _resized(square: Image.Image, side_px: int, cfg: PreprocessCfg) -> np.ndarray:
    """``square`` resized to ``side_px`` a side with ``cfg``'s filter: HxWx3 uint8."""
    return np.asarray(square.resize((side_px, side_px), _PIL_FILTERS[cfg.interpolation], reducing_gap=None))


@dataclass(frozen=True)
class DraftField:
    """One image decoded at its draft scale and its field of view measured there.

    ``rgb``: the decoded frame (DCT-scaled JPEG, full-resolution PNG; EXIF orientation applied);
    ``side_px``: the side on ``rgb`` of the square to crop (``result.crop_side``); ``fov``: the field
    of view's (width, height), ``frame``: the photograph's (width, height) and ``side``: the crop's
    side, all in full-resolution source pixels as displayed.
    """

    rgb: np.ndarray
    side_px: int
    fov: tuple[float, float]
    frame: tuple[float, float]
    side: float


CORNER = 0.02
"""The corner patches that say whether the field fills the frame, in frame sides (at least 2 px)."""


def fills_frame(rgb: np.ndarray, threshold: int) -> bool:
    """Whether the lit field reaches all four corners of the frame (a crop inside the field): each corner
    patch mostly brighter than the black mask, so burned-in text on a black corner does not count."""
    height, width = rgb.shape[:2]
    k = max(2, round(CORNER * min(width, height)))
    patches = (rgb[:k, :k], rgb[:k, -k:], rgb[-k:, :k], rgb[-k:, -k:])
    return all(float((patch.max(axis=2) > threshold).mean()) > 0.5 for patch in patches)


def first_request_px(cfg: PreprocessCfg, field_angle_deg: float | None) -> int:
    """The side the first DCT-scaled decode asks for: the square to crop reaches ``cfg.decode_px`` when the
    field spans the frame (a finer decode follows where it spans less)."""
    return max(1, math.ceil(cfg.decode_px / cfg.crop_scale(field_angle_deg)))


def draft_field(
    data: np.ndarray, cfg: PreprocessCfg, header: ImageHeader, *, field_angle_deg: float | None = None
) -> DraftField:
    """Decode at the smallest DCT scale that leaves the square to crop at least ``cfg.decode_px`` and
    measure the field of view there: the one measurement every decoder crops by (the DALI graph takes
    it as an input). ``field_angle_deg``: the camera's (``PreprocessCfg.crop_scale``). Raises the
    decoder's ``ValueError``/``OSError`` (or ``InvalidImageError``) when the bytes do not decode cleanly."""
    full_w, full_h = (header.height, header.width) if header.orientation >= 5 else (header.width, header.height)
    scale = cfg.crop_scale(field_angle_deg)
    target = cfg.decode_px
    request_px = first_request_px(cfg, field_angle_deg)
    while True:
        rgb = decode_rgb(data, header, request_px)
        height, width = rgb.shape[:2]
        if header.format == "png":  # decoded at full resolution, EXIF orientation applied by Pillow
            full_w, full_h = width, height
        fov_w, fov_h = _fov_extent(rgb, cfg.fov_threshold)
        fills = cfg.field_angle_deg is not None and fills_frame(rgb, cfg.fov_threshold)
        side = crop_side(fov_w, fov_h, fills_frame=fills, scale=scale)
        if side >= target or side == 0 or (width, height) == (full_w, full_h):
            break
        # The square fills less of the frame than the first guess assumed: decode one scale finer.
        request_px = max(math.ceil(min(width, height) * target / side), min(width, height) + 1)
    fov = (fov_w * full_w / width, fov_h * full_h / height)
    side_src = side * full_w / width
    # A narrow field angle pads the field with black: bound that canvas by the old worst case (a square of
    # the frame's longer side) or the decoded-pixel limit, so no request parameter can ask for more memory.
    if side_src**2 > max(cfg.max_pixels, max(full_w, full_h) ** 2):
        raise InvalidImageError(
            f"a field angle of {field_angle_deg:g} degrees would pad this {full_w}x{full_h} photograph to a "
            f"{side_src:.0f}-px square; is the angle the camera's?"
        )
    return DraftField(rgb, max(1, round(side)), fov, (float(full_w), float(full_h)), side_src)


@dataclass(frozen=True)
class Squares:
    """One image through the ``pil_draft`` steps up to the resized squares (HxWx3 uint8).

    ``model``: the model input's square; ``quality``: the same crop at ``cfg.quality_size`` (or None);
    ``fov``, ``frame`` and ``side``: as ``DraftField``'s.
    """

    model: np.ndarray
    quality: np.ndarray | None
    fov: tuple[float, float]
    frame: tuple[float, float]
    side: float


def squares(
    data: np.ndarray,
    cfg: PreprocessCfg,
    header: ImageHeader,
    *,
    quality: bool = False,
    field_angle_deg: float | None = None,
) -> Squares:
    """The ``pil_draft`` steps on one encoded image up to its resized squares.

    Both squares are resized from the one crop of the one decoded frame (``draft_field``); the quality
    square only with ``quality`` and ``cfg.separate_quality_square``. The JPEG is DCT-scaled for
    ``cfg.decode_px`` whether or not the quality square is asked for, so the model square does not
    depend on it.
    """
    field = draft_field(data, cfg, header, field_angle_deg=field_angle_deg)
    square = _crop_square(field.rgb, field.side_px)
    graded = _resized(square, cfg.quality_size, cfg) if quality and cfg.separate_quality_square else None
    return Squares(_resized(square, cfg.size, cfg), graded, field.fov, field.frame, field.side)


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


_Outcome = tuple[Union[Squares, InvalidImageError], tuple[float, float], tuple[float, float], float]


def _decoded_pixels(header: ImageHeader, request_px: int) -> int:
    """The pixels of the frame a decode holds: a PNG at full size, a JPEG at its first DCT scale."""
    if header.format == "png":
        return header.width * header.height
    scale = draft_scale(header.width, header.height, request_px)
    return -(-header.width // scale) * -(-header.height // scale)


class PilDraftDecoder:
    """The ``pil_draft`` backend: each image on its own, ``num_threads`` at a time, within a budget of
    ``cfg.max_pixels`` decoded pixels at once (the largest frame accepted: a frame that large is
    decoded alone; camera frames, DCT-scaled, many at a time)."""

    def __init__(self, cfg: PreprocessCfg, *, num_threads: int) -> None:
        self.cfg = cfg
        self.budget = PixelBudget(cfg.max_pixels)
        self._normaliser = Normaliser.of(cfg)
        self._pool = (
            ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="predilect-decode")
            if num_threads > 1
            else None
        )

    def _one(self, item: Sniffed, quality: bool) -> _Outcome:
        """One payload to its squares, or the reason it is refused; its FOV and frame extents, its crop's side."""
        try:
            with self.budget.hold(_decoded_pixels(item.header, first_request_px(self.cfg, item.field_angle_deg))):
                done = squares(item.data, self.cfg, item.header, quality=quality, field_angle_deg=item.field_angle_deg)
        except InvalidImageError as e:
            return e, (0.0, 0.0), (0.0, 0.0), 0.0
        # The per-payload boundary: whatever the decoder raises on these bytes (libjpeg's
        # corrupt-data warnings made errors, Pillow's format errors, a bomb guard) belongs to
        # this payload alone and becomes its rejection, with the cause named and chained.
        except Exception as e:  # noqa: BLE001 - see above; the type and message are kept
            return decode_failure(e), (0.0, 0.0), (0.0, 0.0), 0.0
        refused = fov_error(self.cfg, *done.fov)
        return (refused if refused is not None else done), done.fov, done.frame, done.side

    def decode(self, batch: Sequence[Sniffed], *, quality: bool) -> DecodedBatch:
        if self._pool is None or len(batch) <= 1:
            results = [self._one(item, quality) for item in batch]
        else:
            results = list(self._pool.map(lambda item: self._one(item, quality), batch))
        accepted = [r[0] for r in results if isinstance(r[0], Squares)]
        pixels = np.empty((len(accepted), *self.cfg.input_shape), np.float32)
        if accepted:
            self._normaliser.into(np.stack([done.model for done in accepted]), pixels)
        planes = None
        if quality and self.cfg.separate_quality_square:
            graded = [done.quality for done in accepted if done.quality is not None]
            planes = np.empty((len(graded), *self.cfg.quality_shape), np.uint8)
            if graded:
                planes[...] = np.stack(graded).transpose(0, 3, 1, 2)
        errors = [r[0] if isinstance(r[0], InvalidImageError) else None for r in results]
        return DecodedBatch(
            pixels, errors, [r[1] for r in results], [r[2] for r in results], planes, [r[3] for r in results]
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def open_decoder(
    cfg: PreprocessCfg, *, max_batch_size: int, num_threads: int, device_id: int | None
) -> PilDraftDecoder:
    """The ``pil_draft`` backend of ``cfg`` (``max_batch_size`` and ``device_id`` do not apply to it)."""
    del max_batch_size, device_id
    return PilDraftDecoder(cfg, num_threads=num_threads)
