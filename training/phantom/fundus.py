"""Synthetic colour fundus photographs with lesions at each disease's predilection sites.

Conventions: images are shown as a fundus camera shows them, so in a right eye ("R") the
optic disc (nasal side) lies to the right of the fovea and in a left eye ("L") to the left.
The macula-centred field of view is a disc of diameter 1.02 x the frame height, centred in
the frame, black outside. Anatomy is measured in disc diameters (DD, about 1/8 of the field
of view): the fovea lies about 2.5 DD temporal to the disc and 0.3 DD below it.

Lesion sizes are given at the reference scale of a 1536-px-high frame and scale with the
frame, so that they stay visible once the field of view is resized to 224 x 224.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from predilect.contract import EYES
from predilect.errors import ConfigError

DISEASES = ("dr", "dme", "amd", "glaucoma", "rvo", "rp")
FOV_DIAMETER = 1.02  # field-of-view diameter, in frame heights
DISC_DIAMETER = 1.0 / 8.0  # disc diameter, in field-of-view diameters
REFERENCE_RADIUS = FOV_DIAMETER * 1536 / 2  # field-of-view radius that lesion sizes refer to
MIN_SIDE = 64

Point = tuple[float, float]
Rgb = tuple[int, int, int]

# Superior vessel trunks as (u, v) control points in DD from the disc centre: u towards the
# fovea, v downwards. The inferior trunks mirror them (see _trunk_controls).
_SUPERIOR_TRUNKS: dict[str, list[Point]] = {
    "temporal": [
        (0.04, -0.04),
        (0.2, -0.8),
        (0.8, -1.55),
        (1.7, -1.95),
        (2.7, -2.05),
        (3.7, -1.9),
        (4.7, -1.6),
        (5.8, -1.25),
        (6.8, -0.9),
    ],
    "nasal": [(-0.04, -0.04), (-0.25, -0.9), (-0.7, -1.8), (-1.2, -2.8), (-1.6, -3.8)],
    "macular": [(0.06, -0.04), (0.9, -0.45), (1.6, -0.5), (2.0, -0.3)],
}
_HORIZONTAL_NASAL: list[Point] = [(-0.04, 0.02), (-1.0, 0.05), (-2.0, 0.2), (-3.0, 0.25)]


@dataclass(frozen=True)
class Vessel:
    """A vessel centreline: ``points`` (N, 2) in pixels, ``widths`` (N,) in pixels."""

    points: np.ndarray
    widths: np.ndarray
    kind: str  # "artery" or "vein"
    trunk: str  # e.g. "superior_temporal"; branches carry their trunk's name


@dataclass(frozen=True)
class Anatomy:
    """Where things are in one synthetic fundus image (pixels, frame coordinates)."""

    width: int
    height: int
    eye: str
    centre: Point
    radius: float  # field of view
    disc: Point
    disc_radius: float
    fovea: Point
    cup_ratio: float
    vessels: tuple[Vessel, ...] = field(repr=False)

    @property
    def dd(self) -> float:
        """One disc diameter, in pixels."""
        return 2.0 * self.disc_radius

    @property
    def scale(self) -> float:
        """Frame scale relative to the 1536-px-high reference."""
        return self.radius / REFERENCE_RADIUS

    @property
    def temporal(self) -> float:
        """+1 where temporal (disc -> fovea) is +x, i.e. a left eye; -1 for a right eye."""
        return 1.0 if self.eye == "L" else -1.0

    def to_xy(self, u: float, v: float) -> Point:
        """Frame coordinates of (u, v) in DD from the disc centre, u temporal, v down."""
        return (self.disc[0] + self.temporal * u * self.dd, self.disc[1] + v * self.dd)


# ----------------------------------------------------------------------------- geometry


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise of ``shape`` (rows, cols) from a ``cells`` grid, bicubic."""
    grid = rng.standard_normal((cells[1], cells[0])).astype(np.float32)
    image = Image.fromarray(grid, mode="F").resize((shape[1], shape[0]), Image.BICUBIC)
    return np.asarray(image, dtype=np.float32)


def _catmull_rom(control: np.ndarray, step: float) -> np.ndarray:
    """Points every ~``step`` px along the Catmull-Rom spline through ``control`` (K, 2)."""
    padded = np.vstack([2 * control[0] - control[1], control, 2 * control[-1] - control[-2]])
    pieces = []
    for i in range(1, len(padded) - 2):
        p0, p1, p2, p3 = padded[i - 1 : i + 3]
        n = max(2, int(np.linalg.norm(p2 - p1) / step))
        t = np.linspace(0.0, 1.0, n, endpoint=False)[:, None]
        pieces.append(
            0.5
            * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3)
        )
    pieces.append(control[-1:])
    return np.vstack(pieces)


def _tangents(points: np.ndarray) -> np.ndarray:
    d = np.gradient(points, axis=0)
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6)


def _wiggle(points: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Displace a centreline sideways by smooth noise (vessel tortuosity)."""
    n = len(points)
    offset = smooth_noise(rng, (1, n), (max(2, n // 6), 1))[0] * amplitude
    normal = _tangents(points) @ np.array([[0.0, 1.0], [-1.0, 0.0]])
    return points + normal * offset[:, None]


def _keep_until(points: np.ndarray, frame: _Frame) -> int:
    """Length of the prefix of ``points`` inside the field of view and outside the foveal pit."""
    c, f = np.array(frame.centre), np.array(frame.fovea)
    outside = np.linalg.norm(points - c, axis=1) > frame.radius * 0.995
    in_pit = np.linalg.norm(points - f, axis=1) < frame.avascular
    stop = np.flatnonzero(outside | in_pit)
    return int(stop[0]) if stop.size else len(points)


@dataclass(frozen=True)
class _Frame:
    """The anatomy decided before the vessels are grown."""

    centre: Point
    radius: float
    disc: Point
    dd: float
    fovea: Point
    temporal: float

    @property
    def avascular(self) -> float:
        return 0.4 * self.dd

    def to_xy(self, uv: np.ndarray) -> np.ndarray:
        return np.column_stack([self.disc[0] + self.temporal * uv[:, 0] * self.dd, self.disc[1] + uv[:, 1] * self.dd])


# ----------------------------------------------------------------------------- anatomy


def _trunk_controls(fovea_v: float) -> dict[str, list[Point]]:
    trunks: dict[str, list[Point]] = {}
    for name, pts in _SUPERIOR_TRUNKS.items():
        trunks[f"superior_{name}"] = pts
        # Mirrored about the disc's row at the disc, about the fovea's row from 1.5 DD on.
        trunks[f"inferior_{name}"] = [(u, -v + 2 * fovea_v * min(1.0, max(0.0, u) / 1.5)) for u, v in pts]
    trunks["nasal"] = _HORIZONTAL_NASAL
    return trunks


def _trunk_width(name: str, kind: str, dd: float) -> float:
    base = 0.085 if kind == "vein" else 0.065
    if name.endswith("macular"):
        base *= 0.45
    elif name == "nasal":
        base *= 0.6
    elif name.endswith("nasal"):
        base *= 0.85
    return base * dd


def _grow_trunk(frame: _Frame, name: str, kind: str, controls: list[Point], rng: np.random.Generator) -> Vessel:
    uv = np.array(controls, dtype=np.float64)
    uv[1:] += rng.normal(0.0, 0.12, uv[1:].shape)
    if kind == "artery":  # arteries run beside their vein, not on top of it
        uv[1:] += rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.2) * np.array([0.3, 1.0])
    points = _wiggle(_catmull_rom(frame.to_xy(uv), step=0.06 * frame.dd), rng, 0.04 * frame.dd)
    points = points[: _keep_until(points, frame)]
    w0 = _trunk_width(name, kind, frame.dd) * rng.uniform(0.9, 1.1)
    widths = np.linspace(w0, 0.45 * w0, len(points))
    return Vessel(points=points, widths=widths, kind=kind, trunk=name)


def _grow_branch(
    frame: _Frame, start: np.ndarray, heading: float, length: float, rng: np.random.Generator
) -> np.ndarray:
    """A branch centreline: a random walk of slowly drifting heading, cut at the FOV or the pit."""
    step = 0.06 * frame.dd
    n = max(3, int(length / step))
    headings = heading + np.cumsum(rng.normal(0.0, 0.09, n))
    steps = step * np.column_stack([np.cos(headings), np.sin(headings)])
    points = start + np.vstack([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
    return points[: _keep_until(points, frame)]


def _branches_of(frame: _Frame, parent: Vessel, rng: np.random.Generator, depth: int) -> list[Vessel]:
    """Side branches along ``parent``, recursively to ``depth`` levels."""
    if depth == 0 or len(parent.points) < 6:
        return []
    arclength = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(parent.points, axis=0), axis=1))])
    tangents = _tangents(parent.points)
    out: list[Vessel] = []
    position = rng.uniform(0.4, 0.9) * frame.dd
    side = rng.choice([-1.0, 1.0])
    while position < arclength[-1] - 0.3 * frame.dd:
        i = int(np.searchsorted(arclength, position))
        heading = math.atan2(tangents[i, 1], tangents[i, 0]) + side * rng.uniform(0.5, 1.1)
        width = parent.widths[i] * rng.uniform(0.5, 0.72)
        length = rng.uniform(1.0, 2.6) * frame.dd * (width / (0.05 * frame.dd)) ** 0.5
        points = _grow_branch(frame, parent.points[i], heading, length, rng)
        if len(points) >= 3:
            branch = Vessel(
                points=points, widths=np.linspace(width, 0.4 * width, len(points)), kind=parent.kind, trunk=parent.trunk
            )
            out.append(branch)
            out.extend(_branches_of(frame, branch, rng, depth - 1))
        position += rng.uniform(0.5, 1.0) * frame.dd
        side = -side if rng.random() < 0.8 else side
    return out


def _vessel_tree(frame: _Frame, fovea_v: float, rng: np.random.Generator) -> tuple[Vessel, ...]:
    vessels: list[Vessel] = []
    for name, controls in _trunk_controls(fovea_v).items():
        for kind in ("vein", "artery"):
            trunk = _grow_trunk(frame, name, kind, controls, rng)
            if len(trunk.points) < 2:
                continue
            vessels.append(trunk)
            vessels.extend(_branches_of(frame, trunk, rng, depth=2 if "macular" not in name else 1))
    return tuple(vessels)


def check_frame(width: int, height: int) -> None:
    """Raise ConfigError unless ``width`` x ``height`` is a frame the phantom can draw."""
    if min(width, height) < MIN_SIDE:
        raise ConfigError(f"image must be at least {MIN_SIDE} px a side, got {width}x{height}")
    if width < height:
        raise ConfigError(f"fundus frames are landscape (width >= height), got {width}x{height}")


def _check_args(width: int, height: int, eye: str) -> None:
    if eye not in EYES:
        raise ValueError(f"eye must be one of {EYES}, got {eye!r}")
    check_frame(width, height)


def sample_anatomy(rng: np.random.Generator, *, width: int, height: int, eye: str) -> Anatomy:
    """Random but plausible anatomy: field of view, disc, cup, fovea and vessel tree."""
    _check_args(width, height, eye)
    radius = FOV_DIAMETER * height / 2.0
    centre = (width / 2.0, height / 2.0)
    dd = 2.0 * radius * DISC_DIAMETER * rng.uniform(0.92, 1.08)
    fovea = (centre[0] + rng.normal(0.0, 0.12) * dd, centre[1] + rng.normal(0.0, 0.12) * dd)
    temporal = 1.0 if eye == "L" else -1.0
    fovea_v = rng.uniform(0.15, 0.4)  # the fovea lies a little below the disc centre
    disc = (fovea[0] - temporal * rng.uniform(2.35, 2.65) * dd, fovea[1] - fovea_v * dd)
    frame = _Frame(centre=centre, radius=radius, disc=disc, dd=dd, fovea=fovea, temporal=temporal)
    return Anatomy(
        width=width,
        height=height,
        eye=eye,
        centre=centre,
        radius=radius,
        disc=disc,
        disc_radius=dd / 2.0,
        fovea=fovea,
        cup_ratio=float(rng.uniform(0.2, 0.42)),
        vessels=_vessel_tree(frame, fovea_v, rng),
    )


# ----------------------------------------------------------------------------- painting


@dataclass
class Layer:
    """Shapes drawn into a mask, blurred, then blended into the image.

    ``gain`` multiplies the image under the mask per channel (keeps texture: haemorrhages,
    pigment); ``colour`` replaces it (exudates, drusen, atrophy). Mask level = opacity.
    """

    size: tuple[int, int]
    blur: float
    gain: tuple[float, float, float] | None = None
    colour: Rgb | None = None
    mask: Image.Image = field(init=False)
    draw: ImageDraw.ImageDraw = field(init=False)

    def __post_init__(self) -> None:
        if (self.gain is None) == (self.colour is None):
            raise ValueError("a layer needs exactly one of gain or colour")
        self.mask = Image.new("L", self.size, 0)
        self.draw = ImageDraw.Draw(self.mask)

    def disc(self, xy: Point, r: float, opacity: float) -> None:
        self.ellipse(xy, r, r, opacity)

    def ellipse(self, xy: Point, rx: float, ry: float, opacity: float) -> None:
        x, y = xy
        self.draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=_level(opacity))

    def rotated_ellipse(self, xy: Point, length: float, width: float, angle: float, opacity: float) -> None:
        t = np.linspace(0.0, 2 * np.pi, 20, endpoint=False)
        ca, sa = math.cos(angle), math.sin(angle)
        ex, ey = 0.5 * length * np.cos(t), 0.5 * width * np.sin(t)
        pts = np.column_stack([xy[0] + ex * ca - ey * sa, xy[1] + ex * sa + ey * ca])
        self.draw.polygon([tuple(p) for p in pts], fill=_level(opacity))

    def line(self, points: np.ndarray, width: float, opacity: float) -> None:
        self.draw.line([tuple(p) for p in points], fill=_level(opacity), width=max(1, round(width)), joint="curve")

    def apply(self, image: Image.Image) -> None:
        """Blend into ``image`` in place, touching only the mask's bounding box."""
        box = self.mask.getbbox()
        if box is None:
            return
        pad = int(3 * self.blur) + 2
        box = (
            max(0, box[0] - pad),
            max(0, box[1] - pad),
            min(image.width, box[2] + pad),
            min(image.height, box[3] + pad),
        )
        mask = self.mask.crop(box)
        if self.blur > 0.3:
            mask = mask.filter(ImageFilter.GaussianBlur(self.blur))
        region = image.crop(box)
        if self.gain is not None:
            target = region.point(_gain_lut(self.gain))
        else:
            target = Image.new("RGB", region.size, self.colour)
        image.paste(Image.composite(target, region, mask), box[:2])


def _level(opacity: float) -> int:
    return int(round(255 * min(1.0, max(0.0, opacity))))


def _gain_lut(gain: tuple[float, ...]) -> list[int]:
    ramp = np.arange(256, dtype=np.float32)
    return np.concatenate([np.clip(ramp * g, 0, 255) for g in gain]).round().astype(int).tolist()


@dataclass
class Findings:
    """What the diseases change: cup size, vessel calibre per (kind, trunk), extra layers.

    ``under_vessels`` are painted before the vessels (disc-margin changes), ``layers`` after.
    """

    cup_ratio: float
    vessel_scale: dict[tuple[str, str], float] = field(default_factory=dict)
    under_vessels: list[Layer] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)

    def scale_of(self, vessel: Vessel) -> float:
        return self.vessel_scale.get((vessel.kind, vessel.trunk), 1.0) * self.vessel_scale.get((vessel.kind, "*"), 1.0)


def _background(anatomy: Anatomy, rng: np.random.Generator) -> Image.Image:
    """Orange-red fundus with texture, vignetting, uneven illumination and a dark macula."""
    f = 4  # computed at 1/4 resolution; everything here is smooth
    h, w = max(8, anatomy.height // f), max(8, anatomy.width // f)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    xs, ys = (xs + 0.5) * anatomy.width / w, (ys + 0.5) * anatomy.height / h
    r = np.hypot(xs - anatomy.centre[0], ys - anatomy.centre[1]) / anatomy.radius
    vignette = 1.0 - rng.uniform(0.4, 0.58) * np.clip(r, 0, 1.05) ** rng.uniform(2.0, 3.0)
    tilt = rng.uniform(0, 2 * np.pi)
    illumination = (
        1.0
        + rng.uniform(0.0, 0.12)
        * ((xs - anatomy.centre[0]) * math.cos(tilt) + (ys - anatomy.centre[1]) * math.sin(tilt))
        / anatomy.radius
    )
    d = np.hypot(xs - anatomy.fovea[0], ys - anatomy.fovea[1]) / anatomy.dd
    macula = rng.uniform(0.2, 0.32) * np.exp(-((d / 1.0) ** 2)) + rng.uniform(0.1, 0.18) * np.exp(-((d / 0.3) ** 2))
    texture = (
        0.05 * smooth_noise(rng, (h, w), (12, 9))
        + 0.03 * smooth_noise(rng, (h, w), (48, 36))
        + 0.02 * smooth_noise(rng, (h, w), (w // 3, h // 3)) * r
    )  # choroidal pattern, stronger outside
    colour = np.array([rng.uniform(190, 225), rng.uniform(70, 100), rng.uniform(25, 50)], dtype=np.float32)
    shade = (vignette * illumination)[..., None] * (1.0 - macula[..., None] * np.array([0.9, 1.0, 1.1]))
    rgb = colour * shade * (1.0 + texture[..., None] * np.array([1.0, 1.3, 1.3]))
    small = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    return small.resize((anatomy.width, anatomy.height), Image.BILINEAR)


def _paint_disc(image: Image.Image, anatomy: Anatomy, cup_ratio: float, rng: np.random.Generator) -> None:
    """Optic disc (yellow-orange rim) with a pale physiological cup, slightly temporal."""
    r, s = anatomy.disc_radius, anatomy.scale
    rim = Layer(
        image.size,
        blur=0.03 * r + 1.0 * s,
        colour=(int(rng.uniform(230, 250)), int(rng.uniform(150, 180)), int(rng.uniform(95, 125))),
    )
    rim.ellipse(anatomy.disc, r, r * rng.uniform(1.03, 1.12), opacity=rng.uniform(0.85, 0.95))
    rim.apply(image)
    cup = Layer(image.size, blur=max(1.0, 0.06 * r + 1.5 * s), colour=(253, 236, 196))
    centre = anatomy.to_xy(0.05, 0.0)
    cup.ellipse(centre, cup_ratio * r, cup_ratio * r * rng.uniform(1.05, 1.15), opacity=rng.uniform(0.85, 0.95))
    cup.apply(image)


def _paint_vessels(image: Image.Image, anatomy: Anatomy, findings: Findings) -> None:
    s = anatomy.scale
    for kind, gain in (("vein", (0.55, 0.36, 0.46)), ("artery", (0.8, 0.55, 0.52))):
        layer = Layer(image.size, blur=max(0.6, 1.4 * s), gain=gain)
        for vessel in anatomy.vessels:
            if vessel.kind == kind:
                _draw_tapered(layer, vessel.points, vessel.widths * findings.scale_of(vessel))
        layer.apply(image)


def _draw_tapered(layer: Layer, points: np.ndarray, widths: np.ndarray) -> None:
    """A polyline whose width changes along it, drawn as runs of equal integer width."""
    rounded = np.maximum(1, np.round(widths)).astype(int)
    start = 0
    for i in range(1, len(points) + 1):
        if i == len(points) or rounded[i] != rounded[start]:
            run = points[max(0, start - 1) : i]
            if len(run) >= 2:
                layer.line(run, rounded[start], opacity=1.0)
            start = i


@functools.lru_cache(maxsize=4)
def fov_mask(width: int, height: int) -> Image.Image:
    """The field of view ("L", 255 inside), with a soft rim: a hard edge would ring in JPEG.

    Cached: treat the returned image as read-only.
    """
    radius = FOV_DIAMETER * height / 2.0
    soft = max(1.5, 3.0 * radius / REFERENCE_RADIUS)
    mask = Image.new("L", (width, height), 0)
    cx, cy, r = width / 2.0, height / 2.0, radius - soft
    ImageDraw.Draw(mask).ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    return mask.filter(ImageFilter.GaussianBlur(soft))


def _colour_cast(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Per-image exposure, white balance and gamma, as cameras and pigmentation vary."""
    brightness = rng.uniform(0.82, 1.12)
    gains = brightness * rng.uniform(0.94, 1.06, 3)
    gamma = rng.uniform(0.88, 1.12)
    ramp = (np.arange(256, dtype=np.float64) / 255.0) ** gamma * 255.0
    lut = np.concatenate([np.clip(ramp * g, 0, 255) for g in gains]).round().astype(int).tolist()
    return image.point(lut)


# ----------------------------------------------------------------------------- lesions


def _inside(anatomy: Anatomy, xy: Point, margin: float = 0.97) -> bool:
    return math.hypot(xy[0] - anatomy.centre[0], xy[1] - anatomy.centre[1]) < margin * anatomy.radius


def _vessel_points(
    anatomy: Anatomy,
    *,
    trunks: tuple[str, ...],
    kinds: tuple[str, ...] = ("vein", "artery"),
    near: Point,
    within: float,
) -> np.ndarray:
    """Centreline points of the given trunks (and their branches) within ``within`` px of ``near``."""
    chosen = [v.points for v in anatomy.vessels if v.trunk in trunks and v.kind in kinds]
    points = np.vstack(chosen) if chosen else np.array([anatomy.fovea])
    keep = np.linalg.norm(points - np.array(near), axis=1) < within
    return points[keep] if keep.any() else points


def _dr(findings: Findings, anatomy: Anatomy, rng: np.random.Generator) -> None:
    """Microaneurysms and dot-blot haemorrhages scattered along the temporal arcades."""
    s, dd = anatomy.scale, anatomy.dd
    sites = _vessel_points(
        anatomy, trunks=("superior_temporal", "inferior_temporal"), near=anatomy.fovea, within=3.8 * dd
    )
    layer = Layer((anatomy.width, anatomy.height), blur=max(0.5, 1.2 * s), gain=(0.4, 0.13, 0.16))
    contrast = rng.uniform(0.75, 1.0)
    for _ in range(int(rng.integers(25, 56))):
        angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.7) * dd
        base = sites[rng.integers(len(sites))]
        xy = (base[0] + dist * math.cos(angle), base[1] + dist * math.sin(angle))
        if not _inside(anatomy, xy):
            continue
        opacity = contrast * rng.uniform(0.8, 1.0)
        if rng.random() < 0.5:  # microaneurysm
            layer.disc(xy, rng.uniform(11, 15) * s, opacity)
        else:  # blot haemorrhage: a few overlapping blobs
            for _ in range(int(rng.integers(2, 4))):
                r = rng.uniform(14, 24) * s
                layer.disc((xy[0] + rng.uniform(-0.6, 0.6) * r, xy[1] + rng.uniform(-0.6, 0.6) * r), r, opacity)
    findings.layers.append(layer)


def _dme(findings: Findings, anatomy: Anatomy, rng: np.random.Generator) -> None:
    """Hard exudates in a circinate ring (partial or whole) around the fovea."""
    s, dd = anatomy.scale, anatomy.dd
    layer = Layer((anatomy.width, anatomy.height), blur=max(0.5, 1.0 * s), colour=(250, 228, 112))
    contrast = rng.uniform(0.75, 1.0)
    cx = anatomy.fovea[0] + rng.uniform(-0.25, 0.25) * dd
    cy = anatomy.fovea[1] + rng.uniform(-0.25, 0.25) * dd
    ring, start, extent = rng.uniform(0.7, 1.3) * dd, rng.uniform(0, 2 * np.pi), rng.uniform(0.55, 1.0) * 2 * np.pi
    for _ in range(int(rng.integers(10, 22))):
        angle, radius = start + rng.uniform(0, extent), ring * rng.uniform(0.85, 1.15)
        centre = (cx + radius * math.cos(angle), cy + radius * math.sin(angle))
        for _ in range(int(rng.integers(2, 6))):
            xy = (centre[0] + rng.normal(0, 0.08) * dd, centre[1] + rng.normal(0, 0.08) * dd)
            layer.disc(xy, rng.uniform(8, 14) * s, contrast * rng.uniform(0.8, 1.0))
    findings.layers.append(layer)


def _amd(findings: Findings, anatomy: Anatomy, rng: np.random.Generator) -> None:
    """Soft drusen: pale yellow blobs with soft edges clustered on the macula."""
    s, dd = anatomy.scale, anatomy.dd
    layer = Layer((anatomy.width, anatomy.height), blur=max(0.8, 5.0 * s), colour=(232, 206, 142))
    contrast = rng.uniform(0.7, 1.0)
    for _ in range(int(rng.integers(14, 36))):
        offset = np.clip(rng.normal(0, 0.55, 2), -1.4, 1.4) * dd
        xy = (anatomy.fovea[0] + offset[0], anatomy.fovea[1] + offset[1])
        layer.disc(xy, rng.uniform(12, 28) * s, contrast * rng.uniform(0.6, 0.85))
    findings.layers.append(layer)


def _glaucoma(findings: Findings, anatomy: Anatomy, rng: np.random.Generator) -> None:
    """Enlarged cup plus a pale crescent of peripapillary atrophy at the temporal disc margin."""
    findings.cup_ratio = float(rng.uniform(0.7, 0.9))
    r, s = anatomy.disc_radius, anatomy.scale
    layer = Layer((anatomy.width, anatomy.height), blur=max(0.5, 2.0 * s), colour=(216, 196, 168))
    # The disc is painted over this ellipse, leaving a crescent on the temporal side.
    shift, outer = r * rng.uniform(0.25, 0.45), r * rng.uniform(1.1, 1.25)
    x, y = anatomy.disc[0] + anatomy.temporal * shift, anatomy.disc[1] + r * rng.uniform(-0.1, 0.1)
    layer.ellipse((x, y), outer, outer * rng.uniform(1.0, 1.15), rng.uniform(0.75, 0.95))
    findings.under_vessels.append(layer)


def _rvo(findings: Findings, anatomy: Anatomy, rng: np.random.Generator) -> None:
    """Flame haemorrhages along one temporal vein (superior or inferior), which is dilated."""
    s, dd = anatomy.scale, anatomy.dd
    trunk = "superior_temporal" if rng.random() < 0.5 else "inferior_temporal"
    findings.vessel_scale[("vein", trunk)] = rng.uniform(1.25, 1.45)
    veins = [v for v in anatomy.vessels if v.trunk == trunk and v.kind == "vein"]
    points = np.vstack([v.points for v in veins])
    tangents = np.vstack([_tangents(v.points) for v in veins])
    keep = np.linalg.norm(points - np.array(anatomy.disc), axis=1) > 0.6 * dd
    points, tangents = points[keep], tangents[keep]
    layer = Layer((anatomy.width, anatomy.height), blur=max(0.5, 1.8 * s), gain=(0.42, 0.14, 0.17))
    contrast = rng.uniform(0.7, 1.0)
    for _ in range(int(rng.integers(25, 56))):
        i = rng.integers(len(points))
        side = rng.uniform(-0.6, 0.6) * dd
        xy = (points[i, 0] - tangents[i, 1] * side, points[i, 1] + tangents[i, 0] * side)
        if not _inside(anatomy, xy):
            continue
        angle = math.atan2(tangents[i, 1], tangents[i, 0]) + rng.normal(0, 0.25)
        layer.rotated_ellipse(
            xy, rng.uniform(40, 95) * s, rng.uniform(10, 17) * s, angle, contrast * rng.uniform(0.75, 1.0)
        )
    findings.layers.append(layer)


def _rp(findings: Findings, anatomy: Anatomy, rng: np.random.Generator) -> None:
    """Bone-spicule pigment in the mid-periphery, with attenuated vessels."""
    s = anatomy.scale
    attenuation = rng.uniform(0.55, 0.7)
    findings.vessel_scale[("vein", "*")] = attenuation
    findings.vessel_scale[("artery", "*")] = attenuation
    layer = Layer((anatomy.width, anatomy.height), blur=max(0.5, 1.0 * s), gain=(0.2, 0.17, 0.2))
    contrast = rng.uniform(0.75, 1.0)
    for _ in range(int(rng.integers(40, 91))):
        angle, radius = rng.uniform(0, 2 * np.pi), math.sqrt(rng.uniform(0.55**2, 0.9**2)) * anatomy.radius
        xy = (anatomy.centre[0] + radius * math.cos(angle), anatomy.centre[1] + radius * math.sin(angle))
        if math.dist(xy, anatomy.disc) < 1.1 * anatomy.dd:
            continue
        opacity = contrast * rng.uniform(0.8, 1.0)
        layer.disc(xy, rng.uniform(4, 7) * s, opacity)
        for _ in range(int(rng.integers(3, 6))):
            layer.line(_spicule_arm(xy, s, rng), rng.uniform(3.5, 7) * s, opacity)
    findings.layers.append(layer)


def _spicule_arm(xy: Point, s: float, rng: np.random.Generator) -> np.ndarray:
    """A jagged arm of a bone spicule: two or three short kinked segments."""
    heading = rng.uniform(0, 2 * np.pi)
    points = [np.array(xy)]
    for _ in range(int(rng.integers(2, 4))):
        heading += rng.normal(0, 0.5)
        points.append(points[-1] + rng.uniform(7, 16) * s * np.array([math.cos(heading), math.sin(heading)]))
    return np.array(points)


_PAINTERS = {"dr": _dr, "dme": _dme, "amd": _amd, "glaucoma": _glaucoma, "rvo": _rvo, "rp": _rp}


# ----------------------------------------------------------------------------- public


def _child_seeds(rng: np.random.Generator) -> np.ndarray:
    """Three seeds drawn first, whatever the labels: anatomy, camera, lesions.

    So the same ``rng`` state gives the same eye with and without disease.
    """
    return rng.integers(0, 2**63 - 1, size=3)


def _check_labels(labels: frozenset[str]) -> None:
    unknown = sorted(set(labels) - set(DISEASES))
    if unknown:
        raise ValueError(f"cannot render disease ids {unknown}; the phantom knows {list(DISEASES)}")


def fundus_anatomy(rng: np.random.Generator, *, width: int = 2048, height: int = 1536, eye: str = "R") -> Anatomy:
    """The anatomy ``render_fundus`` would draw from an ``rng`` in the same state."""
    return sample_anatomy(np.random.default_rng(_child_seeds(rng)[0]), width=width, height=height, eye=eye)


def render_fundus(
    labels: frozenset[str], *, rng: np.random.Generator, width: int = 2048, height: int = 1536, eye: str = "R"
) -> Image.Image:
    """A synthetic colour fundus photograph (RGB) of ``eye`` showing the diseases in ``labels``."""
    _check_labels(labels)
    _check_args(width, height, eye)
    anatomy_seed, camera_seed, lesion_seed = _child_seeds(rng)
    anatomy = sample_anatomy(np.random.default_rng(anatomy_seed), width=width, height=height, eye=eye)
    camera = np.random.default_rng(camera_seed)
    findings = Findings(cup_ratio=anatomy.cup_ratio)
    for i, disease in enumerate(DISEASES):  # fixed order: each disease has its own stream
        if disease in labels:
            _PAINTERS[disease](findings, anatomy, np.random.default_rng([int(lesion_seed), i]))
    image = _background(anatomy, camera)
    for layer in findings.under_vessels:
        layer.apply(image)
    _paint_disc(image, anatomy, findings.cup_ratio, camera)
    _paint_vessels(image, anatomy, findings)
    for layer in findings.layers:
        layer.apply(image)
    image = _colour_cast(image, camera)
    return Image.composite(image, Image.new("RGB", image.size), fov_mask(width, height))
