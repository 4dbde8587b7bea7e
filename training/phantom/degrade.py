"""Controlled degradations of fundus photographs, for calibrating a gradability step (issue 12).

``degrade(image, kind, strength=..., rng=...)`` returns a degraded copy: ``strength`` in (0, 1]
grades it from borderline to clearly ungradable. Kinds:

* ``blur``: defocus (Gaussian, sigma up to 1.2% of the frame height);
* ``dark`` / ``bright``: under- and over-exposure of the field of view;
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

from ..manifest import Record, read_manifest, write_manifest
from .render import render_oct

KINDS = ("blur", "dark", "bright", "fov", "occlusion", "dust", "reflection", "external", "oct")
WRONG_TYPE = ("external", "oct")
DEGRADED_MANIFEST = "degradation_manifest.csv"
NONE = "none"


def _fov(image: Image.Image, threshold: int = 20) -> Image.Image:
    """The illuminated field ("L", 255 inside), softened a little."""
    return image.convert("L").point(lambda v: 255 if v > threshold else 0).filter(ImageFilter.GaussianBlur(2))


def _blur(image: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(0.012 * image.height * strength * rng.uniform(0.9, 1.1)))


def _exposure(image: Image.Image, gain: float, lift: float) -> Image.Image:
    """``out = lift + (1 - lift) * gain * in`` inside the field of view (outside stays black)."""
    lut = [int(np.clip(255 * lift + (1 - lift) * gain * v, 0, 255)) for v in range(256)] * 3
    return Image.composite(image.point(lut), image, _fov(image))


def _dark(image: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    return _exposure(image, gain=1.0 - 0.85 * strength * rng.uniform(0.95, 1.05), lift=0.0)


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
    return scan.resize((width, height), Image.BILINEAR).convert("RGB")


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
