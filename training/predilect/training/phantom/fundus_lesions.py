"""Fundus painters: one per appearance concept of the catalog vocabulary, drawn at given sites.

Each painter adds ``Layer``s (or vessel-calibre changes) to ``Findings`` and records where it
drew with ``Findings.mark``. Site helpers turn a location concept into candidate points. The
painters that existed before presets keep their order of random draws, so the easy preset
reproduces the images it always drew; ``registry`` composes painters into diseases.
"""

from __future__ import annotations

import math

import numpy as np

from predilect.training.phantom.dose import Dose
from predilect.training.phantom.fundus import Anatomy, Findings, Layer, Point, Rgb, unit_tangents

HAEMORRHAGE_DOT: tuple[float, float, float] = (0.4, 0.13, 0.16)
HAEMORRHAGE_FLAME: tuple[float, float, float] = (0.42, 0.14, 0.17)
PIGMENT: tuple[float, float, float] = (0.2, 0.17, 0.2)
EXUDATE: Rgb = (250, 228, 112)
DRUSEN: Rgb = (232, 206, 142)
CRESCENT: Rgb = (216, 196, 168)
COTTON_WOOL: Rgb = (236, 232, 218)
ATROPHY: Rgb = (228, 192, 150)


# ----------------------------------------------------------------------------- sites


def inside(anatomy: Anatomy, xy: Point, margin: float = 0.97) -> bool:
    return math.hypot(xy[0] - anatomy.centre[0], xy[1] - anatomy.centre[1]) < margin * anatomy.radius


def vessel_points(
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


def arcade_sites(anatomy: Anatomy) -> np.ndarray:
    """The temporal arcades and their branches within 3.8 DD of the fovea."""
    return vessel_points(
        anatomy, trunks=("superior_temporal", "inferior_temporal"), near=anatomy.fovea, within=3.8 * anatomy.dd
    )


def vein_sites(
    anatomy: Anatomy, *, trunks: tuple[str, ...] | None = None, from_disc: tuple[float, float] = (0.6, 99.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Vein centreline points and unit tangents of ``trunks`` (None: all) at ``from_disc`` DD from the disc."""
    veins = [v for v in anatomy.vessels if v.kind == "vein" and (trunks is None or v.trunk in trunks)]
    points = np.vstack([v.points for v in veins])
    tangents = np.vstack([unit_tangents(v.points) for v in veins])
    d = np.linalg.norm(points - np.array(anatomy.disc), axis=1) / anatomy.dd
    keep = (d > from_disc[0]) & (d < from_disc[1])
    return points[keep], tangents[keep]


def posterior_pole_sites(anatomy: Anatomy) -> np.ndarray:
    """Vessel points of every trunk within 3.2 DD of the point between fovea and disc."""
    middle = ((anatomy.fovea[0] + anatomy.disc[0]) / 2, (anatomy.fovea[1] + anatomy.disc[1]) / 2)
    trunks = tuple({v.trunk for v in anatomy.vessels})
    return vessel_points(anatomy, trunks=trunks, near=middle, within=3.2 * anatomy.dd)


def _layer(anatomy: Anatomy, blur: float, **kind: object) -> Layer:
    return Layer((anatomy.width, anatomy.height), blur=blur, **kind)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- red lesions


def dots_and_blots(
    findings: Findings, anatomy: Anatomy, rng: np.random.Generator, dose: Dose, sites: np.ndarray
) -> None:
    """Small dark red dots (microaneurysms) and dark red blots scattered around ``sites``."""
    s, dd = anatomy.scale, anatomy.dd
    blur = max(0.5, 1.2 * s)
    layer = _layer(anatomy, blur, gain=HAEMORRHAGE_DOT)
    contrast = rng.uniform(*dose.contrast)
    for _ in range(int(rng.integers(*dose.count))):
        angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.7) * dd
        base = sites[rng.integers(len(sites))]
        xy = (base[0] + dist * math.cos(angle), base[1] + dist * math.sin(angle))
        if not inside(anatomy, xy):
            continue
        opacity = contrast * rng.uniform(0.8, 1.0)
        if rng.random() < 0.5:  # microaneurysm
            r = rng.uniform(11, 15) * s
            layer.disc(xy, r, opacity)
            findings.mark(xy, r + 2 * blur)
        else:  # blot haemorrhage: a few overlapping blobs
            extent = 0.0
            for _ in range(int(rng.integers(2, 4))):
                r = rng.uniform(14, 24) * s
                dx, dy = rng.uniform(-0.6, 0.6) * r, rng.uniform(-0.6, 0.6) * r
                layer.disc((xy[0] + dx, xy[1] + dy), r, opacity)
                extent = max(extent, math.hypot(dx, dy) + r)
            findings.mark(xy, extent + 2 * blur)
    findings.layers.append(layer)


def flames(
    findings: Findings,
    anatomy: Anatomy,
    rng: np.random.Generator,
    dose: Dose,
    points: np.ndarray,
    tangents: np.ndarray,
    *,
    side: float = 0.6,
) -> None:
    """Flame-shaped haemorrhages beside the given vein points, along the vein's direction."""
    s, dd = anatomy.scale, anatomy.dd
    blur = max(0.5, 1.8 * s)
    layer = _layer(anatomy, blur, gain=HAEMORRHAGE_FLAME)
    contrast = rng.uniform(*dose.contrast)
    for _ in range(int(rng.integers(*dose.count))):
        i = rng.integers(len(points))
        offset = rng.uniform(-side, side) * dd
        xy = (points[i, 0] - tangents[i, 1] * offset, points[i, 1] + tangents[i, 0] * offset)
        if not inside(anatomy, xy):
            continue
        angle = math.atan2(tangents[i, 1], tangents[i, 0]) + rng.normal(0, 0.25)
        length = rng.uniform(40, 95) * s
        layer.rotated_ellipse(xy, length, rng.uniform(10, 17) * s, angle, contrast * rng.uniform(0.75, 1.0))
        findings.mark(xy, length / 2 + 2 * blur)
    findings.layers.append(layer)


def red_grey_patch(findings: Findings, anatomy: Anatomy, rng: np.random.Generator, dose: Dose) -> None:
    """A dark red-grey patch at the macula: subretinal blood around a grey-green membrane."""
    dd = anatomy.dd
    size = rng.uniform(*dose.scale) * dd
    contrast = rng.uniform(*dose.contrast)
    cx = anatomy.fovea[0] + rng.uniform(-0.3, 0.3) * dd
    cy = anatomy.fovea[1] + rng.uniform(-0.3, 0.3) * dd
    blood = _layer(anatomy, max(1.0, 0.06 * size), gain=(0.5, 0.2, 0.22))
    extent = 0.0
    for _ in range(int(rng.integers(3, 6))):
        dx, dy = rng.normal(0, 0.35, 2) * size
        r = rng.uniform(0.45, 0.8) * size
        blood.ellipse((cx + dx, cy + dy), r, r * rng.uniform(0.7, 1.0), contrast * rng.uniform(0.75, 1.0))
        extent = max(extent, math.hypot(dx, dy) + r)
    membrane = _layer(anatomy, max(1.0, 0.1 * size), colour=(120, 118, 92))
    membrane.disc((cx, cy), 0.4 * size, contrast * rng.uniform(0.5, 0.7))
    findings.layers += [blood, membrane]
    findings.mark((cx, cy), extent + 0.15 * size)


def red_spot(findings: Findings, anatomy: Anatomy, rng: np.random.Generator, dose: Dose) -> None:
    """A small round dark red spot at the fovea with a pale cuff (full-thickness macular hole)."""
    dd = anatomy.dd
    r = rng.uniform(*dose.scale) * dd
    contrast = rng.uniform(*dose.contrast)
    xy = (anatomy.fovea[0] + rng.normal(0, 0.05) * dd, anatomy.fovea[1] + rng.normal(0, 0.05) * dd)
    cuff = _layer(anatomy, max(1.0, 0.15 * r), colour=(214, 176, 150))
    cuff.disc(xy, 1.7 * r, 0.45 * contrast)
    hole = _layer(anatomy, max(0.8, 0.08 * r), gain=(0.62, 0.3, 0.3))
    hole.disc(xy, r, contrast)
    findings.layers += [cuff, hole]
    findings.mark(xy, 1.7 * r + 0.45 * r)


# ----------------------------------------------------------------------------- yellow and white lesions


def exudate_ring(findings: Findings, anatomy: Anatomy, rng: np.random.Generator, dose: Dose) -> None:
    """Bright yellow spots (hard exudates) in clusters on a ring, partial or whole, around the fovea."""
    s, dd = anatomy.scale, anatomy.dd
    blur = max(0.5, 1.0 * s)
    layer = _layer(anatomy, blur, colour=EXUDATE)
    contrast = rng.uniform(*dose.contrast)
    cx = anatomy.fovea[0] + rng.uniform(-0.25, 0.25) * dd
    cy = anatomy.fovea[1] + rng.uniform(-0.25, 0.25) * dd
    ring, start, extent = rng.uniform(0.7, 1.3) * dd, rng.uniform(0, 2 * np.pi), rng.uniform(0.55, 1.0) * 2 * np.pi
    for _ in range(int(rng.integers(*dose.count))):
        angle, radius = start + rng.uniform(0, extent), ring * rng.uniform(0.85, 1.15)
        centre = (cx + radius * math.cos(angle), cy + radius * math.sin(angle))
        reach = 0.0
        for _ in range(int(rng.integers(2, 6))):
            dx, dy = rng.normal(0, 0.08) * dd, rng.normal(0, 0.08) * dd
            r = rng.uniform(8, 14) * s
            layer.disc((centre[0] + dx, centre[1] + dy), r, contrast * rng.uniform(0.8, 1.0))
            reach = max(reach, math.hypot(dx, dy) + r)
        findings.mark(centre, reach + 2 * blur)
    findings.layers.append(layer)


def exudates(
    findings: Findings, anatomy: Anatomy, rng: np.random.Generator, dose: Dose, centre: Point, spread: float
) -> None:
    """Bright yellow sharp spots scattered within ``spread`` DD of ``centre``."""
    s, dd = anatomy.scale, anatomy.dd
    blur = max(0.5, 1.0 * s)
    layer = _layer(anatomy, blur, colour=EXUDATE)
    contrast = rng.uniform(*dose.contrast)
    for _ in range(int(rng.integers(*dose.count))):
        xy = (centre[0] + rng.normal(0, spread) * dd, centre[1] + rng.normal(0, spread) * dd)
        if not inside(anatomy, xy):
            continue
        r = rng.uniform(7, 13) * s
        layer.disc(xy, r, contrast * rng.uniform(0.8, 1.0))
        findings.mark(xy, r + 2 * blur)
    findings.layers.append(layer)


def soft_spots(
    findings: Findings,
    anatomy: Anatomy,
    rng: np.random.Generator,
    dose: Dose,
    *,
    sizes: tuple[float, float] = (12, 28),
    spread: float = 0.55,
    reach: float = 1.4,
    opacity: tuple[float, float] = (0.6, 0.85),
) -> None:
    """Pale yellow soft-edged spots (drusen) clustered on the macula."""
    s, dd = anatomy.scale, anatomy.dd
    blur = max(0.8, 5.0 * s)
    layer = _layer(anatomy, blur, colour=DRUSEN)
    contrast = rng.uniform(*dose.contrast)
    for _ in range(int(rng.integers(*dose.count))):
        offset = np.clip(rng.normal(0, spread, 2), -reach, reach) * dd
        xy = (anatomy.fovea[0] + offset[0], anatomy.fovea[1] + offset[1])
        r = rng.uniform(*sizes) * s
        layer.disc(xy, r, contrast * rng.uniform(*opacity))
        findings.mark(xy, r + 2 * blur)
    findings.layers.append(layer)


def cotton_wool(findings: Findings, anatomy: Anatomy, rng: np.random.Generator, dose: Dose, sites: np.ndarray) -> None:
    """Fluffy white patches (nerve-fibre-layer infarcts) beside vessels at ``sites``."""
    s, dd = anatomy.scale, anatomy.dd
    blur = max(1.0, 4.0 * s)
    layer = _layer(anatomy, blur, colour=COTTON_WOOL)
    contrast = rng.uniform(*dose.contrast)
    for _ in range(int(rng.integers(*dose.count))):
        base = sites[rng.integers(len(sites))]
        xy = (base[0] + rng.uniform(-0.25, 0.25) * dd, base[1] + rng.uniform(-0.25, 0.25) * dd)
        if not inside(anatomy, xy, 0.93):
            continue
        size = rng.uniform(0.12, 0.22) * dd
        for _ in range(int(rng.integers(2, 4))):
            dx, dy = rng.uniform(-0.4, 0.4, 2) * size
            layer.ellipse(
                (xy[0] + dx, xy[1] + dy),
                size * rng.uniform(0.6, 1.0),
                size * rng.uniform(0.4, 0.7),
                contrast * rng.uniform(0.6, 0.85),
            )
        findings.mark(xy, 1.5 * size + 2 * blur)
    findings.layers.append(layer)


# ----------------------------------------------------------------------------- pigment and atrophy


def pigment_spicules(findings: Findings, anatomy: Anatomy, rng: np.random.Generator, dose: Dose) -> None:
    """Dark pigment clumps shaped like bone spicules in the mid-periphery, sparing the disc."""
    s = anatomy.scale
    blur = max(0.5, 1.0 * s)
    layer = _layer(anatomy, blur, gain=PIGMENT)
    contrast = rng.uniform(*dose.contrast)
    for _ in range(int(rng.integers(*dose.count))):
        angle, radius = rng.uniform(0, 2 * np.pi), math.sqrt(rng.uniform(0.55**2, 0.9**2)) * anatomy.radius
        xy = (anatomy.centre[0] + radius * math.cos(angle), anatomy.centre[1] + radius * math.sin(angle))
        if math.dist(xy, anatomy.disc) < 1.1 * anatomy.dd:
            continue
        opacity = contrast * rng.uniform(0.8, 1.0)
        layer.disc(xy, rng.uniform(4, 7) * s, opacity)
        reach = 7 * s
        for _ in range(int(rng.integers(3, 6))):
            arm = _spicule_arm(xy, s, rng)
            width = rng.uniform(3.5, 7) * s
            layer.line(arm, width, opacity)
            reach = max(reach, float(np.linalg.norm(arm - np.array(xy), axis=1).max()) + width)
        findings.mark(xy, reach + 2 * blur)
    findings.layers.append(layer)


def _spicule_arm(xy: Point, s: float, rng: np.random.Generator) -> np.ndarray:
    """A jagged arm of a bone spicule: two or three short kinked segments."""
    heading = rng.uniform(0, 2 * np.pi)
    points = [np.array(xy)]
    for _ in range(int(rng.integers(2, 4))):
        heading += rng.normal(0, 0.5)
        points.append(points[-1] + rng.uniform(7, 16) * s * np.array([math.cos(heading), math.sin(heading)]))
    return np.array(points)


def pigment_clumps(
    findings: Findings, anatomy: Anatomy, rng: np.random.Generator, dose: Dose, centre: Point, spread: float
) -> None:
    """Dark irregular pigment clumps within ``spread`` DD of ``centre``."""
    s, dd = anatomy.scale, anatomy.dd
    blur = max(0.5, 1.5 * s)
    layer = _layer(anatomy, blur, gain=(0.35, 0.3, 0.33))
    contrast = rng.uniform(*dose.contrast)
    for _ in range(int(rng.integers(*dose.count))):
        xy = (centre[0] + rng.normal(0, spread) * dd, centre[1] + rng.normal(0, spread) * dd)
        r = rng.uniform(6, 14) * s
        for _ in range(int(rng.integers(1, 4))):
            layer.disc(
                (xy[0] + rng.uniform(-r, r) * 0.6, xy[1] + rng.uniform(-r, r) * 0.6),
                r * rng.uniform(0.5, 1.0),
                contrast,
            )
        findings.mark(xy, 1.6 * r + 2 * blur)
    findings.layers.append(layer)


def atrophic_patch(
    findings: Findings, anatomy: Anatomy, rng: np.random.Generator, dose: Dose, centre: Point, spread: float
) -> None:
    """Pale, sharply bounded atrophic patches showing the choroidal vessels beneath."""
    dd = anatomy.dd
    contrast = rng.uniform(*dose.contrast)
    patch = _layer(anatomy, max(0.8, 0.02 * dd), colour=ATROPHY)
    vessels = _layer(anatomy, max(0.8, 0.03 * dd), gain=(0.85, 0.62, 0.6))
    for _ in range(int(rng.integers(*dose.count))):
        xy = (centre[0] + rng.normal(0, spread) * dd, centre[1] + rng.normal(0, spread) * dd)
        r = rng.uniform(*dose.scale) * dd
        patch.ellipse(xy, r, r * rng.uniform(0.7, 1.0), contrast)
        for _ in range(int(rng.integers(2, 4))):  # choroidal vessels seen through the patch
            heading = rng.uniform(0, np.pi)
            d = np.array([math.cos(heading), math.sin(heading)]) * 0.8 * r
            vessels.line(np.array([np.array(xy) - d, np.array(xy) + d]), 0.08 * dd, 0.6 * contrast)
        findings.mark(xy, 1.05 * r)
    findings.layers += [patch, vessels]


def tessellation(findings: Findings, anatomy: Anatomy, rng: np.random.Generator, dose: Dose) -> None:
    """Visible choroidal vessels: broad dark-orange ribbons over the posterior pole."""
    dd, step = anatomy.dd, 0.12 * anatomy.dd
    layer = _layer(anatomy, max(1.0, 0.04 * dd), gain=(0.78, 0.62, 0.6))
    contrast = rng.uniform(*dose.contrast)
    for _ in range(int(rng.integers(*dose.count))):
        angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.8) * anatomy.radius
        start = np.array([anatomy.centre[0] + radius * math.cos(angle), anatomy.centre[1] + radius * math.sin(angle)])
        headings = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.15, 18))
        path = start + np.cumsum(step * np.column_stack([np.cos(headings), np.sin(headings)]), axis=0)
        layer.line(path, rng.uniform(0.1, 0.18) * dd, contrast * rng.uniform(0.7, 1.0))
    findings.under_vessels.append(layer)
    findings.mark(anatomy.centre, anatomy.radius)


# ----------------------------------------------------------------------------- disc


def glaucomatous_disc(findings: Findings, anatomy: Anatomy, rng: np.random.Generator, dose: Dose) -> None:
    """An enlarged optic cup (ratio from ``dose.scale``) and a pale crescent at the temporal margin."""
    findings.cup_ratio = float(rng.uniform(*dose.scale))
    pale_crescent(findings, anatomy, rng, dose, shift=(0.25, 0.45), outer=(1.1, 1.25))
    findings.mark(anatomy.disc, 1.3 * anatomy.disc_radius)


def pale_crescent(
    findings: Findings,
    anatomy: Anatomy,
    rng: np.random.Generator,
    dose: Dose,
    *,
    shift: tuple[float, float],
    outer: tuple[float, float],
) -> None:
    """A pale crescent beside the disc: an ellipse under the disc, shifted temporally."""
    r, s = anatomy.disc_radius, anatomy.scale
    layer = _layer(anatomy, max(0.5, 2.0 * s), colour=CRESCENT)
    # The disc is painted over this ellipse, leaving a crescent on the temporal side.
    dx, radius = r * rng.uniform(*shift), r * rng.uniform(*outer)
    x, y = anatomy.disc[0] + anatomy.temporal * dx, anatomy.disc[1] + r * rng.uniform(-0.1, 0.1)
    stretch = rng.uniform(1.0, 1.15)
    layer.ellipse((x, y), radius, radius * stretch, rng.uniform(*dose.contrast))
    findings.under_vessels.append(layer)
    findings.mark((x, y), radius * stretch + 4 * s)


def swollen_disc(findings: Findings, anatomy: Anatomy, rng: np.random.Generator, dose: Dose) -> None:
    """A swollen disc: a pale-pink blurred halo over the margin hides the vessels; the cup fills."""
    r = anatomy.disc_radius
    halo = rng.uniform(*dose.scale)  # outer halo radius, in disc radii
    contrast = rng.uniform(*dose.contrast)
    layer = _layer(anatomy, max(1.0, 0.25 * r * halo), colour=(232, 168, 128))
    layer.ellipse(anatomy.disc, r * halo, r * halo * rng.uniform(1.0, 1.15), contrast * rng.uniform(0.7, 0.9))
    findings.over_vessels.append(layer)
    findings.cup_ratio *= max(0.05, 1.0 - 0.9 * contrast)
    findings.mark(anatomy.disc, r * halo * 1.15 + 0.5 * r * halo)


# ----------------------------------------------------------------------------- macular surface


def faint_blister(findings: Findings, anatomy: Anatomy, rng: np.random.Generator, dose: Dose) -> None:
    """A faint round blister at the macula: slightly darker, more orange, with a thin bright edge."""
    dd = anatomy.dd
    r = rng.uniform(*dose.scale) * dd
    contrast = rng.uniform(*dose.contrast)
    xy = (anatomy.fovea[0] + rng.uniform(-0.3, 0.3) * dd, anatomy.fovea[1] + rng.uniform(-0.3, 0.3) * dd)
    body = _layer(anatomy, max(1.0, 0.12 * r), gain=(0.9, 0.78, 0.74))
    body.ellipse(xy, r, r * rng.uniform(0.85, 1.0), contrast)
    edge = _layer(anatomy, max(0.8, 0.03 * r), colour=(250, 214, 170))
    t = np.linspace(0, 2 * np.pi, 48)
    ring = np.column_stack([xy[0] + r * np.cos(t), xy[1] + r * 0.95 * np.sin(t)])
    edge.line(ring, max(1.0, 0.03 * dd), 0.6 * contrast)
    findings.layers += [body, edge]
    findings.mark(xy, 1.15 * r)


def glistening_sheen(findings: Findings, anatomy: Anatomy, rng: np.random.Generator, dose: Dose) -> None:
    """A glistening wrinkled sheen over the macula: thin bright curved striae around a centre."""
    dd = anatomy.dd
    contrast = rng.uniform(*dose.contrast)
    extent = rng.uniform(*dose.scale) * dd
    cx = anatomy.fovea[0] + rng.uniform(-0.3, 0.3) * dd
    cy = anatomy.fovea[1] + rng.uniform(-0.3, 0.3) * dd
    layer = _layer(anatomy, max(0.8, 0.02 * dd), colour=(255, 246, 226))
    for _ in range(int(rng.integers(*dose.count))):
        radius = rng.uniform(0.25, 1.0) * extent
        start = rng.uniform(0, 2 * np.pi)
        t = start + np.linspace(0, rng.uniform(0.6, 1.6), 16)
        wobble = 1.0 + 0.06 * np.sin(t * rng.uniform(6, 12))
        arc = np.column_stack([cx + radius * wobble * np.cos(t), cy + radius * wobble * np.sin(t)])
        layer.line(arc, max(1.0, rng.uniform(0.02, 0.04) * dd), contrast * rng.uniform(0.6, 1.0))
    findings.layers.append(layer)
    findings.mark((cx, cy), 1.1 * extent)


# ----------------------------------------------------------------------------- confounders (no disease)


def drusen_like(findings: Findings, anatomy: Anatomy, rng: np.random.Generator) -> None:
    """One to three tiny faint pale spots near the macula, as healthy ageing eyes show."""
    dose = Dose(count=(1, 4), contrast=(0.35, 0.6))
    soft_spots(findings, anatomy, rng, dose, sizes=(6, 12), spread=0.8, reach=2.0, opacity=(0.6, 0.9))


def laser_scars(findings: Findings, anatomy: Anatomy, rng: np.random.Generator) -> None:
    """A cluster of old round laser scars in the mid-periphery: pale centres, pigmented rims."""
    s, dd = anatomy.scale, anatomy.dd
    angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(0.55, 0.8) * anatomy.radius
    centre = (anatomy.centre[0] + radius * math.cos(angle), anatomy.centre[1] + radius * math.sin(angle))
    rim = _layer(anatomy, max(0.5, 1.0 * s), gain=(0.35, 0.3, 0.32))
    core = _layer(anatomy, max(0.5, 1.0 * s), colour=(226, 200, 160))
    for _ in range(int(rng.integers(4, 13))):
        xy = (centre[0] + rng.normal(0, 0.5) * dd, centre[1] + rng.normal(0, 0.5) * dd)
        if not inside(anatomy, xy, 0.95):
            continue
        r = rng.uniform(12, 20) * s
        rim.disc(xy, r, rng.uniform(0.6, 0.9))
        core.disc(xy, 0.65 * r, rng.uniform(0.6, 0.9))
        findings.mark(xy, r + 3 * s)
    findings.layers += [rim, core]


def dust(findings: Findings, anatomy: Anatomy, rng: np.random.Generator) -> None:
    """Dust on the camera optics: a few soft dark round shadows anywhere in the field."""
    s = anatomy.scale
    for _ in range(int(rng.integers(1, 4))):
        angle, radius = rng.uniform(0, 2 * np.pi), math.sqrt(rng.uniform(0, 0.8)) * anatomy.radius
        xy = (anatomy.centre[0] + radius * math.cos(angle), anatomy.centre[1] + radius * math.sin(angle))
        r = rng.uniform(20, 45) * s
        layer = _layer(anatomy, 0.5 * r, gain=(0.72, 0.72, 0.74))
        layer.disc(xy, r, rng.uniform(0.5, 0.9))
        findings.layers.append(layer)
        findings.mark(xy, 2 * r)


def vessel_reflex(findings: Findings, anatomy: Anatomy, rng: np.random.Generator) -> None:
    """The light reflex of young eyes: thin faint bright streaks on the temporal arcade veins."""
    dd = anatomy.dd
    layer = _layer(anatomy, max(0.8, 0.02 * dd), colour=(255, 236, 214))
    veins = [v for v in anatomy.vessels if v.trunk.endswith("temporal") and v.kind == "vein" and len(v.points) > 20]
    for vessel in veins[: int(rng.integers(1, 4))]:
        start = int(rng.integers(0, len(vessel.points) // 2))
        segment = vessel.points[start : start + int(rng.integers(8, 20))]
        width = 0.35 * float(vessel.widths[start])
        layer.line(segment, max(1.0, width), rng.uniform(0.25, 0.45))
        middle = segment[len(segment) // 2]
        findings.mark((middle[0], middle[1]), 0.5 * float(np.linalg.norm(segment[-1] - segment[0])) + 0.1 * dd)
    findings.layers.append(layer)


def tilted_disc(findings: Findings, anatomy: Anatomy, rng: np.random.Generator) -> None:
    """A small pale crescent beside a healthy disc (a tilted disc), as in many healthy eyes."""
    pale_crescent(findings, anatomy, rng, Dose(contrast=(0.3, 0.6)), shift=(0.15, 0.3), outer=(1.02, 1.12))


CONFOUNDERS = {
    "drusen_like": drusen_like,
    "laser_scars": laser_scars,
    "dust": dust,
    "vessel_reflex": vessel_reflex,
    "tilted_disc": tilted_disc,
}
"""Findings that are not disease, painted into some eyes of the hard preset (normal ones included)."""
