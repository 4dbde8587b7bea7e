"""Heatmap overlays: each positive finding's map (attention or evidence) drawn over the original photograph, as PNG.

The heatmap (``ScreeningResult.heatmaps``) covers the square the model screened, whose place on
the photograph the server returns (``ScreeningResult.field_box``); it is upsampled bilinearly
onto that square, normalised to its peak, coloured, blended over the photograph where the map is
high, and its peak is ringed; a band above names the finding and its probability, and the colour
scale is drawn on the right. Decoding and resizing need Pillow, from the optional ``[report]`` extra
(``pip install 'predilect[report]'``), imported on first use: the thin client never loads it.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from predilect.client.errors import ReportSupportMissingError
from predilect.client.inputs import ImageInput
from predilect.client.results import FieldBox, Heatmap, ScreeningResult
from predilect.png import encode_png

_MAX_ALPHA = 0.6
# A perceptually ordered dark-blue -> cyan -> yellow -> red ramp (anchor colours, linearly interpolated).
_RAMP = np.array([[48, 18, 59], [40, 120, 240], [30, 210, 200], [160, 250, 70], [250, 190, 40], [200, 30, 10]], float)


def pillow() -> Any:
    """The ``PIL.Image`` module, or ReportSupportMissingError saying how to install it."""
    try:
        from PIL import Image
    except ImportError as e:
        raise ReportSupportMissingError(
            "heatmap overlays and reports need the optional extra: pip install 'predilect[report]'"
        ) from e
    return Image


def decode_photograph(payload: bytes) -> np.ndarray:
    """The HxWx3 uint8 RGB pixels of an encoded photograph, EXIF orientation applied (as the server sees it)."""
    image_module = pillow()
    from PIL import ImageOps

    with image_module.open(io.BytesIO(payload)) as opened:
        return np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))


def _ramp_table() -> np.ndarray:
    """The ramp sampled at 256 levels, uint8 ``(256, 3)``."""
    position = np.linspace(0.0, len(_RAMP) - 1, 256)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    fraction = (position - low)[:, None]
    return (_RAMP[low] * (1 - fraction) + _RAMP[low + 1] * fraction).round().astype(np.uint8)


_TABLE = _ramp_table()


def colourise(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB along the ramp (256 levels), shape ``values.shape + (3,)``."""
    return _TABLE[(np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)]


def _box_pixels(box: FieldBox, width: int, height: int) -> tuple[int, int, int, int]:
    left, top, right, bottom = box
    return (round(left * width), round(top * height), round(right * width), round(bottom * height))


def heat_on_photograph(grid: np.ndarray, box: FieldBox, width: int, height: int) -> np.ndarray:
    """The heatmap, normalised to its peak, resampled onto a ``height`` x ``width`` photograph (0 outside the box)."""
    image_module = pillow()
    x0, y0, x1, y1 = _box_pixels(box, width, height)
    side_x, side_y = max(1, x1 - x0), max(1, y1 - y0)
    peak = float(grid.max())
    normalised = (grid / peak if peak > 0 else grid).astype(np.float32)
    square = np.asarray(
        image_module.fromarray(normalised, mode="F").resize((side_x, side_y), image_module.Resampling.BILINEAR)
    )
    heat = np.zeros((height, width), np.float32)
    # The square may reach past the photograph (the crop was padded): paste only the overlap.
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if cx1 > cx0 and cy1 > cy0:
        heat[cy0:cy1, cx0:cx1] = square[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return heat


def shrink(photograph: np.ndarray, *, max_side_px: int = 1024) -> np.ndarray:
    """The photograph downscaled (antialiased) so that its longer side is at most ``max_side_px``."""
    image_module = pillow()
    image = image_module.fromarray(photograph)
    if max(image.size) > max_side_px:
        image.thumbnail((max_side_px, max_side_px), image_module.Resampling.LANCZOS)
    return np.asarray(image)


def _font(size_px: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size_px)


def render_overlay(
    photograph: np.ndarray,
    heatmap: Heatmap,
    box: FieldBox,
    *,
    label: str | None = None,
    probability: float | None = None,
    max_side_px: int = 1024,
) -> bytes:
    """PNG bytes: ``photograph`` (HxWx3 uint8) with ``heatmap`` blended over it, its peak ringed, a title band
    (``label``, default the disease id, and the finding's ``probability``) and the colour scale it was drawn with."""
    image_module = pillow()
    from PIL import ImageDraw

    rgb = shrink(photograph, max_side_px=max_side_px).astype(np.float32)
    height, width = rgb.shape[:2]
    heat = heat_on_photograph(heatmap.array, box, width, height)
    alpha = (_MAX_ALPHA * heat)[..., None]
    blended = (rgb * (1 - alpha) + colourise(heat) * alpha + 0.5).astype(np.uint8)
    text_px = max(14, round(min(width, height) / 28))
    band = text_px * 2
    scale_width = max(12, text_px)
    canvas = image_module.new("RGB", (width, height + band), (20, 20, 20))
    canvas.paste(image_module.fromarray(blended), (0, band))
    draw = ImageDraw.Draw(canvas)
    x, y = heatmap.peak[0] * width, heatmap.peak[1] * height + band
    radius = max(6, round(0.03 * min(width, height)))
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=(255, 255, 255), width=max(2, radius // 4))
    title = label or heatmap.disease
    if probability is not None:
        title += f"  p = {probability:.2f}"
    draw.text((text_px // 2, band // 2), title, fill=(255, 255, 255), font=_font(text_px), anchor="lm")
    # The colour scale, top = the map's peak, bottom = 0 (the map is drawn relative to its own peak).
    left, top = width - scale_width - text_px // 2, band + text_px
    bottom = band + height - text_px
    ramp = colourise(np.linspace(1.0, 0.0, max(2, bottom - top))[:, None].repeat(scale_width, axis=1))
    canvas.paste(image_module.fromarray(ramp), (left, top))
    draw.rectangle((left, top, left + scale_width, bottom), outline=(255, 255, 255))
    small = _font(max(12, text_px * 3 // 4))
    draw.text((left - 4, top), "peak", fill=(255, 255, 255), font=small, anchor="ra", stroke_width=2, stroke_fill=0)
    draw.text((left - 4, bottom), "0", fill=(255, 255, 255), font=small, anchor="rd", stroke_width=2, stroke_fill=0)
    return encode_png(np.asarray(canvas), compression_level=3)


def overlay_name(key: str, frame: int | None, disease: str) -> str:
    """A file name unique per input, frame and disease: ``<stem>-<key hash>[-f<frame>]-<disease>.png``."""
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(key).stem)[:60] or "image"
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return f"{stem}-{digest}{f'-f{frame}' if frame is not None else ''}-{disease}.png"


def write_overlays(
    key: str,
    source: ImageInput,
    results: Sequence[ScreeningResult],
    out_dir: Path,
    *,
    names: Mapping[str, str] | None = None,
    relative_to: Path | None = None,
) -> list[ScreeningResult]:
    """Render every heatmap of ``results`` (the frames of one input) over its photograph into ``out_dir``,
    titled with the disease's name (``names``: catalog id -> name) and probability; the results with each
    heatmap's ``overlay`` set to the file written (relative to ``relative_to`` when given, else absolute)."""
    from predilect.client.inputs import prepare

    if not any(r.heatmaps for r in results):
        return list(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = {r.frame for r in results if r.heatmaps}
    photographs = {p.frame: shrink(decode_photograph(p.payload)) for p in prepare(source) if p.frame in wanted}
    updated = []
    for result in results:
        if not result.heatmaps or result.field_box is None:
            updated.append(result)
            continue
        maps = []
        for heatmap in result.heatmaps:
            path = out_dir / overlay_name(key, result.frame, heatmap.disease)
            label = (names or {}).get(heatmap.disease, heatmap.disease)
            probability = result.scores.get(heatmap.disease)
            png = render_overlay(
                photographs[result.frame], heatmap, result.field_box, label=label, probability=probability
            )
            path.write_bytes(png)
            where = os.path.relpath(path.resolve(), relative_to.resolve()) if relative_to else str(path.resolve())
            maps.append(heatmap.model_copy(update={"overlay": where}))
        updated.append(result.model_copy(update={"heatmaps": maps}))
    return updated
