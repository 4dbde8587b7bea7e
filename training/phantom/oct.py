"""Synthetic OCT B-scans: one horizontal line through the fovea towards the optic disc.

Same side convention as the fundus phantom: in a right eye ("R") the disc end of the scan is
on the right, in a left eye on the left. The scan is built as a reflectivity profile of the
retinal layers stacked upwards from Bruch's membrane, disrupted at each disease's sites,
then multiplied by speckle. Sizes refer to a 512 x 256 scan and scale with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

from predilect.contract import EYES

from .fundus import DISEASES, smooth_noise

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
_INNER = ("rnfl", "gcl", "ipl", "inl", "opl")
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


def _normal_scan(rng: np.random.Generator, width: int, height: int) -> Scan:
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


# ----------------------------------------------------------------------------- diseases


def _amd(scan: Scan, rng: np.random.Generator) -> None:
    """Drusen: dome-shaped RPE elevations near the fovea."""
    lift = np.zeros(scan.width)
    for _ in range(int(rng.integers(2, 6))):
        centre = scan.fovea + rng.uniform(-0.14, 0.14)
        lift += rng.uniform(8, 18) * scan.sy * scan.bump(centre, rng.uniform(0.014, 0.032))
    scan.thickness["druse"] = scan.thickness["druse"] + lift


def _dme(scan: Scan, rng: np.random.Generator) -> None:
    """Central thickening of the INL/ONL with dark intraretinal cysts."""
    swell = scan.bump(scan.fovea, rng.uniform(0.06, 0.1))
    scan.thickness["onl"] = scan.thickness["onl"] + rng.uniform(10, 22) * scan.sy * swell
    scan.thickness["inl"] = scan.thickness["inl"] + rng.uniform(6, 14) * scan.sy * swell
    for _ in range(int(rng.integers(3, 9))):
        scan.cysts.append(
            (
                scan.fovea + rng.uniform(-0.11, 0.11),
                rng.uniform(0.2, 0.8),
                rng.uniform(5, 14) * scan.sx,
                rng.uniform(4, 10) * scan.sy,
            )
        )


def _glaucoma(scan: Scan, rng: np.random.Generator) -> None:
    """RNFL (and some GCL) thinning on the disc side of the fovea."""
    side = _smoothstep(scan.fovea + 0.02, scan.fovea + 0.15, scan.x)
    scan.thickness["rnfl"] = scan.thickness["rnfl"] * (1.0 - side * rng.uniform(0.6, 0.8))
    scan.thickness["gcl"] = scan.thickness["gcl"] * (1.0 - side * rng.uniform(0.3, 0.5))


def _dr(scan: Scan, rng: np.random.Generator) -> None:
    """Hyperreflective foci scattered through the inner retina along the scan."""
    for _ in range(int(rng.integers(20, 41))):
        x = rng.uniform(0.06, scan.disc - 0.05)
        if abs(x - scan.fovea) < 0.04:
            continue  # the pit has no inner retina to hold them
        scan.foci.append((x, rng.uniform(0.15, 0.85), rng.uniform(3.5, 5.0)))


def _rvo(scan: Scan, rng: np.random.Generator) -> None:
    """Thickening with cysts over one half of the scan (the occluded hemi-field)."""
    toward_disc = rng.random() < 0.5
    lo, hi = (scan.fovea, scan.disc - 0.03) if toward_disc else (0.03, scan.fovea)
    half = _smoothstep(lo - 0.04, lo + 0.04, scan.x) * (1 - _smoothstep(hi - 0.04, hi + 0.04, scan.x))
    scan.thickness["inl"] = scan.thickness["inl"] + rng.uniform(6, 12) * scan.sy * half
    scan.thickness["onl"] = scan.thickness["onl"] + rng.uniform(8, 16) * scan.sy * half
    for _ in range(int(rng.integers(4, 11))):
        scan.cysts.append(
            (
                rng.uniform(lo + 0.03, hi - 0.03),
                rng.uniform(0.2, 0.8),
                rng.uniform(5, 12) * scan.sx,
                rng.uniform(4, 9) * scan.sy,
            )
        )


def _rp(scan: Scan, rng: np.random.Generator) -> None:
    """Ellipsoid-zone and outer-retinal loss at both ends, sparing the centre."""
    keep = rng.uniform(0.1, 0.2)
    lost = 1.0 - scan.bump(scan.fovea, keep) ** 4
    for name in _OUTER_SEGMENTS:
        scan.thickness[name] = scan.thickness[name] * (1.0 - lost)
    scan.thickness["onl"] = scan.thickness["onl"] * (1.0 - rng.uniform(0.5, 0.7) * lost)
    scan.thickness["rpe"] = scan.thickness["rpe"] * (1.0 - 0.4 * lost)
    scan.choroid_boost = scan.choroid_boost + rng.uniform(0.2, 0.35) * lost


_DISEASE_EDITS = {"dr": _dr, "dme": _dme, "amd": _amd, "glaucoma": _glaucoma, "rvo": _rvo, "rp": _rp}


# ----------------------------------------------------------------------------- imaging


def _coverage(top: np.ndarray, bottom: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Fraction of each pixel (row, column) lying between ``top`` and ``bottom`` (antialiasing)."""
    return np.clip(np.minimum(rows + 1, bottom) - np.maximum(rows, top), 0.0, 1.0)


def _bruch_line(scan: Scan, rng: np.random.Generator) -> np.ndarray:
    """Depth of Bruch's membrane per column: a tilted, gently curved line."""
    x = scan.x - 0.5
    base = rng.uniform(0.6, 0.68) * scan.height
    return base + scan.height * (rng.uniform(-0.06, 0.06) * x + rng.uniform(0.0, 0.25) * x**2)


def _reflectivity(scan: Scan, rng: np.random.Generator) -> np.ndarray:
    """Noise-free reflectivity image in [0, 1] from the layer stack and painted features."""
    rows = np.arange(scan.height, dtype=np.float64)[:, None]
    bruch = _bruch_line(scan, rng)
    bottom = bruch + scan.cup_depth
    image = np.full((scan.height, scan.width), 0.03)
    bounds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, _, _ in _LAYERS:
        top = bottom - scan.thickness[name]
        image += scan.reflectivity[name] * _coverage(top, bottom, rows)
        bounds[name] = (top, bottom)
        bottom = top
    _choroid(image, scan, bruch, rows, rng)
    _paint_blobs(image, scan, bounds)
    return image


def _choroid(image: np.ndarray, scan: Scan, bruch: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> None:
    """Choroid under Bruch's membrane: grainy tissue with dark vessel lumens, fading with depth."""
    depth = rows - bruch[None, :]
    thickness = rng.uniform(0.08, 0.12) * scan.height
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


def render_oct(
    labels: frozenset[str], *, rng: np.random.Generator, width: int = 512, height: int = 256, eye: str = "R"
) -> Image.Image:
    """A synthetic OCT B-scan ("L" mode) through fovea and disc showing the diseases in ``labels``."""
    unknown = sorted(set(labels) - set(DISEASES))
    if unknown:
        raise ValueError(f"cannot render disease ids {unknown}; the phantom knows {list(DISEASES)}")
    if eye not in EYES:
        raise ValueError(f"eye must be one of {EYES}, got {eye!r}")
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        raise ValueError(f"scan must be at least {MIN_WIDTH}x{MIN_HEIGHT}, got {width}x{height}")
    scan_seed, image_seed, lesion_seed = rng.integers(0, 2**63 - 1, size=3)
    scan = _normal_scan(np.random.default_rng(scan_seed), width, height)
    for i, disease in enumerate(DISEASES):  # fixed order: each disease has its own stream
        if disease in labels:
            _DISEASE_EDITS[disease](scan, np.random.default_rng([int(lesion_seed), i]))
    image_rng = np.random.default_rng(image_seed)
    image = _speckle(_reflectivity(scan, image_rng), image_rng)
    return image.transpose(Image.FLIP_LEFT_RIGHT) if eye == "L" else image
