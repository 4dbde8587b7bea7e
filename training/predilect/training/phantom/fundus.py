"""Synthetic colour fundus photographs: anatomy, painting primitives and camera profiles.

Conventions: images are shown as a fundus camera shows them, so in a right eye ("R") the
optic disc (nasal side) lies to the right of the fovea and in a left eye ("L") to the left.
The macula-centred field of view is a disc of diameter 1.02 x the frame height, centred in
the frame, black outside. Anatomy is measured in disc diameters (DD, about 1/8 of the field
of view): the fovea lies about 2.5 DD temporal to the disc and 0.3 DD below it.

Lesion sizes are given at the reference scale of a 1536-px-high frame and scale with the
frame (and with the camera's magnification), so that they stay visible once the field of view
is resized to 224 x 224. The diseases' painters live in ``fundus_lesions``; ``render`` puts
anatomy, lesions and camera together.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from predilect.contract import EYES
from predilect.errors import ConfigError

FOV_DIAMETER = 1.02  # field-of-view diameter, in frame heights
DISC_DIAMETER = 1.0 / 8.0  # disc diameter, in field-of-view diameters
REFERENCE_RADIUS = FOV_DIAMETER * 1536 / 2  # field-of-view radius that lesion sizes refer to
MIN_SIDE = 64

# Exposure ranges, named because the ``dark`` degradation anchors on the darkest clean photograph
# they allow (``degrade.clean_exposure_floor``). Uniform ranges (low, high).
FUNDUS_RED = (190.0, 225.0)  # the background's red level before shading
BACKGROUND_VIGNETTE = (0.4, 0.58)  # depth of the eye's own fall-off towards the rim
BACKGROUND_VIGNETTE_POWER = (2.0, 3.0)  # its radial exponent
CAST_BRIGHTNESS = (0.82, 1.12)  # ``colour_cast``: per-image exposure
CAST_WHITE_BALANCE = (0.94, 1.06)  # its per-channel gain
CAST_GAMMA = (0.88, 1.12)
CAMERA_GAIN_JITTER = (0.96, 1.04)  # ``apply_camera``: per-image jitter of the profile's gains
CAMERA_GAMMA_JITTER = (0.96, 1.04)  # ... and of its gamma
CAMERA_VIGNETTE_POWER = 2.5  # the profile's vignette: 1 - vignette * (r / radius) ** power

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
    disc_fraction: float = DISC_DIAMETER  # the camera's field angle: disc diameter / FOV diameter

    @property
    def dd(self) -> float:
        """One disc diameter, in pixels."""
        return 2.0 * self.disc_radius

    @property
    def scale(self) -> float:
        """Size of the retina in the frame relative to the 1536-px-high, 45-degree reference."""
        return self.radius / REFERENCE_RADIUS * self.disc_fraction / DISC_DIAMETER

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
    image = Image.fromarray(grid, mode="F").resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
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


def unit_tangents(points: np.ndarray) -> np.ndarray:
    d = np.gradient(points, axis=0)
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6)


def _wiggle(points: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Displace a centreline sideways by smooth noise (vessel tortuosity)."""
    n = len(points)
    offset = smooth_noise(rng, (1, n), (max(2, n // 6), 1))[0] * amplitude
    normal = unit_tangents(points) @ np.array([[0.0, 1.0], [-1.0, 0.0]])
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
    frame: _Frame, start: np.ndarray, heading: float, length: float, rng: np.random.Generator, drift: float = 0.09
) -> np.ndarray:
    """A branch centreline: a random walk of slowly drifting heading, cut at the FOV or the pit."""
    step = 0.06 * frame.dd
    n = max(3, int(length / step))
    headings = heading + np.cumsum(rng.normal(0.0, drift, n))
    steps = step * np.column_stack([np.cos(headings), np.sin(headings)])
    points = start + np.vstack([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
    return points[: _keep_until(points, frame)]


def _branches_of(frame: _Frame, parent: Vessel, rng: np.random.Generator, depth: int) -> list[Vessel]:
    """Side branches along ``parent``, recursively to ``depth`` levels."""
    if depth == 0 or len(parent.points) < 6:
        return []
    arclength = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(parent.points, axis=0), axis=1))])
    tangents = unit_tangents(parent.points)
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


def _vessel_tree(
    frame: _Frame, fovea_v: float, rng: np.random.Generator, *, to_rim: bool = False
) -> tuple[Vessel, ...]:
    vessels: list[Vessel] = []
    for name, controls in _trunk_controls(fovea_v).items():
        for kind in ("vein", "artery"):
            trunk = _grow_trunk(frame, name, kind, controls, rng)
            if len(trunk.points) < 2:
                continue
            vessels.append(trunk)
            vessels.extend(_branches_of(frame, trunk, rng, depth=2 if "macular" not in name else 1))
            if to_rim and "macular" not in name:
                vessels.extend(_towards_rim(frame, trunk, rng))
    return tuple(vessels)


def _towards_rim(frame: _Frame, trunk: Vessel, rng: np.random.Generator) -> list[Vessel]:
    """A trunk that ends inside a wide field continued on its heading to the rim, thinning, with branches."""
    end = trunk.points[-1]
    if len(trunk.points) < 3 or np.linalg.norm(end - np.array(frame.centre)) > 0.95 * frame.radius:
        return []
    tangent = unit_tangents(trunk.points)[-1]
    points = _grow_branch(frame, end, math.atan2(tangent[1], tangent[0]), 2.0 * frame.radius, rng, drift=0.03)
    if len(points) < 3:
        return []
    widths = np.linspace(trunk.widths[-1], 0.5 * trunk.widths[-1], len(points))
    extension = Vessel(points=points, widths=widths, kind=trunk.kind, trunk=trunk.trunk)
    return [extension, *_branches_of(frame, extension, rng, depth=1)]


def check_frame(width: int, height: int) -> None:
    """Raise ConfigError unless ``width`` x ``height`` is a frame the phantom can draw."""
    if min(width, height) < MIN_SIDE:
        raise ConfigError(f"image must be at least {MIN_SIDE} px a side, got {width}x{height}")
    if width < height:
        raise ConfigError(f"fundus frames are landscape (width >= height), got {width}x{height}")


def check_args(width: int, height: int, eye: str) -> None:
    if eye not in EYES:
        raise ValueError(f"eye must be one of {EYES}, got {eye!r}")
    check_frame(width, height)


def sample_anatomy(
    rng: np.random.Generator,
    *,
    width: int,
    height: int,
    eye: str,
    fov_diameter: float = FOV_DIAMETER,
    disc_fraction: float = DISC_DIAMETER,
    centre: Point | None = None,
    fovea_shift: float = 0.0,
    vessels_to_rim: bool = False,
) -> Anatomy:
    """Random but plausible anatomy: field of view, disc, cup, fovea and vessel tree.

    ``fov_diameter`` (in frame heights) and ``disc_fraction`` (disc diameter over FOV
    diameter: a narrower field angle magnifies the retina) describe the camera; ``centre`` is
    the field's centre in the frame (default: the frame's centre) and ``fovea_shift`` moves the
    fovea that many disc diameters temporally of it (1.25: the field centred between disc and
    fovea, as a narrow field is aimed to hold both); ``vessels_to_rim`` continues the trunks to the
    rim of a field wider than the arcades reach (the older presets' trunks stop near 7 DD).
    """
    check_args(width, height, eye)
    radius = fov_diameter * height / 2.0
    centre = (width / 2.0, height / 2.0) if centre is None else centre
    dd = 2.0 * radius * disc_fraction * rng.uniform(0.92, 1.08)
    fovea = (centre[0] + rng.normal(0.0, 0.12) * dd, centre[1] + rng.normal(0.0, 0.12) * dd)
    temporal = 1.0 if eye == "L" else -1.0
    if fovea_shift:
        fovea = (fovea[0] + temporal * fovea_shift * dd, fovea[1])
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
        vessels=_vessel_tree(frame, fovea_v, rng, to_rim=vessels_to_rim),
        disc_fraction=disc_fraction,
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


@dataclass(frozen=True)
class Lesion:
    """Where one lesion (or one confounder) was drawn: centre and radius in pixels."""

    disease: str
    x: float
    y: float
    r: float


@dataclass
class Findings:
    """What the diseases change: cup size, vessel calibre per (kind, trunk), extra layers.

    ``under_vessels`` are painted before the vessels (disc-margin changes), ``layers`` after
    the vessels, ``over_vessels`` after ``layers`` (what hides vessels: a swollen disc margin).
    ``lesions`` records where each painter drew, under the id in ``disease``.
    """

    cup_ratio: float
    vessel_scale: dict[tuple[str, str], float] = field(default_factory=dict)
    under_vessels: list[Layer] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)
    over_vessels: list[Layer] = field(default_factory=list)
    lesions: list[Lesion] = field(default_factory=list)
    disease: str = ""

    def scale_of(self, vessel: Vessel) -> float:
        return self.vessel_scale.get((vessel.kind, vessel.trunk), 1.0) * self.vessel_scale.get((vessel.kind, "*"), 1.0)

    def scale_vessels(self, kind: str, trunk: str, factor: float) -> None:
        """Multiply the calibre of ``kind`` vessels of ``trunk`` ("*": all) by ``factor``."""
        self.vessel_scale[(kind, trunk)] = self.vessel_scale.get((kind, trunk), 1.0) * factor

    def mark(self, xy: Point, r: float) -> None:
        """Record a lesion of the current ``disease`` centred at ``xy`` with radius ``r`` (px)."""
        self.lesions.append(Lesion(self.disease, float(xy[0]), float(xy[1]), float(r)))


def paint_background(anatomy: Anatomy, rng: np.random.Generator) -> Image.Image:
    """Orange-red fundus with texture, vignetting, uneven illumination and a dark macula."""
    f = 4  # computed at 1/4 resolution; everything here is smooth
    h, w = max(8, anatomy.height // f), max(8, anatomy.width // f)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    xs, ys = (xs + 0.5) * anatomy.width / w, (ys + 0.5) * anatomy.height / h
    r = np.hypot(xs - anatomy.centre[0], ys - anatomy.centre[1]) / anatomy.radius
    vignette = 1.0 - rng.uniform(*BACKGROUND_VIGNETTE) * np.clip(r, 0, 1.05) ** rng.uniform(*BACKGROUND_VIGNETTE_POWER)
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
    colour = np.array([rng.uniform(*FUNDUS_RED), rng.uniform(70, 100), rng.uniform(25, 50)], dtype=np.float32)
    shade = (vignette * illumination)[..., None] * (1.0 - macula[..., None] * np.array([0.9, 1.0, 1.1]))
    rgb = colour * shade * (1.0 + texture[..., None] * np.array([1.0, 1.3, 1.3]))
    small = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    return small.resize((anatomy.width, anatomy.height), Image.Resampling.BILINEAR)


def paint_disc(image: Image.Image, anatomy: Anatomy, cup_ratio: float, rng: np.random.Generator) -> None:
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


def paint_vessels(image: Image.Image, anatomy: Anatomy, findings: Findings) -> None:
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


@functools.lru_cache(maxsize=8)
def fov_mask(width: int, height: int, fov_diameter: float = FOV_DIAMETER) -> Image.Image:
    """The field of view ("L", 255 inside), with a soft rim: a hard edge would ring in JPEG.

    Cached: treat the returned image as read-only.
    """
    radius = fov_diameter * height / 2.0
    soft = max(1.5, 3.0 * radius / REFERENCE_RADIUS)
    mask = Image.new("L", (width, height), 0)
    cx, cy, r = width / 2.0, height / 2.0, radius - soft
    ImageDraw.Draw(mask).ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    return mask.filter(ImageFilter.GaussianBlur(soft))


def colour_cast(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Per-image exposure, white balance and gamma, as cameras and pigmentation vary."""
    brightness = rng.uniform(*CAST_BRIGHTNESS)
    gains = brightness * rng.uniform(*CAST_WHITE_BALANCE, 3)
    gamma = rng.uniform(*CAST_GAMMA)
    ramp = (np.arange(256, dtype=np.float64) / 255.0) ** gamma * 255.0
    lut = np.concatenate([np.clip(ramp * g, 0, 255) for g in gains]).round().astype(int).tolist()
    return image.point(lut)


@dataclass(frozen=True)
class CameraProfile:
    """What a fundus camera does to the picture: colour cast, vignetting, sharpness, field of view.

    ``fov_diameter`` is the field of view in frame heights (above 1 the disc is clipped top
    and bottom); ``disc_fraction`` is the disc diameter over the FOV diameter (a narrower
    field angle magnifies the retina); ``blur`` is a Gaussian sigma and ``noise`` a standard
    deviation in 8-bit levels, both at the 1536-px reference scale.
    """

    name: str
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    vignette: float = 0.0
    blur: float = 0.0
    noise: float = 0.0
    fov_diameter: float = FOV_DIAMETER
    disc_fraction: float = DISC_DIAMETER


def apply_camera(image: Image.Image, anatomy: Anatomy, profile: CameraProfile, rng: np.random.Generator) -> Image.Image:
    """The profile's optics and colour, with a little per-image jitter, applied to ``image``."""
    s = anatomy.height / 1536.0
    if profile.blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(profile.blur * s * rng.uniform(0.8, 1.2)))
    if profile.vignette > 0:
        f = 4  # smooth: computed at 1/4 resolution
        h, w = max(8, anatomy.height // f), max(8, anatomy.width // f)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        r = np.hypot(
            (xs + 0.5) * anatomy.width / w - anatomy.centre[0], (ys + 0.5) * anatomy.height / h - anatomy.centre[1]
        )
        shade = 255.0 * (1.0 - profile.vignette * np.clip(r / anatomy.radius, 0.0, 1.0) ** CAMERA_VIGNETTE_POWER)
        mask = Image.fromarray(shade.astype(np.uint8), "L").resize(image.size, Image.Resampling.BILINEAR)
        image = ImageChops.multiply(image, Image.merge("RGB", (mask, mask, mask)))
    gains = np.array(profile.gains) * rng.uniform(*CAMERA_GAIN_JITTER, 3)
    gamma = profile.gamma * rng.uniform(*CAMERA_GAMMA_JITTER)
    ramp = (np.arange(256, dtype=np.float64) / 255.0) ** gamma * 255.0
    image = image.point(np.concatenate([np.clip(ramp * g, 0, 255) for g in gains]).round().astype(int).tolist())
    if profile.noise <= 0:
        return image
    noise = rng.standard_normal((image.height, image.width, 3), dtype=np.float32) * profile.noise
    pixels = np.asarray(image, dtype=np.float32) + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
