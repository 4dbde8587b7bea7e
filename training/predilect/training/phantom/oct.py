"""Synthetic OCT B-scans: one horizontal line through the fovea towards the optic disc.

Same side convention as the fundus phantom: in a right eye ("R") the disc end of the scan is
on the right, in a left eye on the left. The scan is built as a reflectivity profile of the
retinal layers stacked upwards from Bruch's membrane, disrupted at each disease's sites,
then multiplied by speckle. Sizes refer to a 512 x 256 scan and scale with it.

The edits below are the OCT concepts of the catalog vocabulary (intraretinal cysts, subretinal
fluid, RPE elevation, nerve-fibre thinning, ...); ``registry`` composes them into diseases at
the sites where the same disease draws its fundus lesions (``Scan.u`` maps columns to disc
diameters from the fovea, the unit the fundus phantom uses). The edits that existed before
presets keep their order of random draws, so the easy preset reproduces its scans.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

from predilect.training.phantom.dose import Dose
from predilect.training.phantom.fundus import smooth_noise

MIN_WIDTH, MIN_HEIGHT = 64, 32

# Retinal layers from Bruch's membrane upwards: (name, thickness in px at 256 rows, reflectivity).
_LAYERS: tuple[tuple[str, float, float], ...] = (
    ("druse", 0.0, 0.42),  # space under the RPE, empty unless drusen lift it
    ("rpe", 6.0, 0.92),
    ("iz", 2.5, 0.45),
    ("ez", 3.0, 0.85),
    ("myoid", 3.5, 0.22),
    ("elm", 1.2, 0.5),
    ("onl", 17.0, 0.12),
    ("opl", 5.0, 0.5),
    ("inl", 8.0, 0.18),
    ("ipl", 8.0, 0.5),
    ("gcl", 11.0, 0.38),
    ("rnfl", 4.5, 0.8),
)
# Layers that exist only when a disease makes them (zero thickness otherwise): the space of a
# pigment epithelial detachment under the RPE, subretinal fluid above it, and an epiretinal
# membrane on top. They take no random draws, so healthy scans are the same with or without them.
_EXTRA: dict[str, float] = {"ped": 0.1, "srf": 0.015, "erm": 0.95}  # name: reflectivity
_STACK: tuple[str, ...] = (
    "ped",
    "druse",
    "rpe",
    "srf",
    "iz",
    "ez",
    "myoid",
    "elm",
    "onl",
    "opl",
    "inl",
    "ipl",
    "gcl",
    "rnfl",
    "erm",
)
_INNER = ("rnfl", "gcl", "ipl", "inl", "opl")
_NEUROSENSORY = ("iz", "ez", "myoid", "elm", "onl", "opl", "inl", "ipl", "gcl", "rnfl")
_OUTER_SEGMENTS = ("iz", "ez", "myoid", "elm")


@dataclass
class Scan:
    """A B-scan under construction: per-column layer thicknesses and painted features.

    Columns run from the temporal end (x = 0) to the disc end (x = 1); ``fovea`` and
    ``disc`` are fractions of the width.
    """

    width: int
    height: int
    fovea: float
    disc: float
    thickness: dict[str, np.ndarray]
    reflectivity: dict[str, float]
    choroid_boost: np.ndarray  # extra choroidal signal where the outer retina no longer shadows it
    cup_depth: np.ndarray | float = 0.0  # the optic cup sinks the surface below Bruch's line
    cysts: list[tuple[float, float, float, float]] = field(default_factory=list)  # x, depth in ONL/INL, rx, ry
    foci: list[tuple[float, float, float]] = field(default_factory=list)  # x, depth in inner retina, r
    curvature: float = 0.0  # extra bowing of the eye wall (staphyloma), in scan heights
    choroid_scale: float = 1.0  # choroid thickness multiplier (thin in myopia)
    lesions: list[tuple[str, float, float]] = field(default_factory=list)  # disease, x centre, half-width
    disease: str = ""

    @property
    def dd(self) -> float:
        """One disc diameter as a fraction of the width (the fovea lies 2.5 DD from the disc)."""
        return (self.disc - self.fovea) / 2.5

    @property
    def u(self) -> np.ndarray:
        """Each column's distance from the fovea towards the disc, in disc diameters."""
        return (self.x - self.fovea) / self.dd

    def mark(self, x: float, half_width: float) -> None:
        """Record a lesion of the current ``disease`` around column fraction ``x``."""
        self.lesions.append((self.disease, float(x), float(half_width)))

    @property
    def x(self) -> np.ndarray:
        return (np.arange(self.width) + 0.5) / self.width

    @property
    def sy(self) -> float:
        return self.height / 256.0

    @property
    def sx(self) -> float:
        return self.width / 512.0

    def bump(self, centre: float, sigma: float) -> np.ndarray:
        return np.exp(-0.5 * ((self.x - centre) / sigma) ** 2)


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def normal_scan(rng: np.random.Generator, width: int, height: int) -> Scan:
    """Healthy layers with a foveal pit and the RNFL thickening towards the disc."""
    fovea, disc = 0.5 + rng.normal(0, 0.015), rng.uniform(0.9, 0.95)
    scan = Scan(width, height, fovea, disc, {}, {n: r * rng.uniform(0.9, 1.1) for n, _, r in _LAYERS}, np.zeros(width))
    x, sy = scan.x, scan.sy
    pit = scan.bump(fovea, rng.uniform(0.045, 0.06))
    for name, thick, _ in _LAYERS:
        t = np.full(width, thick * sy * rng.uniform(0.9, 1.1)) * (1 + 0.06 * smooth_noise(rng, (1, width), (8, 1))[0])
        if name in _INNER:
            t *= 1.0 - rng.uniform(0.9, 0.98) * pit
        if name == "onl":
            t += rng.uniform(5, 9) * sy * pit  # cone nuclei pile up under the pit
        scan.thickness[name] = np.maximum(t, 0.0)
    scan.thickness["rnfl"] += rng.uniform(14, 22) * sy * _smoothstep(fovea + 0.08, disc - 0.03, x)
    _optic_disc(scan, rng)
    for name, reflectivity in _EXTRA.items():
        scan.thickness[name] = np.zeros(width)
        scan.reflectivity[name] = reflectivity
    return scan


def _optic_disc(scan: Scan, rng: np.random.Generator) -> None:
    """At the disc margin the outer retina ends and the nerve fibres dive into the cup."""
    x = scan.x
    inside = _smoothstep(scan.disc - 0.025, scan.disc + 0.01, x)
    lost = np.zeros(scan.width)
    for name in scan.thickness:
        if name != "rnfl":
            lost += scan.thickness[name] * inside
            scan.thickness[name] *= 1.0 - inside
    # Fibres fill the rim where the outer retina ends, then thin out down the cup wall.
    cup = _smoothstep(scan.disc + 0.005, scan.disc + 0.05, x)
    scan.thickness["rnfl"] = (scan.thickness["rnfl"] + 0.8 * lost) * (1.0 - 0.75 * cup)
    scan.cup_depth = rng.uniform(12, 24) * scan.sy * cup


# ----------------------------------------------------------------------------- concepts
# Each edit takes a Dose: ``count`` lesions and ``scale[0]`` as a fixed amplitude multiplier
# (1 reproduces the sizes the edit always drew).


def rpe_elevation(scan: Scan, rng: np.random.Generator, dose: Dose, *, spread: float = 0.14) -> None:
    """Drusen: small dome-shaped RPE elevations within ``spread`` of the fovea."""
    k = dose.scale[0]
    lift = np.zeros(scan.width)
    for _ in range(int(rng.integers(*dose.count))):
        centre = scan.fovea + rng.uniform(-spread, spread)
        height = rng.uniform(8 * k, 18 * k)
        sigma = rng.uniform(0.014, 0.032)
        lift += height * scan.sy * scan.bump(centre, sigma)
        scan.mark(centre, 2.5 * sigma)
    scan.thickness["druse"] = scan.thickness["druse"] + lift


def central_oedema(scan: Scan, rng: np.random.Generator, dose: Dose, *, reach: float = 0.11) -> None:
    """Retinal thickening of the INL/ONL centred on the fovea with dark intraretinal cysts."""
    k = dose.scale[0]
    sigma = rng.uniform(0.06, 0.1)
    swell = scan.bump(scan.fovea, sigma)
    scan.thickness["onl"] = scan.thickness["onl"] + rng.uniform(10 * k, 22 * k) * scan.sy * swell
    scan.thickness["inl"] = scan.thickness["inl"] + rng.uniform(6 * k, 14 * k) * scan.sy * swell
    _cysts(scan, rng, dose.count, (-reach, reach), around=scan.fovea, rx=(5, 14), ry=(4, 10))
    scan.mark(scan.fovea, max(2 * sigma, reach + 0.03))


def hemi_oedema(scan: Scan, rng: np.random.Generator, dose: Dose) -> None:
    """Thickening with cysts over one side of the fovea (the drained sector of an occluded vein)."""
    k = dose.scale[0]
    toward_disc = rng.random() < 0.5
    lo, hi = (scan.fovea, scan.disc - 0.03) if toward_disc else (0.03, scan.fovea)
    half = _smoothstep(lo - 0.04, lo + 0.04, scan.x) * (1 - _smoothstep(hi - 0.04, hi + 0.04, scan.x))
    scan.thickness["inl"] = scan.thickness["inl"] + rng.uniform(6 * k, 12 * k) * scan.sy * half
    scan.thickness["onl"] = scan.thickness["onl"] + rng.uniform(8 * k, 16 * k) * scan.sy * half
    _cysts(scan, rng, dose.count, (lo + 0.03, hi - 0.03), rx=(5, 12), ry=(4, 9))
    scan.mark((lo + hi) / 2, (hi - lo) / 2 + 0.04)


def _cysts(
    scan: Scan,
    rng: np.random.Generator,
    count: tuple[int, int],
    xs: tuple[float, float],
    *,
    around: float = 0.0,
    rx: tuple[float, float],
    ry: tuple[float, float],
) -> None:
    """Dark cysts at columns ``around + uniform(*xs)``, at random depths in the INL/ONL."""
    for _ in range(int(rng.integers(*count))):
        scan.cysts.append(
            (
                around + rng.uniform(*xs) if around else rng.uniform(*xs),
                rng.uniform(0.2, 0.8),
                rng.uniform(*rx) * scan.sx,
                rng.uniform(*ry) * scan.sy,
            )
        )


def rnfl_thinning(scan: Scan, rng: np.random.Generator, dose: Dose) -> None:
    """Nerve fibre (and some ganglion cell) layer thinning on the disc side of the fovea."""
    k = dose.scale[0]
    side = _smoothstep(scan.fovea + 0.02, scan.fovea + 0.15, scan.x)
    scan.thickness["rnfl"] = scan.thickness["rnfl"] * (1.0 - side * rng.uniform(0.6 * k, 0.8 * k))
    scan.thickness["gcl"] = scan.thickness["gcl"] * (1.0 - side * rng.uniform(0.3 * k, 0.5 * k))
    scan.mark((scan.fovea + 0.1 + scan.disc) / 2, (scan.disc - scan.fovea - 0.1) / 2 + 0.03)


def rnfl_swelling(scan: Scan, rng: np.random.Generator, dose: Dose) -> None:
    """A thickened nerve fibre layer around the disc margin, the disc surface lifted."""
    k = dose.scale[0]
    near = scan.bump(scan.disc - 0.02, rng.uniform(0.05, 0.08))
    scan.thickness["rnfl"] = scan.thickness["rnfl"] + rng.uniform(14 * k, 26 * k) * scan.sy * near
    scan.cup_depth = scan.cup_depth * (1.0 - min(1.0, 0.9 * k))
    scan.mark(scan.disc - 0.02, 0.14)


def hyperreflective_foci(scan: Scan, rng: np.random.Generator, dose: Dose) -> None:
    """Bright foci scattered through the inner retina along the scan, none in the pit."""
    for _ in range(int(rng.integers(*dose.count))):
        x = rng.uniform(0.06, scan.disc - 0.05)
        if abs(x - scan.fovea) < 0.04:
            continue  # the pit has no inner retina to hold them
        depth = rng.uniform(0.15, 0.85)
        r = rng.uniform(3.5, 5.0)
        scan.foci.append((x, depth, r))
        scan.mark(x, 2 * r * scan.sx / scan.width + 0.01)


def outer_loss(scan: Scan, rng: np.random.Generator, dose: Dose) -> None:
    """Ellipsoid-zone and outer-retinal loss towards both ends, sparing a central island."""
    keep = rng.uniform(0.1 * dose.scale[0], 0.2 * dose.scale[0])
    lost = 1.0 - scan.bump(scan.fovea, keep) ** 4
    for name in _OUTER_SEGMENTS:
        scan.thickness[name] = scan.thickness[name] * (1.0 - lost)
    scan.thickness["onl"] = scan.thickness["onl"] * (1.0 - rng.uniform(0.5, 0.7) * lost)
    scan.thickness["rpe"] = scan.thickness["rpe"] * (1.0 - 0.4 * lost)
    scan.choroid_boost = scan.choroid_boost + rng.uniform(0.2, 0.35) * lost
    inner = keep * 1.2
    scan.mark((scan.fovea - inner) / 2, (scan.fovea - inner) / 2)
    scan.mark((1.0 + scan.fovea + inner) / 2, (1.0 - scan.fovea - inner) / 2)


def subretinal_fluid(
    scan: Scan,
    rng: np.random.Generator,
    dose: Dose,
    *,
    centre: float | None = None,
    width: tuple[float, float] = (0.06, 0.1),
) -> None:
    """A dark dome of fluid lifting the neurosensory retina off the RPE."""
    k = dose.scale[0]
    x0 = (scan.fovea if centre is None else centre) + rng.uniform(-0.02, 0.02)
    sigma = rng.uniform(*width)
    dome = scan.bump(x0, sigma) ** 0.6 * (scan.bump(x0, 1.6 * sigma) > 0.05)
    scan.thickness["srf"] = scan.thickness["srf"] + rng.uniform(12 * k, 22 * k) * scan.sy * dome
    scan.mark(x0, 2.2 * sigma)


def pigment_epithelial_detachment(scan: Scan, rng: np.random.Generator, dose: Dose) -> None:
    """A dome of the RPE over a dark space, near the fovea."""
    k = dose.scale[0]
    x0 = scan.fovea + rng.uniform(-0.05, 0.05)
    sigma = rng.uniform(0.03, 0.05)
    scan.thickness["ped"] = scan.thickness["ped"] + rng.uniform(14 * k, 26 * k) * scan.sy * scan.bump(x0, sigma) ** 1.5
    scan.mark(x0, 2.2 * sigma)


def epiretinal_membrane(scan: Scan, rng: np.random.Generator, dose: Dose) -> None:
    """A bright membrane on the inner surface over the macula, the retina beneath thick and wrinkled."""
    k = dose.scale[0]
    half = rng.uniform(0.12, 0.2)
    over = _smoothstep(scan.fovea - half - 0.03, scan.fovea - half + 0.03, scan.x) * (
        1 - _smoothstep(scan.fovea + half - 0.03, scan.fovea + half + 0.03, scan.x)
    )
    scan.thickness["erm"] = scan.thickness["erm"] + rng.uniform(2.0, 3.5) * scan.sy * over
    ripples = np.sin(2 * np.pi * scan.x * rng.uniform(18, 30) + rng.uniform(0, 2 * np.pi))
    scan.thickness["gcl"] = np.maximum(0.0, scan.thickness["gcl"] + 3.0 * k * scan.sy * ripples * over)
    fill = scan.bump(scan.fovea, 0.06)  # the pit fills in
    scan.thickness["inl"] = scan.thickness["inl"] + rng.uniform(5 * k, 10 * k) * scan.sy * (0.4 * over + fill)
    scan.thickness["ipl"] = scan.thickness["ipl"] + rng.uniform(3 * k, 7 * k) * scan.sy * fill
    scan.mark(scan.fovea, half + 0.03)


def full_thickness_hole(scan: Scan, rng: np.random.Generator, dose: Dose) -> None:
    """A full-thickness gap in the neurosensory retina at the fovea with cystic, thickened edges."""
    half = rng.uniform(0.018, 0.03) * dose.scale[0]
    gap = 1 - _smoothstep(half, half + 0.012, np.abs(scan.x - scan.fovea))
    edge = scan.bump(scan.fovea, half + 0.05) * (1 - gap)
    for name in _NEUROSENSORY:
        scan.thickness[name] = scan.thickness[name] * (1.0 - gap)
    scan.thickness["inl"] = scan.thickness["inl"] + rng.uniform(8, 14) * scan.sy * edge
    scan.thickness["onl"] = scan.thickness["onl"] + rng.uniform(6, 12) * scan.sy * edge
    for side in (-1.0, 1.0):
        scan.cysts.append((scan.fovea + side * (half + 0.025), 0.5, rng.uniform(5, 8) * scan.sx, 5 * scan.sy))
    scan.mark(scan.fovea, half + 0.06)


def staphyloma(scan: Scan, rng: np.random.Generator, dose: Dose) -> None:
    """A steeply curved eye wall with a thin choroid (posterior staphyloma)."""
    k = dose.scale[0]
    scan.curvature += rng.uniform(0.6, 1.0) * k
    scan.choroid_scale *= 1.0 - rng.uniform(0.4, 0.6) * k
    scan.mark(scan.fovea, 0.35)


def hypertransmission(scan: Scan, rng: np.random.Generator, dose: Dose, *, spread: float = 0.08) -> None:
    """Patches of RPE atrophy near the fovea: outer retina lost, bright signal in the choroid below."""
    for _ in range(int(rng.integers(*dose.count))):
        x0 = scan.fovea + rng.uniform(-spread, spread)
        sigma = rng.uniform(0.015, 0.03) * dose.scale[0]
        patch = _smoothstep(0.3, 0.6, scan.bump(x0, sigma))
        for name in ("rpe", *_OUTER_SEGMENTS):
            scan.thickness[name] = scan.thickness[name] * (1.0 - 0.85 * patch)
        scan.choroid_boost = scan.choroid_boost + rng.uniform(0.35, 0.5) * patch
        scan.mark(x0, 2 * sigma)


# ----------------------------------------------------------------------------- imaging


def _coverage(top: np.ndarray, bottom: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Fraction of each pixel (row, column) lying between ``top`` and ``bottom`` (antialiasing)."""
    return np.clip(np.minimum(rows + 1, bottom) - np.maximum(rows, top), 0.0, 1.0)


def _bruch_line(scan: Scan, rng: np.random.Generator) -> np.ndarray:
    """Depth of Bruch's membrane per column: a tilted, gently curved line."""
    x = scan.x - 0.5
    base = rng.uniform(0.6, 0.68) * scan.height
    line = base + scan.height * (rng.uniform(-0.06, 0.06) * x + rng.uniform(0.0, 0.25) * x**2)
    if scan.curvature:
        line = line + scan.height * scan.curvature * (0.15 - x**2)  # the centre bows backwards
    return line


def _reflectivity(scan: Scan, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise-free reflectivity image in [0, 1] from the layer stack and painted features, with the
    rows of the inner surface and of Bruch's membrane per column."""
    rows = np.arange(scan.height, dtype=np.float64)[:, None]
    bruch = _bruch_line(scan, rng)
    bottom = bruch + scan.cup_depth
    image = np.full((scan.height, scan.width), 0.03)
    bounds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in _STACK:
        top = bottom - scan.thickness[name]
        image += scan.reflectivity[name] * _coverage(top, bottom, rows)
        bounds[name] = (top, bottom)
        bottom = top
    _choroid(image, scan, bruch, rows, rng)
    _paint_blobs(image, scan, bounds)
    return image, bottom, bruch


def _imaged(scan: Scan, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    reflectivity, surface, bruch = _reflectivity(scan, rng)
    return _speckle(reflectivity, rng), surface, bruch


def _choroid(image: np.ndarray, scan: Scan, bruch: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> None:
    """Choroid under Bruch's membrane: grainy tissue with dark vessel lumens, fading with depth."""
    depth = rows - bruch[None, :]
    thickness = rng.uniform(0.08, 0.12) * scan.height * scan.choroid_scale
    fade = np.exp(-np.clip(depth, 0, None) / thickness) * (depth > 0)
    vessels = smooth_noise(rng, (scan.height, scan.width), (max(4, scan.width // 20), max(4, scan.height // 16)))
    texture = np.clip(0.35 + 0.2 * vessels, 0.05, 0.8)
    outside_disc = 1.0 - _smoothstep(scan.disc - 0.01, scan.disc + 0.02, scan.x)
    image += fade * (texture + scan.choroid_boost[None, :]) * outside_disc[None, :]


def _paint_blobs(image: np.ndarray, scan: Scan, bounds: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Dark cysts in the INL/ONL and bright foci in the inner retina (GCL to OPL)."""
    rows = np.arange(scan.height)[:, None]
    cols = np.arange(scan.width)[None, :]
    for x, depth, rx, ry in scan.cysts:
        col = min(scan.width - 1, int(x * scan.width))
        top, bottom = bounds["inl"][0][col], bounds["onl"][1][col]
        y = top + depth * (bottom - top)
        ry = min(ry, 0.45 * (bottom - top))
        inside = ((cols - x * scan.width) / rx) ** 2 + ((rows - y) / max(ry, 1.0)) ** 2 <= 1.0
        image[inside] = 0.02
    for x, depth, r in scan.foci:
        col = min(scan.width - 1, int(x * scan.width))
        top, bottom = bounds["gcl"][0][col], bounds["opl"][1][col]
        y = top + depth * (bottom - top)
        rx, ry = r * scan.sx * 1.6, r * scan.sy
        inside = ((cols - x * scan.width) / rx) ** 2 + ((rows - y) / ry) ** 2 <= 1.0
        image[inside] = 1.0


def _speckle(reflectivity: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Speckle, noise floor and log-like compression, as a scanner displays the signal."""
    looks = rng.uniform(2.0, 4.0)
    signal = reflectivity * rng.gamma(looks, 1.0 / looks, reflectivity.shape) + rng.uniform(0.02, 0.05)
    signal = np.log1p(12.0 * np.clip(signal, 0.0, None)) / np.log1p(12.0)
    gain = rng.uniform(0.85, 1.1)
    pixels = np.clip(255.0 * gain * signal ** rng.uniform(1.1, 1.5), 0, 255).astype(np.uint8)
    # Speckle grains are elongated along the scan: blur a little, more across than down.
    blurred = Image.fromarray(pixels, "L").filter(ImageFilter.BoxBlur((1, 0)))
    return blurred.filter(ImageFilter.GaussianBlur(0.6))


def scan_image(scan: Scan, rng: np.random.Generator) -> tuple[Image.Image, list[tuple[str, float, float, float]]]:
    """The B-scan of ``scan`` (right-eye orientation) and its lesions as (disease, x, y, r), fractions
    of the width (x, r) and height (y: the middle of the retina at x)."""
    image, surface, bruch = _imaged(scan, rng)
    lesions = []
    for disease, x, half_width in scan.lesions:
        col = min(scan.width - 1, max(0, int(x * scan.width)))
        y = 0.5 * (surface[col] + bruch[col]) / scan.height
        lesions.append((disease, x, y, half_width))
    return image, lesions
