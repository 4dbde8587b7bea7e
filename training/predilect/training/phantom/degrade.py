"""Controlled degradations of fundus photographs, for calibrating a gradability step.

``degrade(image, kind, strength=..., rng=...)`` returns a degraded copy: ``strength`` in (0, 1]
grades it from borderline to clearly ungradable. Kinds:

* ``blur``: defocus (Gaussian, sigma up to 1.2% of the frame height);
* ``dark``: under-exposure: the copy is set below the darkest exposure the phantom's clean camera
  population can produce (``clean_exposure_floor``), by more the stronger; fewer photons, so
  with shot noise, the black level clipped and 8-bit quantisation;
* ``bright``: over-exposure of the field of view (gain and lift, saturating);
* ``fov``: poor field-of-view coverage: the fundus disc shifted off-centre and clipped;
* ``occlusion``: eyelash / eyelid shadow across the top of the field;
* ``dust``: many soft dark spots from dirty optics;
* ``reflection``: bright glare arcs and haze from corneal / lens reflections;
* ``external``: the wrong image type: an external photograph of the eye (strength ignored);
* ``oct``: the wrong image type: an OCT B-scan passed as a fundus photograph (strength ignored).

``degrade_dataset`` writes degraded copies of a manifest's images with a ``degradation_manifest.csv``
that lists the clean sources (``degradation`` = ``none``) beside them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from os.path import relpath
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from predilect.catalog import Catalog
from predilect.errors import ConfigError
from predilect.manifest import Record, read_manifest, write_manifest
from predilect.training.phantom.fundus import (
    BACKGROUND_VIGNETTE,
    BACKGROUND_VIGNETTE_POWER,
    CAMERA_GAIN_JITTER,
    CAMERA_GAMMA_JITTER,
    CAMERA_VIGNETTE_POWER,
    CAST_BRIGHTNESS,
    CAST_GAMMA,
    CAST_WHITE_BALANCE,
    FUNDUS_RED,
    CameraProfile,
)
from predilect.training.phantom.presets import CAMERAS
from predilect.training.phantom.render import render_oct

KINDS = ("blur", "dark", "bright", "fov", "occlusion", "dust", "reflection", "external", "oct")
WRONG_TYPE = ("external", "oct")
DEGRADED_MANIFEST = "degradation_manifest.csv"
NONE = "none"

LEVEL_RADIUS = 0.3  # exposure_level reads a central disc of this radius, in frame heights ...
LEVEL_QUANTILE = 0.75  # ... at this quantile of the brightest channel (above vessels, macula, shadows)
LIT = 20  # 8-bit level: brighter pixels (brightest channel) are inside the field of view
DARK_DEPTH = 0.7  # a dark copy's level below the floor: DARK_DEPTH * strength ** DARK_POWER
DARK_POWER = 1.5  # strength 0.25: 9% below the floor; 0.5: 25%; 0.75: 45%; 1: 70%
FULL_WELL_E = 10_000.0  # electrons at level 255: the shot noise of the fewer photons a dark copy caught
READ_NOISE_E = 3.0  # read noise, electrons


def _fov(image: Image.Image, threshold: int = 20) -> Image.Image:
    """The illuminated field ("L", 255 inside), softened a little."""
    return image.convert("L").point(lambda v: 255 if v > threshold else 0).filter(ImageFilter.GaussianBlur(2))


def _blur(image: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(0.012 * image.height * strength * rng.uniform(0.9, 1.1)))


def _exposure(image: Image.Image, gain: float, lift: float) -> Image.Image:
    """``out = lift + (1 - lift) * gain * in`` inside the field of view (outside stays black)."""
    lut = [int(np.clip(255 * lift + (1 - lift) * gain * v, 0, 255)) for v in range(256)] * 3
    return Image.composite(image.point(lut), image, _fov(image))


def exposure_level(image: Image.Image) -> float:
    """The exposure of a fundus photograph, in 8-bit levels: the ``LEVEL_QUANTILE`` of the brightest
    channel over lit pixels within ``LEVEL_RADIUS`` frame heights of the frame centre (0 if none are lit).

    The brightest channel is red in a fundus; the upper quantile of a central disc reads the lit
    background, above the vessels, the dark macula and any shadow, and below the optic disc.
    """
    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    ys, xs = np.ogrid[0:h, 0:w]
    brightest = rgb.max(axis=2)
    central = np.hypot(xs + 0.5 - w / 2, ys + 0.5 - h / 2) < LEVEL_RADIUS * h
    lit = brightest[central & (brightest > LIT)]
    return float(np.quantile(lit, LEVEL_QUANTILE)) if lit.size else 0.0


def _darkest_level(profile: CameraProfile) -> float:
    """``exposure_level`` of the darkest clean photograph ``profile`` can take (see ``clean_exposure_floor``)."""
    # where the radial shading reaches LEVEL_QUANTILE of the central disc, in field-of-view radii
    r = LEVEL_RADIUS / (profile.fov_diameter / 2.0) * math.sqrt(1.0 - LEVEL_QUANTILE)
    level = FUNDUS_RED[0] * (1.0 - BACKGROUND_VIGNETTE[1] * r ** BACKGROUND_VIGNETTE_POWER[0])  # palest eye
    level = 255.0 * (level / 255.0) ** CAST_GAMMA[1] * CAST_BRIGHTNESS[0] * CAST_WHITE_BALANCE[0]  # colour_cast
    level *= 1.0 - profile.vignette * r**CAMERA_VIGNETTE_POWER  # apply_camera: vignette, then gamma and gain
    gamma = profile.gamma * CAMERA_GAMMA_JITTER[1]
    return 255.0 * (level / 255.0) ** gamma * profile.gains[0] * CAMERA_GAIN_JITTER[0]  # red: the brightest


def clean_exposure_floor(profiles: Sequence[CameraProfile] = tuple(CAMERAS.values())) -> float:
    """The darkest ``exposure_level`` the phantom's clean photographs can have, from the generator's constants.

    Every range at its dark end at once: the darkest fundus red and deepest background fall-off,
    ``colour_cast``'s lowest brightness, white balance and highest gamma, then the darkest camera
    profile's red gain, gamma and vignette with ``apply_camera``'s jitter. Texture, illumination
    tilt, the macula and noise are left out (the upper quantile read lies above their dips); each
    profile's own floor lay below all of its clean photographs in the 1,000 measured when the
    floor was introduced (both phantoms' clean sets).

    Why ``dark`` is anchored on the population's floor, not on its source: a gain on the source
    alone (the old definition) left a weak dark copy of a brightly exposed eye brighter than half
    the clean photographs, which no gradability step can separate and no grader would call
    under-exposed. Anchored here, ``dark`` means "darker than any clean photograph", derived from
    the generator, never from the measure or the threshold it is used to test.
    """
    return min(_darkest_level(p) for p in profiles)


def _dark(image: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    """Under-exposure below the clean floor: fewer photons, shot and read noise, black clipped, 8 bits.

    The copy's ``exposure_level`` is ``(1 - depth)`` times the floor (or its source's level, where
    that is darker still), ``depth = DARK_DEPTH * strength ** DARK_POWER`` (jittered 5%). Levels are
    taken as linear in light, as the generator's gains treat them.
    """
    depth = DARK_DEPTH * strength**DARK_POWER * rng.uniform(0.95, 1.05)
    source = exposure_level(image)
    floor = clean_exposure_floor()
    gain = (1.0 - depth) * min(1.0, floor / source) if source > 0 else 1.0 - depth
    electrons_per_level = FULL_WELL_E / 255.0
    signal = np.asarray(image, dtype=np.float64) * (gain * electrons_per_level)
    caught = rng.poisson(signal) + rng.normal(0.0, READ_NOISE_E, signal.shape)
    return Image.fromarray(np.clip(np.round(caught / electrons_per_level), 0, 255).astype(np.uint8), "RGB")


def _bright(image: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    return _exposure(image, gain=1.0 + 2.5 * strength, lift=0.75 * strength * rng.uniform(0.95, 1.05))


def _off_centre(image: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    angle = rng.uniform(0, 2 * np.pi)
    shift = 0.45 * image.height * strength
    dx, dy = round(shift * math.cos(angle)), round(shift * math.sin(angle))
    return _shift(image, dx, dy)


def _shift(image: Image.Image, dx: int, dy: int) -> Image.Image:
    """``image`` translated by (dx, dy) px, black where nothing was."""
    out = Image.new("RGB", image.size)
    out.paste(image, (dx, dy))
    return out


def _occlusion(image: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    """Lid and lash shadow: a dark band from the top with lash strands below its edge."""
    w, h = image.size
    mask = Image.new("L", image.size, 0)
    draw = ImageDraw.Draw(mask)
    edge = h * (0.08 + 0.5 * strength)
    sag = rng.uniform(0.05, 0.12) * h
    xs = np.linspace(0, w, 40)
    curve = edge + sag * np.sin(np.pi * xs / w)
    draw.polygon([(0, 0), *zip(xs.tolist(), curve.tolist(), strict=True), (w, 0)], fill=235)
    for _ in range(int(20 + 60 * strength)):
        x0 = rng.uniform(0, w)
        y0 = float(np.interp(x0, xs, curve))
        length = rng.uniform(0.05, 0.15) * h
        bend = rng.uniform(-0.3, 0.3)
        draw.line([(x0, y0), (x0 + bend * length, y0 + length)], fill=200, width=max(1, round(0.004 * h)))
    mask = mask.filter(ImageFilter.GaussianBlur(0.01 * h))
    return Image.composite(Image.new("RGB", image.size), image, mask)


def _dust(image: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    mask = Image.new("L", image.size, 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(int(8 + 50 * strength)):
        x, y, r = rng.uniform(0.15, 0.85) * w, rng.uniform(0.05, 0.95) * h, rng.uniform(0.008, 0.03) * h
        draw.ellipse((x - r, y - r, x + r, y + r), fill=int(rng.uniform(120, 220)))
    mask = mask.filter(ImageFilter.GaussianBlur(0.006 * h))
    shadow = image.point([int(v * 0.35) for v in range(256)] * 3)
    return Image.composite(shadow, image, mask)


def _reflection(image: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    """Bright bluish-white glare arcs near the rim and a haze over the field."""
    w, h = image.size
    mask = Image.new("L", image.size, 0)
    draw = ImageDraw.Draw(mask)
    cx, cy, radius = w / 2, h / 2, 0.5 * h
    for _ in range(int(rng.integers(1, 4))):
        start = rng.uniform(0, 360)
        r = radius * rng.uniform(0.6, 0.95)
        box = (cx - r, cy - r, cx + r, cy + r)
        draw.arc(
            box,
            start,
            start + rng.uniform(40, 120) * (0.5 + strength),
            fill=255,
            width=max(2, round(0.06 * h * strength)),
        )
    mask = mask.filter(ImageFilter.GaussianBlur(0.02 * h))
    haze = Image.new("L", image.size, int(110 * strength))
    mask = ImageChops.lighter(mask, haze)
    mask = ImageChops.multiply(mask, _fov(image))
    return Image.composite(Image.new("RGB", image.size, (236, 242, 255)), image, mask)


def external_eye(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """An external photograph of an eye: skin, lids, sclera, iris and pupil."""
    skin = np.array([rng.uniform(170, 225), rng.uniform(120, 170), rng.uniform(100, 140)])
    image = Image.new("RGB", (width, height), tuple(int(v) for v in skin))
    draw = ImageDraw.Draw(image)
    cx, cy = width * rng.uniform(0.45, 0.55), height * rng.uniform(0.45, 0.55)
    a, b = width * rng.uniform(0.3, 0.38), height * rng.uniform(0.2, 0.28)
    draw.ellipse(
        (cx - a, cy - b, cx + a, cy + b), fill=(236, 230, 222), outline=tuple(int(v * 0.6) for v in skin), width=6
    )
    iris = b * rng.uniform(0.85, 1.0)
    colour = tuple(int(v) for v in rng.uniform([50, 30, 10], [120, 110, 90]))
    draw.ellipse((cx - iris, cy - iris, cx + iris, cy + iris), fill=colour)
    pupil = iris * rng.uniform(0.3, 0.5)
    draw.ellipse((cx - pupil, cy - pupil, cx + pupil, cy + pupil), fill=(12, 10, 10))
    glint = pupil * 0.25
    draw.ellipse(
        (cx + pupil * 0.3, cy - pupil * 0.6, cx + pupil * 0.3 + glint, cy - pupil * 0.6 + glint), fill=(255, 255, 255)
    )
    draw.line(
        [(cx - a * 1.1, cy - b * 1.25), (cx + a * 1.1, cy - b * 1.25)], fill=(60, 40, 30), width=max(2, height // 60)
    )
    noise = rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float32) + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def oct_as_fundus(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """An OCT B-scan, grey, stretched to a fundus frame, as a misfiled upload would be."""
    scan = render_oct(frozenset(), rng=rng, eye="R" if rng.random() < 0.5 else "L")
    return scan.resize((width, height), Image.Resampling.BILINEAR).convert("RGB")


_OPS = {
    "blur": _blur,
    "dark": _dark,
    "bright": _bright,
    "fov": _off_centre,
    "occlusion": _occlusion,
    "dust": _dust,
    "reflection": _reflection,
}


def degrade(image: Image.Image, kind: str, *, strength: float = 1.0, rng: np.random.Generator) -> Image.Image:
    """A degraded copy of the RGB fundus photograph ``image`` (see the module docstring)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown degradation {kind!r}; choose from {', '.join(KINDS)}")
    if not 0.0 < strength <= 1.0:
        raise ConfigError(f"degradation strength must lie in (0, 1], got {strength}")
    image = image.convert("RGB")
    if kind == "external":
        return external_eye(image.width, image.height, rng)
    if kind == "oct":
        return oct_as_fundus(image.width, image.height, rng)
    return _OPS[kind](image, strength, rng)


def parse_kinds(text: str) -> tuple[str, ...]:
    """``"blur,dark"`` -> ("blur", "dark"); ``"all"`` -> every kind; ConfigError on an unknown kind."""
    kinds = KINDS if text.strip() == "all" else tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ConfigError(f"unknown degradation(s) {unknown or [text]}; choose from {', '.join(KINDS)} or 'all'")
    return kinds


def degrade_dataset(
    manifest: str | Path,
    out_dir: str | Path,
    *,
    kinds: Sequence[str],
    catalog: Catalog,
    strengths: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    count: int = 40,
    seed: int = 0,
) -> Path:
    """Degraded copies of ``count`` images of ``manifest`` per kind, cycling through ``strengths``.

    Writes ``out_dir/degraded/<name>_<kind>_<strength>.jpg`` and ``out_dir/degradation_manifest.csv``
    every source once with ``degradation=none`` and each copy with its kind and strength, same
    labels, patient and split as its source (wrong-type images keep them too: the grader
    should reject them before any label matters). Deterministic in ``seed``.
    """
    if count < 1 or not strengths or not all(0.0 < s <= 1.0 for s in strengths):
        raise ConfigError(f"need count >= 1 and strengths in (0, 1], got {count} and {list(strengths)}")
    records = read_manifest(manifest, catalog=catalog)
    out = Path(out_dir).resolve()
    folder = out / "degraded"
    folder.mkdir(parents=True, exist_ok=True)
    rows: dict[Path, Record] = {}
    copies: list[Record] = []
    for k, kind in enumerate(parse_kinds(",".join(kinds))):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7, k)))
        for i, index in enumerate(rng.permutation(len(records))[:count]):
            source = records[int(index)]
            strength = 1.0 if kind in WRONG_TYPE else float(strengths[i % len(strengths)])
            path = folder / f"{source.path.stem}_{kind}_{strength:.2f}.jpg"
            with Image.open(source.path) as im:
                degraded = degrade(im, kind, strength=strength, rng=rng)
            degraded.save(path, "JPEG", quality=92)
            rows.setdefault(source.path, _tagged(source, source.path, NONE, 0.0))
            copies.append(_tagged(source, path, kind, strength, relpath(source.path, out)))
    return write_manifest(out / DEGRADED_MANIFEST, [*rows.values(), *copies], catalog=catalog)


def _tagged(source: Record, path: Path, kind: str, strength: float, origin: str | None = None) -> Record:
    extra = {**source.extra, "degradation": kind, "degradation_strength": f"{strength:.2f}"}
    if origin is not None:
        extra["source"] = origin  # the clean image, relative to the degradation manifest
    return Record(
        path=path, labels=source.labels, patient_id=source.patient_id, eye=source.eye, split=source.split, extra=extra
    )
