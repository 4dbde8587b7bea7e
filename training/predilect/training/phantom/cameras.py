"""The camera zoo: acquisition profiles from desktop to smartphone, and the split training may see.

``cameras.toml`` beside this module is the one source of both: each profile's physics (field angle,
frame, field shape, optics, illumination, sensor, export) and the ``[split]`` of every camera name
the phantom knows into ``SEEN`` (training, validation, gradability calibration) and ``HELD_OUT``
(test photographs only). The older presets' profiles (``presets.CAMERAS``) are named in the split too.

A zoo photograph is made in two steps. The scene -- anatomy, lesions, the eye's own colour -- is
painted at a working resolution (``work_size``: at most ``render_height`` pixels high, the frame's
aspect), with the profile's field geometry; ``acquire`` then photographs it: optics (defocus,
fall-off), the field stop (circle, cut circle, frame-filling, ellipse, notch, lids and lashes),
resampling to the profile's frame (the sensor's pixels; up to 6 MP), the capture band (colour,
two-laser pseudo-colour, red-free green), illumination colour against the white balance, shot and
read noise, the tone curve, a burned-in date; ``encode`` writes the JPEG (quality, chroma
subsampling, later re-encodings). Rendering at a working resolution keeps generation cost sane:
the painted detail is that of the working canvas, while noise, text and JPEG are those of the
full frame -- and preprocessing reads a 128-224 px square of it either way.
"""

from __future__ import annotations

import datetime
import math
import sys
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from predilect.errors import ConfigError
from predilect.manifest import CAPTURES
from predilect.training.acquisition import (
    SUBSAMPLINGS,
    defocus,
    expose,
    jpeg_bytes,
    jpeg_roundtrip,
    planck_gains,
    to_uint8,
    vignette_shade,
)
from predilect.training.phantom.fundus import DISC_DIAMETER, FOV_DIAMETER, REFERENCE_RADIUS, Anatomy, Point

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ZOO_FILE = Path(__file__).with_name("cameras.toml")
DISC_ANGLE_DEG = 45.0 * DISC_DIAMETER
"""The optic disc's angular size: a 45-degree field spans 8 disc diameters (``fundus.DISC_DIAMETER``)."""
FIELDS = ("circle", "cut", "fill", "ellipse")
CENTRES = ("fovea", "midpoint")
NOTCH_ANGLE_DEG = 60.0  # where an orientation notch sits on the rim, degrees anticlockwise from 3 o'clock
NOTCH_SIZE = 0.05  # its side, in field diameters
TEXT_HEIGHT = 0.028  # a burned-in date's glyph height, in frame heights
MIDPOINT_SHIFT_DD = 1.25  # half the disc-fovea distance: the field centred between them


Range = tuple[float, float]


@dataclass(frozen=True)
class Acquisition:
    """One camera profile of the zoo; ``cameras.toml`` gives the units and what each rests on."""

    name: str
    kind: str
    basis: str
    capture: str = "colour"
    frame: tuple[int, int] = (2048, 1536)
    field_angle_deg: float = 45.0
    field: str = "circle"
    field_diameter: float = FOV_DIAMETER
    field_aspect: float = 1.0
    notch: bool = False
    centre_on: str = "fovea"
    off_centre: float = 0.0
    blur: float = 0.0
    vignette: float = 0.0
    lashes: float = 0.0
    illuminant_k: Range = (5500.0, 5500.0)
    white_balance_k: float = 5500.0
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    exposure: Range = (1.0, 1.0)
    gamma: float = 1.0
    band_gain: float = 1.0
    full_well_e: float = 20000.0
    read_noise_e: float = 3.0
    signal: float = 0.5
    text: bool = False
    grey_as_rgb: bool = False
    jpeg_quality: tuple[int, int] = (90, 95)
    subsampling: str = "4:2:0"
    reencode: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        where = f"camera profile {self.name!r}"
        w, h = self.frame
        if min(w, h) < 64 or w < h:
            raise ConfigError(f"{where}: frame must be landscape and at least 64 px a side, got {w}x{h}")
        if self.capture not in CAPTURES:
            raise ConfigError(f"{where}: capture must be one of {CAPTURES}, got {self.capture!r}")
        if self.centre_on not in CENTRES:
            raise ConfigError(f"{where}: centre_on must be one of {CENTRES}, got {self.centre_on!r}")
        if self.subsampling not in SUBSAMPLINGS:
            raise ConfigError(f"{where}: subsampling must be one of {SUBSAMPLINGS}, got {self.subsampling!r}")
        if not 10.0 <= self.field_angle_deg <= 220.0:
            raise ConfigError(f"{where}: field_angle_deg must lie in [10, 220], got {self.field_angle_deg}")
        qualities = (*self.jpeg_quality, *self.reencode)
        if not all(1 <= q <= 95 for q in qualities) or self.jpeg_quality[0] > self.jpeg_quality[1]:
            raise ConfigError(f"{where}: JPEG qualities must lie in [1, 95], low <= high, got {qualities}")
        for name in ("illuminant_k", "exposure"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ConfigError(f"{where}: {name} must be 0 < low <= high, got {(low, high)}")
        if min(self.full_well_e, self.signal, self.band_gain) <= 0 or self.read_noise_e < 0 or self.signal > 1:
            raise ConfigError(f"{where}: full_well_e, band_gain > 0, read_noise_e >= 0 and signal in (0, 1] needed")
        if self.field not in FIELDS:
            raise ConfigError(f"{where}: field must be one of {FIELDS}, got {self.field!r}")
        shape = _field_shape(self)
        if shape != self.field:
            raise ConfigError(
                f"{where}: field {self.field!r} does not match its geometry (diameter {self.field_diameter} frame "
                f"heights, aspect {self.field_aspect}, frame {w}x{h}: that is a {shape!r} field)"
            )

    @property
    def disc_fraction(self) -> float:
        """Disc diameter over the field's (horizontal) diameter: a wider field angle shrinks the retina."""
        return DISC_ANGLE_DEG / self.field_angle_deg

    @property
    def circle_diameter(self) -> float:
        """The field's horizontal diameter in frame heights (the anatomy's field-of-view circle)."""
        return self.field_diameter * self.field_aspect

    def work_size(self, render_height: int) -> tuple[int, int]:
        """The working canvas a scene is painted on: the frame's aspect, at most ``render_height`` high."""
        w, h = self.frame
        height = min(h, render_height)
        return max(height, round(w * height / h)), height

    def scaled(self, max_side: int | None) -> Acquisition:
        """This profile with its frame scaled down (aspect kept) so that no side exceeds ``max_side``
        (None: unchanged): for quick runs and tests, never for the measurements the zoo is for."""
        w, h = self.frame
        if max_side is None or max(w, h) <= max_side:
            return self
        k = max_side / max(w, h)
        return replace(self, frame=(max(64, round(w * k)), max(64, round(h * k))))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _field_shape(p: Acquisition) -> str:
    """What the field stop looks like in the frame, from its geometry alone."""
    w, h = p.frame
    if p.field_aspect > 1.0:
        return "ellipse"
    if p.field_aspect < 1.0:
        return "invalid (field_aspect < 1)"
    half_diagonal = math.hypot(w / h, 1.0) / 2.0
    radius = p.field_diameter / 2.0
    if radius >= half_diagonal:
        return "fill"
    if p.field_diameter > 1.0:
        return "cut" if p.field_diameter < w / h else "invalid (cut at the sides as well)"
    return "circle"


@dataclass(frozen=True)
class Zoo:
    """The profiles of ``cameras.toml`` and its split of camera names (the older presets' included)."""

    profiles: Mapping[str, Acquisition]
    seen: tuple[str, ...]
    held_out: tuple[str, ...]

    def split_of(self, camera: str) -> str:
        """``"seen"`` or ``"held_out"``; ConfigError for a camera the split does not name."""
        if camera in self.seen:
            return "seen"
        if camera in self.held_out:
            return "held_out"
        raise ConfigError(f"camera {camera!r} is in neither list of the camera split ({ZOO_FILE.name})")


def load_zoo(path: Path = ZOO_FILE) -> Zoo:
    """Read and check a zoo file (see ``cameras.toml``); ConfigError naming the file and what is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the camera zoo: {e}") from e
    known = {f.name for f in fields(Acquisition)} - {"name"}
    profiles: dict[str, Acquisition] = {}
    for name, values in data.get("profiles", {}).items():
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{path}: profile {name!r} has unknown keys {unknown}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        profiles[name] = Acquisition(name=name, **values)
    split = data.get("split", {})
    seen, held_out = tuple(split.get("seen", ())), tuple(split.get("held_out", ()))
    both = sorted(set(seen) & set(held_out))
    if both:
        raise ConfigError(f"{path}: cameras both seen and held out: {both}")
    missing = sorted(set(profiles) - set(seen) - set(held_out))
    if missing:
        raise ConfigError(f"{path}: profiles in neither list of the split: {missing}")
    return Zoo(profiles, seen, held_out)


ZOO = load_zoo()
"""The packaged zoo."""
PROFILES: Mapping[str, Acquisition] = ZOO.profiles
SEEN: tuple[str, ...] = ZOO.seen
"""Camera names that training, validation and gradability calibration may contain."""
HELD_OUT: tuple[str, ...] = ZOO.held_out
"""Camera names held out of everything but test photographs."""


# ----------------------------------------------------------------------------- geometry


def profile_stream(profile: Acquisition) -> int:
    """A stable number per profile name, for its own random stream (so re-photographs differ per camera)."""
    return zlib.crc32(profile.name.encode())


def field_centre(profile: Acquisition, size: tuple[int, int], rng: np.random.Generator) -> Point:
    """The field's centre on the working canvas: the frame's centre, displaced up to ``off_centre``
    frame heights in a random direction (uniform over the disc of displacements)."""
    w, h = size
    angle = rng.uniform(0.0, 2.0 * math.pi)
    shift = profile.off_centre * h * math.sqrt(rng.random())
    return (w / 2.0 + shift * math.cos(angle), h / 2.0 + shift * math.sin(angle))


def fovea_shift(profile: Acquisition) -> float:
    """Disc diameters between the field centre and the fovea's usual place (see ``sample_anatomy``)."""
    return MIDPOINT_SHIFT_DD if profile.centre_on == "midpoint" else 0.0


def field_mask(size: tuple[int, int], anatomy: Anatomy, profile: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """The field stop on the working canvas, ``(H, W)`` float32 in [0, 1]: the circle or ellipse with a soft
    rim, the orientation notch, and lids and lashes (``lashes``) darkening the top and bottom."""
    w, h = size
    rx = anatomy.radius
    ry = rx / profile.field_aspect
    soft = max(1.5, 3.0 * rx / REFERENCE_RADIUS)
    cx, cy = anatomy.centre
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    draw.ellipse((cx - rx + soft, cy - ry + soft, cx + rx - soft, cy + ry - soft), fill=255)
    if profile.notch:
        side = NOTCH_SIZE * 2.0 * rx
        a = math.radians(NOTCH_ANGLE_DEG)
        nx, ny = cx + (rx - soft) * math.cos(a), cy - (ry - soft) * math.sin(a)
        draw.rectangle((nx - side / 2, ny - side / 2, nx + side / 2, ny + side / 2), fill=0)
    if profile.lashes > 0:
        _lids_and_lashes(draw, size, profile.lashes, rng)
    blurred = mask.filter(ImageFilter.GaussianBlur(soft))
    return np.asarray(blurred, dtype=np.float32) / 255.0


def _lids_and_lashes(
    draw: ImageDraw.ImageDraw, size: tuple[int, int], strength: float, rng: np.random.Generator
) -> None:
    """Upper and lower lid margins as dark arcs reaching ``0.12 * strength`` frame heights in, with lashes."""
    w, h = size
    xs = np.linspace(0, w, 32)
    for top in (True, False):
        reach = h * 0.12 * strength * rng.uniform(0.7, 1.3)
        sag = rng.uniform(0.3, 0.6) * reach
        edge = reach - sag * (1.0 - np.sin(np.pi * xs / w))  # deepest in the middle
        ys = edge if top else h - edge
        border = 0 if top else h
        points = [(0.0, float(border)), *zip(xs.tolist(), ys.tolist(), strict=True), (float(w), float(border))]
        draw.polygon(points, fill=int(255 * (1.0 - 0.85 * min(1.0, strength))))
        for _ in range(int(12 + 30 * strength)):
            x0 = rng.uniform(0, w)
            y0 = float(np.interp(x0, xs, ys))
            length = rng.uniform(0.03, 0.08) * h * (1 if top else -1)
            tip = (x0 + rng.uniform(-0.3, 0.3) * abs(length), y0 + length)
            draw.line([(x0, y0), tip], fill=40, width=max(1, h // 300))


# ----------------------------------------------------------------------------- acquisition


@dataclass(frozen=True)
class Shot:
    """The per-photograph draws of one acquisition: what ``acquire`` used (recorded for tests and reports)."""

    blur_px: float
    illuminant_k: float
    exposure: float


def acquire(scene: Image.Image, anatomy: Anatomy, profile: Acquisition, rng: np.random.Generator) -> Image.Image:
    """The photograph ``profile`` takes of ``scene`` (the painted retina on the working canvas, RGB):
    a frame of ``profile.frame`` pixels, RGB (or ``L`` for a one-channel red-free capture)."""
    image, _ = acquire_with_draws(scene, anatomy, profile, rng)
    return image


def acquire_with_draws(
    scene: Image.Image, anatomy: Anatomy, profile: Acquisition, rng: np.random.Generator
) -> tuple[Image.Image, Shot]:
    """``acquire``, with the draws it made."""
    size = scene.size
    shot = Shot(
        blur_px=profile.blur * size[1] / 1536.0 * rng.uniform(0.8, 1.2),
        illuminant_k=rng.uniform(*profile.illuminant_k),
        exposure=rng.uniform(*profile.exposure),
    )
    optics = np.asarray(defocus(scene, shot.blur_px), dtype=np.float32)
    stop = field_mask(size, anatomy, profile, rng)
    if profile.vignette > 0:
        stop = stop * vignette_shade(size, anatomy.centre, anatomy.radius, profile.vignette)
    on_sensor = Image.fromarray(to_uint8(optics * stop[..., None]), "RGB")
    if on_sensor.size != profile.frame:
        on_sensor = on_sensor.resize(profile.frame, Image.Resampling.BICUBIC)
    if profile.capture == "red_free":
        light = np.asarray(on_sensor.getchannel("G"))[..., None]
        gains = np.array([profile.band_gain * shot.exposure], np.float32)
    else:
        light = np.asarray(on_sensor)
        gains = np.asarray(profile.cast, np.float32) * np.float32(shot.exposure)
        if profile.capture == "pseudo_colour":  # red and green lasers; no blue
            gains = gains * np.array([1.0, profile.band_gain, 0.0], np.float32)
        else:
            gains = gains * planck_gains(shot.illuminant_k, profile.white_balance_k)
    sensor = {"full_well_e": profile.full_well_e, "read_noise_e": profile.read_noise_e, "signal": profile.signal}
    pixels = expose(light, gains, **sensor, gamma=profile.gamma, rng=rng)
    if profile.capture == "red_free":
        pixels = np.repeat(pixels, 3, axis=2) if profile.grey_as_rgb else pixels[..., 0]
    photo = Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB")
    if profile.text:
        _date_stamp(photo, rng, eye=anatomy.eye)
    return photo, shot


def _date_stamp(photo: Image.Image, rng: np.random.Generator, *, eye: str) -> None:
    """Burn an acquisition date, time and eye into the bottom-left corner, in place."""
    day = datetime.date(2019, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 8 * 365)))
    hour, minute = int(rng.integers(8, 18)), int(rng.integers(0, 60))
    stamp = f"{day.isoformat()} {hour:02d}:{minute:02d} {'OD' if eye == 'R' else 'OS'}"
    size = max(10, round(TEXT_HEIGHT * photo.height))
    font = ImageFont.load_default(size=size)
    margin = round(0.02 * photo.height)
    ink = 255 if photo.mode == "L" else (255, 255, 255)
    ImageDraw.Draw(photo).text((margin, photo.height - margin - size), stamp, fill=ink, font=font)


def encode(photo: Image.Image, profile: Acquisition, rng: np.random.Generator) -> bytes:
    """The JPEG file the camera writes: a quality drawn from ``jpeg_quality`` at ``subsampling``, then
    each later re-encoding of ``reencode`` (a PACS, a messaging app)."""
    quality = int(rng.integers(profile.jpeg_quality[0], profile.jpeg_quality[1] + 1))
    if profile.reencode:
        photo = jpeg_roundtrip(photo, (quality, *profile.reencode[:-1]), subsampling=profile.subsampling)
        quality = profile.reencode[-1]
    return jpeg_bytes(photo, quality=quality, subsampling=profile.subsampling)
