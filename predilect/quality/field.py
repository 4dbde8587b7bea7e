"""Where the field of view lies on the graded square: a camera's circular mask, cut or whole, or a frame-filling crop.

A fundus camera lights a disc of retina; its sensor frame may hold the whole disc (a circle on black),
cut it at the top and bottom (a 3:2 frame), or lie inside it (a frame-filling crop, no mask edge at
all); some cameras add a notch on the rim, and burned-in text in the black. Preprocessing centres the
square it cuts on the frame and sizes it to the lit extent, so the square shows the frame (``Frame``:
where the frame ends, from the field box and frame size preprocessing reports) and, inside it, the lit
field. ``find_field`` reads the circle from the field's *edges inside the frame*: per row and per column,
the ends of the longest lit run (text is a separate, shorter run), dropping ends on the frame's own edge
(where the sensor, not the mask, cut the field). A circle is fitted to those points by RANSAC (three-point
circles, the one most points lie on within 1.5 px, then least squares on its inliers), so a notch, text,
a lid shadow or a flat cut are outliers that do not move it. It is accepted as the camera's mask when its
edge is seen along at least ``MIN_SUPPORT`` of its circumference, its inside is mostly lit (not a
pupil-like hole) and the frame outside it mostly dark (a mask, not a lit scene); otherwise the field is
a frame-filling crop when the frame is lit almost everywhere (``FILL_LIT``), else no field was found.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

CIRCLE, FILL, NONE = "circle", "fill", "none"
MIN_RADIUS, MAX_RADIUS = 0.25, 1.5
"""Radii of an acceptable mask circle, in square sides: the field spans the square (it is cut to the lit
extent) unless burned-in text widened that extent."""
MIN_RUN = 8
"""Lit runs shorter than this (px) are specks or text strokes, never the field."""
INLIER_PX = 1.5
MIN_SUPPORT = 0.2
"""The circle's edge must be seen along this share of its circumference (boundary points per pixel of arc,
from rows and columns together, average 4/pi: see ``_support``)."""
FILL_LIT = 0.85
EDGE_PX = 2.0
"""Ends of lit runs within this distance of the frame's edge are cuts by the frame, not the mask."""
MAX_ASPECT = 1.6
"""The most elongated mask accepted (a wide-field camera's ellipse is about 1.25)."""
RANSAC_TRIES = 128
_SCORED_POINTS = 240
"""RANSAC scores each candidate circle on at most this many of the points, evenly taken."""


@dataclass(frozen=True)
class Frame:
    """The photograph's frame on the graded square (pixels of the square) and its scale: source pixels per
    square pixel. Without context (``whole``), the square is the frame and each pixel a source pixel."""

    left: float
    top: float
    right: float
    bottom: float
    scale: float

    @classmethod
    def whole(cls, size: int) -> Frame:
        return cls(0.0, 0.0, float(size), float(size), 1.0)

    @classmethod
    def from_box(cls, box: tuple[float, float, float, float], frame_px: tuple[float, float], size: int) -> Frame:
        """From the square's field box (normalised over the frame, ``FIELD_BOX``) and the frame's (width, height)."""
        left, top, right, bottom = (float(v) for v in box)
        width, height = (float(v) for v in frame_px)
        span_x, span_y = max(right - left, 1e-9), max(bottom - top, 1e-9)
        return cls(
            left=max(0.0, -left / span_x * size),
            top=max(0.0, -top / span_y * size),
            right=min(float(size), (1.0 - left) / span_x * size),
            bottom=min(float(size), (1.0 - top) / span_y * size),
            scale=span_x * width / size,
        )

    def mask(self, size: int) -> np.ndarray:
        """(S, S) bool: square pixels whose centre lies inside the frame."""
        c = np.arange(size) + 0.5
        xs = (c >= self.left) & (c < self.right)
        ys = (c >= self.top) & (c < self.bottom)
        return ys[:, None] & xs[None, :]


@dataclass(frozen=True)
class Field:
    """The field of view found on one square: its ``shape`` (``CIRCLE``: a camera's mask, a circle or an
    upright ellipse; ``FILL`` or ``NONE``), the mask (centre and semi-axes in square px; for a fill or none,
    the inscribed circle of the lit frame), ``expected`` (the pixels a grader reads: the mask within the
    frame, or the frame), ``distance`` (the elliptical radius: 1 on the mask's edge) and ``support`` (share
    of the mask's edge seen)."""

    shape: str
    cx: float
    cy: float
    rx: float
    ry: float
    expected: np.ndarray
    distance: np.ndarray
    support: float
    frame: Frame

    @property
    def radius(self) -> float:
        """The mask's size as one radius: the geometric mean of its semi-axes (the circle's radius)."""
        return math.sqrt(self.rx * self.ry)

    @property
    def short_radius(self) -> float:
        return min(self.rx, self.ry)


def _longest_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``mask`` (H, W): start and stop (exclusive) of its longest True run; 0, 0 when none."""
    height, width = mask.shape
    padded = np.zeros((height, width + 2), np.int8)
    padded[:, 1:-1] = mask
    steps = np.diff(padded, axis=1)
    rows, starts = np.nonzero(steps == 1)
    _, stops = np.nonzero(steps == -1)
    start, stop = np.zeros(height, np.int64), np.zeros(height, np.int64)
    if len(rows):
        order = np.lexsort((-(stops - starts), rows))
        first_rows, first = np.unique(rows[order], return_index=True)
        start[first_rows] = starts[order][first]
        stop[first_rows] = stops[order][first]
    return start, stop


def edge_points(lit: np.ndarray, frame: Frame) -> np.ndarray:
    """(P, 2) float x, y: ends of the longest lit run of each row and column, off the frame's edges."""
    size = lit.shape[0]
    centres = np.arange(size) + 0.5
    points = []
    for transposed in (False, True):
        mask = lit.T if transposed else lit
        low_edge, high_edge = (frame.top, frame.bottom) if transposed else (frame.left, frame.right)
        start, stop = _longest_runs(mask)
        long_enough = (stop - start) >= MIN_RUN
        for ends, keep in (
            (start, start > low_edge + EDGE_PX),
            (stop, stop < high_edge - EDGE_PX),
        ):
            chosen = long_enough & keep
            along, across = ends[chosen].astype(np.float64), centres[chosen]
            points.append(np.stack([across, along], axis=1) if transposed else np.stack([along, across], axis=1))
    return np.concatenate(points) if points else np.zeros((0, 2))


def _circles(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Circumcircles (cx, cy, r) of point triples (K, 2) each; r is inf for collinear triples."""
    ax, ay, bx, by, cx, cy = a[:, 0], a[:, 1], b[:, 0], b[:, 1], c[:, 0], c[:, 1]
    d = 2.0 * (ax * (by - cy) + bx * (cy - ay) + cx * (ay - by))
    safe = np.where(np.abs(d) < 1e-9, np.nan, d)
    a2, b2, c2 = ax * ax + ay * ay, bx * bx + by * by, cx * cx + cy * cy
    ux = (a2 * (by - cy) + b2 * (cy - ay) + c2 * (ay - by)) / safe
    uy = (a2 * (cx - bx) + b2 * (ax - cx) + c2 * (bx - ax)) / safe
    r = np.hypot(ax - ux, ay - uy)
    return ux, uy, np.where(np.isfinite(r), r, np.inf)


def _least_squares(points: np.ndarray) -> tuple[float, float, float]:
    """The algebraic (Kasa) least-squares circle through ``points``."""
    x, y = points[:, 0], points[:, 1]
    design = np.stack([x, y, np.ones_like(x)], axis=1)
    (d, e, f), *_ = np.linalg.lstsq(design, x * x + y * y, rcond=None)
    cx, cy = d / 2.0, e / 2.0
    return float(cx), float(cy), float(math.sqrt(max(f + cx * cx + cy * cy, 0.0)))


def fit_circle(points: np.ndarray, size: int) -> tuple[float, float, float, int] | None:
    """The circle most ``points`` lie on (RANSAC, then least squares on its inliers): cx, cy, r, inliers."""
    if len(points) < 12:
        return None
    rng = np.random.default_rng(0)  # the same draws for every image: results depend on the image alone
    picks = rng.integers(0, len(points), size=(RANSAC_TRIES, 3))
    ux, uy, r = _circles(points[picks[:, 0]], points[picks[:, 1]], points[picks[:, 2]])
    valid = (r >= MIN_RADIUS * size) & (r <= MAX_RADIUS * size)
    valid &= (ux > -0.5 * size) & (ux < 1.5 * size) & (uy > -0.5 * size) & (uy < 1.5 * size)
    if not valid.any():
        return None
    ux, uy, r = ux[valid], uy[valid], r[valid]
    scored = points[:: max(1, len(points) // _SCORED_POINTS)]
    distances = np.hypot(scored[None, :, 0] - ux[:, None], scored[None, :, 1] - uy[:, None])
    counts = (np.abs(distances - r[:, None]) < INLIER_PX).sum(axis=1)
    best = int(np.argmax(counts))
    circle = (float(ux[best]), float(uy[best]), float(r[best]))
    for tolerance in (INLIER_PX, 2.0 * INLIER_PX / 1.5):
        inliers = np.abs(np.hypot(points[:, 0] - circle[0], points[:, 1] - circle[1]) - circle[2]) < tolerance
        if inliers.sum() < 12:
            return None
        circle = _least_squares(points[inliers])
    inliers = np.abs(np.hypot(points[:, 0] - circle[0], points[:, 1] - circle[1]) - circle[2]) < INLIER_PX
    return (*circle, int(inliers.sum()))


def _support(inliers: int, rx: float, ry: float) -> float:
    """Share of the edge seen: rows and columns each give a point per pixel they cross, on average 4/pi points
    per pixel of arc over all directions (Ramanujan's perimeter of the ellipse)."""
    a, b = max(rx, 1.0), max(ry, 1.0)
    perimeter = math.pi * (3.0 * (a + b) - math.sqrt((3.0 * a + b) * (a + 3.0 * b)))
    return inliers / (4.0 / math.pi * perimeter)


def _distance(size: int, cx: float, cy: float, rx: float, ry: float | None = None) -> np.ndarray:
    c = np.arange(size, dtype=np.float32) + np.float32(0.5)
    dx2 = np.square((c - np.float32(cx)) / np.float32(max(rx, 1e-9)))
    dy2 = np.square((c - np.float32(cy)) / np.float32(max(ry if ry is not None else rx, 1e-9)))
    return np.sqrt(dy2[:, None] + dx2[None, :])


def _ellipse_params(coefficients: np.ndarray, shift: float) -> tuple[np.ndarray, ...]:
    """Centres and semi-axes of upright ellipses ``A x^2 + C y^2 + D x + E y = 1`` (coordinates less ``shift``);
    NaN where the conic is no ellipse."""
    a, c, d, e = (coefficients[..., i] for i in range(4))
    with np.errstate(divide="ignore", invalid="ignore"):
        cx, cy = -d / (2.0 * a), -e / (2.0 * c)
        constant = 1.0 + d * d / (4.0 * a) + e * e / (4.0 * c)
        rx, ry = np.sqrt(constant / a), np.sqrt(constant / c)
    ok = (a > 0) & (c > 0) & (constant > 0)
    return (
        np.where(ok, cx + shift, np.nan),
        np.where(ok, cy + shift, np.nan),
        np.where(ok, rx, np.nan),
        np.where(ok, ry, np.nan),
    )


def fit_ellipse(points: np.ndarray, size: int) -> tuple[float, float, float, float, int] | None:
    """The upright ellipse most ``points`` lie on (RANSAC over four-point ellipses, then least squares on the
    inliers): cx, cy, rx, ry, inliers. For masks that are not circles (a wide-field camera's ellipse)."""
    if len(points) < 16:
        return None
    shift = size / 2.0
    x, y = points[:, 0] - shift, points[:, 1] - shift
    design = np.stack([x * x, y * y, x, y], axis=1)
    rng = np.random.default_rng(1)
    picks = rng.integers(0, len(points), size=(RANSAC_TRIES, 4))
    systems = design[picks]
    solvable = np.abs(np.linalg.det(systems)) > 1e-6
    if not solvable.any():
        return None
    coefficients = np.linalg.solve(systems[solvable], np.ones((int(solvable.sum()), 4, 1)))[..., 0]
    cx, cy, rx, ry = _ellipse_params(coefficients, shift)
    aspect = np.maximum(rx, ry) / np.minimum(rx, ry)
    valid = np.isfinite(rx) & np.isfinite(ry) & (np.minimum(rx, ry) >= MIN_RADIUS * size)
    valid &= (np.maximum(rx, ry) <= MAX_RADIUS * size) & (aspect <= MAX_ASPECT)
    if not valid.any():
        return None
    cx, cy, rx, ry = cx[valid], cy[valid], rx[valid], ry[valid]
    scored = points[:: max(1, len(points) // _SCORED_POINTS)]

    def residuals(px: np.ndarray, py: np.ndarray, ux: Any, uy: Any, ax: Any, ay: Any) -> Any:
        r = np.sqrt(np.square((px - ux) / ax) + np.square((py - uy) / ay))
        return np.abs(r - 1.0) * np.sqrt(ax * ay)

    counts = (
        residuals(scored[None, :, 0], scored[None, :, 1], cx[:, None], cy[:, None], rx[:, None], ry[:, None])
        < INLIER_PX
    ).sum(axis=1)
    best = int(np.argmax(counts))
    fit = (float(cx[best]), float(cy[best]), float(rx[best]), float(ry[best]))
    for _ in range(2):
        inliers = residuals(points[:, 0], points[:, 1], *fit) < 2.0 * INLIER_PX / 1.5
        if inliers.sum() < 16:
            return None
        (coef, *_) = np.linalg.lstsq(design[inliers], np.ones(int(inliers.sum())), rcond=None)
        ux, uy, ax, ay = (float(v) for v in _ellipse_params(coef, shift))
        if not all(math.isfinite(v) for v in (ux, uy, ax, ay)):
            return None
        fit = (ux, uy, ax, ay)
    inliers = residuals(points[:, 0], points[:, 1], *fit) < INLIER_PX
    return (*fit, int(inliers.sum()))


def _mask(lit: np.ndarray, in_frame: np.ndarray, frame: Frame, fit: tuple[float, ...] | None) -> Field | None:
    """The mask ``fit`` (cx, cy, rx, ry, inliers) describes, if its edge is seen enough, its inside is lit and
    the frame beyond it dark."""
    if fit is None:
        return None
    cx, cy, rx, ry, inliers = fit
    distance = _distance(lit.shape[0], cx, cy, rx, ry)
    inside = (distance < 1.0) & in_frame
    outside = (distance >= 1.04) & in_frame
    lit_inside = lit[inside].mean() if inside.any() else 0.0
    lit_outside = lit[outside].mean() if outside.any() else 0.0
    support = _support(int(inliers), rx, ry)
    if support >= MIN_SUPPORT and lit_inside >= 0.5 and lit_outside <= 0.5:
        return Field(CIRCLE, cx, cy, rx, ry, inside, distance, support, frame)
    return None


def find_field(lit: np.ndarray, frame: Frame) -> Field:
    """The field of view of one square's lit mask (S, S) bool: see the module docstring."""
    size = lit.shape[0]
    in_frame = frame.mask(size)
    points = edge_points(lit, frame)
    circle = fit_circle(points, size)
    found = _mask(
        lit, in_frame, frame, None if circle is None else (circle[0], circle[1], circle[2], circle[2], circle[3])
    )
    if found is None:
        found = _mask(lit, in_frame, frame, fit_ellipse(points, size))
    if found is not None:
        return found
    lit_share = float(lit[in_frame].mean()) if in_frame.any() else 0.0
    rows, columns = np.nonzero(in_frame)
    if len(rows):
        cx, cy = (columns.min() + columns.max() + 1) / 2.0, (rows.min() + rows.max() + 1) / 2.0
        radius = max(1.0, min(columns.max() + 1 - columns.min(), rows.max() + 1 - rows.min()) / 2.0)
    else:
        cx = cy = radius = size / 2.0
    shape = FILL if lit_share >= FILL_LIT else NONE
    return Field(shape, cx, cy, radius, radius, in_frame, _distance(size, cx, cy, radius), 0.0, frame)
