"""The gradability measures of one graded square, over the field a grader reads (``field.find_field``).

Each photograph is measured on its own (results depend on its pixels alone, whatever the batch). ``E`` is
the expected field (the mask circle within the frame, or the frame of a frame-filling crop), ``r`` the
distance from the field's centre over its radius, ``brightest`` each pixel's brightest channel:

* ``field_px``: the field's diameter in source pixels (the circle's; a crop's inscribed circle's).
* ``field_visible``: share of the mask circle inside the frame and the square (1 for a frame-filling crop,
  the frame's lit share when no field was found).
* ``field_offset``: distance of the circle's centre from the square's centre, over its radius.
* ``masked``: 1 when the field is a camera's mask (a circle, cut or whole, or an upright ellipse), else 0.
* ``unlit``: share of ``E`` (clear of the soft rim) below the field-of-view level: lid and lash shadows,
  a field cut off by something other than the frame.
* ``blur``: how far the sharpest edges of the field -- vessel walls, the disc rim -- are spread (px), by the
  re-blur ratio: at the centre of a step blurred by sigma the gradient keeps
  ``|grad I|^2 / |grad (I * G_s0)|^2 = (t^2 + s0^2) / t^2``, ``t^2 = sigma^2 + d^2`` (``d``: the central
  difference's own spread, about 0.58 px), solved for ``t`` at each edge centre (a local maximum of the
  re-blurred gradient, above its median over the field). Per 4 x 4 cell of the square, the 10th percentile:
  its sharpest edges, which only the optics' blur can spread (vessels and lesions add their own width);
  then the median over the cells that hold edges ("half the field in focus"). At the resolution the image
  has: a field smaller than the square was upsampled into it, so ``t`` is given in source pixels
  (times ``scale`` < 1).
* ``exposure``: per 8 x 8 cells of the square over ``E``, the 90th percentile of ``brightest`` (the lit
  background, above vessels and the macula; red in a fundus, which pigment varies least); then the median
  over the cells: half of the field reaches this level or more, the other half lies below it.
* ``saturated``: share of ``E`` (r < 0.9) with a channel at 250 or above.
* ``glare``: share of ``E`` (r < 0.85) that is bluish white (blue >= red and blue > 110): corneal and lens
  reflections; every fundus structure, the pale cup and exudates included, is redder.
* ``haze``: over ``E`` (r < 0.85), the 2nd percentile of blue over its median: a veil of scattered light
  lifts the floor towards the median, where a colour cast (a gain) keeps the ratio.
* ``dust``: share of ``E`` in blob-shaped neutral shadows: red and green, each divided by its mean on the
  same ring around the field's centre (vignetting removed), both below 0.8 of their lit neighbourhood's
  (a 20% of S box) and within 0.08 of each other (dirt darkens every channel by one factor; vessels and
  haemorrhages darken green far more); on the 2 x 2 averaged square, a size band by two openings: thin
  lines (vessels, lashes) are removed by a 3 x 3 opening, and shadows a tenth of the field across or
  wider (lids, the edge of a wide-field image) by an 11 x 11 one. Not measured (0) on a two-laser
  pseudo-colour capture (blue under 2% of red), where the hue test does not hold.
* ``chroma``: how much a second colour channel carries, over the well-exposed field: the smaller of the
  mean ``(max - min) / max`` of each pixel's channels (0 when the channels are equal: a greyscale or
  grey-stored red-free photograph) and the mean second-brightest channel over the mean brightest one (0
  when one channel alone carries light: a red-free photograph stored in green). A colour fundus, pale,
  pigmented, cast or two-laser pseudo-colour, lies above 0.25; 1 when too few pixels tell.
* ``redness``: mean ``(R - B) / (R + G + B)`` over lit ``E`` (r < 0.85): a colour fundus is red-orange
  (blood and melanin absorb blue first); skin, a room or an OCT scan are not.
"""

from __future__ import annotations

import math

import numpy as np

from predilect.quality.config import MEASURES
from predilect.quality.field import CIRCLE, FILL, Field, Frame, find_field

_SIGMA0 = 1.0
_SHARPEST = 10
"""Per cell, the blur of its sharpest edges: this percentile of the edge spreads (the optics' floor)."""
_MAX_BLUR = 10.0
_FOCUS_CELLS, _EXPOSURE_CELLS = 4, 8
_MIN_EDGES = 15
_DUST_DARKER, _DUST_HUE = 0.8, 0.08
_TWO_CHANNEL = 0.02
"""A field whose blue is under 2% of its red is a two-laser pseudo-colour capture (red and green lasers, no
blue), where red and green darken together over all choroidal texture: the hue test of dust does not hold
there, and dust is not measured (0)."""
_DUST_LARGEST = 5
"""Neutral shadows that survive an opening by an 11-px square of the half-size square (a tenth of the field
across) are lids, not dust: dust is spots between 3 and 11 px there (a granulometry's band)."""
_RING_UNIT = 256


def _gaussian(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (radius 3 sigma), edges replicated."""
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = image
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in range(2)], mode="edge")
        total = np.zeros_like(out)
        for k, w in enumerate(taps):
            total += w * (padded[k : k + out.shape[0], :] if axis == 0 else padded[:, k : k + out.shape[1]])
        out = total
    return out


def _gradient2(image: np.ndarray) -> np.ndarray:
    """Squared magnitude of the central-difference gradient (zero on the border)."""
    out = np.zeros_like(image)
    gx = (image[1:-1, 2:] - image[1:-1, :-2]) * 0.5
    gy = (image[2:, 1:-1] - image[:-2, 1:-1]) * 0.5
    out[1:-1, 1:-1] = gx * gx + gy * gy
    return out


def _cell_index(size: int, cells: int) -> np.ndarray:
    """(S, S) int: the cell of a cells x cells grid each pixel lies in."""
    band = np.minimum(np.arange(size) * cells // size, cells - 1)
    return band[:, None] * cells + band[None, :]


def _edge_maxima(magnitude2: np.ndarray) -> np.ndarray:
    """(S, S) bool: pixels whose gradient is a local maximum across the row or the column (edge centres)."""
    centre = magnitude2[1:-1, 1:-1]
    across_columns = (centre >= magnitude2[1:-1, :-2]) & (centre >= magnitude2[1:-1, 2:])
    across_rows = (centre >= magnitude2[:-2, 1:-1]) & (centre >= magnitude2[2:, 1:-1])
    out = np.zeros(magnitude2.shape, dtype=bool)
    out[1:-1, 1:-1] = across_columns | across_rows
    return out


def _blur(green: np.ndarray, region: np.ndarray) -> float:
    """The ``blur`` measure (square px) of the green plane over ``region``: see the module docstring."""
    if region.sum() < 64:
        return _MAX_BLUR
    magnitude2 = _gradient2(green)
    reblurred2 = _gradient2(_gaussian(green, _SIGMA0))
    floor2 = max(float(np.percentile(reblurred2[region], 50)), 1.0)
    edges = region & _edge_maxima(reblurred2) & (reblurred2 >= floor2)
    ratio2 = magnitude2[edges] / np.maximum(reblurred2[edges], 1e-6)
    sigma = np.sqrt(np.clip(_SIGMA0**2 / np.maximum(ratio2 - 1.0, 1e-6), 0.0, _MAX_BLUR**2))
    cells = _cell_index(green.shape[0], _FOCUS_CELLS)[edges]
    sharpest = _group_percentiles(sigma, cells, _FOCUS_CELLS**2, _SHARPEST / 100.0, _MIN_EDGES)
    return float(np.median(sharpest)) if len(sharpest) else _MAX_BLUR


def _group_percentiles(values: np.ndarray, groups: np.ndarray, count: int, q: float, minimum: int) -> np.ndarray:
    """The ``q`` quantile (linear, as ``np.percentile``) of ``values`` in each of ``count`` groups holding at
    least ``minimum`` of them, in group order; one sort for all groups."""
    order = np.lexsort((values, groups))
    ordered = values[order]
    sizes = np.bincount(groups, minlength=count)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    kept = sizes >= max(minimum, 1)
    position = starts[kept] + q * (sizes[kept] - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, starts[kept] + sizes[kept] - 1)
    frac = position - low
    return ordered[low] * (1.0 - frac) + ordered[high] * frac


def _cell_quantiles(values: np.ndarray, chosen: np.ndarray, cells: int, q: float, min_share: float) -> np.ndarray:
    """The ``q`` quantile (linear) of ``values`` over the ``chosen`` pixels of each of cells x cells cells of
    the square, for the cells where at least ``min_share`` of the pixels are chosen (the others are left out)."""
    size = values.shape[0]
    side = size // cells
    span = side * cells
    blocks = np.where(chosen[:span, :span], values[:span, :span].astype(np.float64), -np.inf)
    blocks = blocks.reshape(cells, side, cells, side).transpose(0, 2, 1, 3).reshape(cells * cells, side * side)
    counts = chosen[:span, :span].reshape(cells, side, cells, side).sum(axis=(1, 3)).reshape(-1)
    ordered = np.sort(blocks, axis=1)
    kept = counts >= min_share * side * side
    if not kept.any():
        return np.zeros(0)
    ordered, counts = ordered[kept], counts[kept]
    position = side * side - counts + q * (counts - 1)  # the chosen values sort last, after the -inf
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, side * side - 1)
    rows = np.arange(len(ordered))
    frac = position - low
    return ordered[rows, low] * (1.0 - frac) + ordered[rows, high] * frac


def _exposure(brightest: np.ndarray, field: np.ndarray) -> float:
    """The ``exposure`` measure: see the module docstring."""
    levels = _cell_quantiles(brightest, field, _EXPOSURE_CELLS, 0.9, 0.5)
    return float(np.median(levels)) if len(levels) else 0.0


def _window_sums(image: np.ndarray, half: int) -> np.ndarray:
    """Sums over the (2 half + 1)-square window around each pixel of ``image`` (zero beyond it), int64."""
    size_y, size_x = image.shape
    padded = np.zeros((size_y + 2 * half + 1, size_x + 2 * half + 1), np.int64)
    np.cumsum(np.cumsum(np.pad(image.astype(np.int64), half), axis=0), axis=1, out=padded[1:, 1:])
    k = 2 * half + 1
    return padded[k:, k:] - padded[:-k, k:] - padded[k:, :-k] + padded[:-k, :-k]


def _shifted(mask: np.ndarray, combine: np.ufunc, *, outside: bool) -> np.ndarray:
    """``combine`` (np.logical_and / _or) over each pixel's 3 x 3 neighbourhood, beyond the square ``outside``."""
    padded = np.pad(mask, 1, constant_values=outside)
    out = padded[1:-1, 1:-1].copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            combine(out, padded[1 + dy : padded.shape[0] - 1 + dy, 1 + dx : padded.shape[1] - 1 + dx], out=out)
    return out


def _dust(planes: np.ndarray, field: Field, fov_threshold: int) -> float:
    """The ``dust`` measure on the 2 x 2 averaged square: see the module docstring."""
    even = planes.shape[1] - planes.shape[1] % 2
    quads = planes[:, 0:even:2, 0:even:2].astype(np.int64)
    for dy, dx in ((0, 1), (1, 0), (1, 1)):
        quads += planes[:, dy:even:2, dx:even:2]
    half_lit = quads.max(axis=0) > 4 * fov_threshold
    expected = field.expected[0:even:2, 0:even:2] & (field.distance[0:even:2, 0:even:2] < 0.96)
    if not expected.any() or quads[2][expected].mean() < _TWO_CHANNEL * quads[0][expected].mean():
        return 0.0
    size = quads.shape[1]
    c = np.arange(size) * 2 + 1.0
    rings = (np.hypot(c[None, :] - field.cx, c[:, None] - field.cy) / 2.0).astype(np.int64)
    n_rings = int(rings.max()) + 1
    picked = rings[half_lit]
    counts = np.maximum(np.bincount(picked, minlength=n_rings), 1)
    flat = np.zeros((2, size, size), np.int64)
    for channel in range(2):
        profile = np.bincount(picked, weights=quads[channel][half_lit], minlength=n_rings) / counts
        flat[channel] = np.rint(_RING_UNIT * quads[channel] / np.maximum(profile[rings], 4.0)) * half_lit
    half = max(1, size // 10)
    lit_sum = _window_sums(half_lit, half)
    ratio_r = flat[0] * lit_sum / np.maximum(_window_sums(flat[0], half), 1)
    ratio_g = flat[1] * lit_sum / np.maximum(_window_sums(flat[1], half), 1)
    solid = _shifted(_shifted(half_lit, np.logical_and, outside=False), np.logical_and, outside=False)
    shadow = solid & (ratio_r < _DUST_DARKER) & (ratio_g < _DUST_DARKER) & (np.abs(ratio_r - ratio_g) < _DUST_HUE)
    spots = _opening(shadow, 1) & ~_opening(shadow, _DUST_LARGEST)
    return float(spots[expected].mean())


def _opening(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary opening by a (2 steps + 1)-square: what is left of ``mask`` once parts narrower than it are gone."""
    out = mask
    for _ in range(steps):
        out = _shifted(out, np.logical_and, outside=True)
    for _ in range(steps):
        out = _shifted(out, np.logical_or, outside=False)
    return out


def _chroma(colours: np.ndarray) -> float:
    """The ``chroma`` measure of colours ``(3, P)``: see the module docstring."""
    if colours.shape[1] < 50:
        return 1.0
    brightest, dimmest = colours.max(axis=0), colours.min(axis=0)
    spread = float((brightest - dimmest).mean() / max(float(brightest.mean()), 1e-9))
    means = np.sort(colours.mean(axis=1))[::-1]
    second = float(means[1] / max(float(means[0]), 1e-9))
    return min(spread, second)


def measure_square(planes: np.ndarray, frame: Frame, *, fov_threshold: int) -> np.ndarray:
    """The ``MEASURES`` of one square's uint8 colour planes ``(3, S, S)`` on ``frame``: float64 ``(len(MEASURES),)``."""
    size = planes.shape[1]
    brightest = planes.max(axis=0)
    lit = brightest > fov_threshold
    field = find_field(lit, frame)
    expected, distance = field.expected, field.distance
    if field.shape == CIRCLE:
        visible = float(expected.sum()) / (math.pi * field.rx * field.ry)
        offset = math.hypot(field.cx - size / 2.0, field.cy - size / 2.0) / field.radius
    else:
        in_frame = expected
        visible = 1.0 if field.shape == FILL else float(lit[in_frame].mean()) if in_frame.any() else 0.0
        offset = 0.0
    rim = 2.0 / field.short_radius
    clear = expected & (distance < 1.0 - rim)
    if field.shape != CIRCLE:
        clear = expected & _inset(frame, size, 2.0)
    unlit = 1.0 - float(lit[clear].mean()) if clear.any() else 1.0
    margin = 6.0
    focus_region = lit & expected & (distance < 1.0 - margin / field.short_radius) & _inset(frame, size, margin)
    blur = _blur(planes[1].astype(np.float32), focus_region) * min(1.0, frame.scale)
    exposure = _exposure(brightest, expected)
    near = expected & (distance < 0.9)
    inner = expected & (distance < 0.85)
    saturated = float((brightest[near] >= 250).mean()) if near.any() else 0.0
    red, green, blue = (planes[c].astype(np.float32) for c in range(3))
    glare = float(((blue >= red) & (blue > 110))[inner].mean()) if inner.any() else 0.0
    inner_lit = inner & lit
    haze = float(np.percentile(blue[inner_lit], 2) / (np.median(blue[inner_lit]) + 1.0)) if inner_lit.any() else 0.0
    dust = _dust(planes, field, fov_threshold)
    exposed = (near & lit & (brightest >= 40) & (brightest <= 245))[::2, ::2]
    chroma = _chroma(planes[:, ::2, ::2][:, exposed].astype(np.float64))
    redness = float(((red - blue) / (red + green + blue + 1.0))[inner_lit].mean()) if inner_lit.any() else 0.0
    values = {
        "field_px": 2.0 * field.short_radius * frame.scale,
        "field_visible": visible,
        "field_offset": offset,
        "masked": 1.0 if field.shape == CIRCLE else 0.0,
        "unlit": unlit,
        "blur": blur,
        "exposure": exposure,
        "saturated": saturated,
        "glare": glare,
        "haze": haze,
        "dust": dust,
        "chroma": chroma,
        "redness": redness,
    }
    return np.array([values[m] for m in MEASURES], dtype=np.float64)


def _inset(frame: Frame, size: int, margin: float) -> np.ndarray:
    """(S, S) bool: pixels at least ``margin`` px inside the frame (and the square)."""
    inner = Frame(
        left=frame.left + margin,
        top=frame.top + margin,
        right=frame.right - margin,
        bottom=frame.bottom - margin,
        scale=frame.scale,
    )
    return inner.mask(size)
