"""Fundus-respecting augmentation: a camera's physics on the decoded image, then geometry and jitter on the tensor.

The preprocessing (``predilect.preprocess``) has already cropped the field of view (FOV, the
fundus disc) to a centred square and normalised it; augmentation works from that so that
evaluation and serving (which never augment) see exactly the preprocessed pixels, and an item
that is not augmented is exactly the served tensor.

**Acquisition** (``AcquisitionCfg``, off unless enabled): with probability ``p`` an item is
re-photographed through a random camera before preprocessing. It starts from the item's field
square at ``source_px`` (the same decode and crop, ``FundusDataset.square``) and applies, in the
order a camera does (``predilect.training.acquisition``): a field-stop change (circle cut at top and
bottom, frame-filling crop, orientation notch, off-centre field, a narrower field angle), defocus,
fall-off towards the rim, resampling to fewer pixels, exposure and an illuminant's colour temperature against the white
balance (Planck), shot and read noise, a tone-curve gamma, and JPEG at a random quality with 4:2:0
chroma (or lossless PNG); the photograph then goes through the served preprocessing itself
(``Preprocessor``), which resizes it (back up, where it was made smaller) to the model's input.

**Then, on the tensor**, per image:

* mirror (probability ``mirror_p``): a horizontally flipped right fundus looks like a left one;
* a small rotation (``rotate_deg``) and scale (``scale``) about the disc centre, which is where
  the preprocessing put the FOV, so the disc stays inside the frame; what rotates in is black;
* gamma, brightness and contrast jitter inside the FOV only: the black surround stays black, so
  a model cannot learn from the mask.

All draws come from the ``numpy`` generator the caller passes (the datasets derive it from
``(seed, epoch, index)``), so an image is augmented the same way whatever worker, process or
resume serves it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from predilect.errors import ConfigError
from predilect.png import encode_png
from predilect.preprocess import InvalidImageError, PreprocessCfg
from predilect.training.acquisition import (
    SUBSAMPLINGS,
    defocus,
    expose,
    jpeg_bytes,
    planck_gains,
    vignette_shade,
)

FIELD_SHAPES = ("cut", "fill", "notch", "offcentre", "narrow")
"""Field-stop changes: a circle cut at top and bottom (a 3:2 frame), a crop filling the frame, an
orientation notch at the rim, the field off-centre (as a handheld camera holds it), and a narrower
field angle (``NARROW_FIELD``: the smaller circle of retina such a camera sees, at the scale the served
preprocessing gives it once the camera's field angle is sent, ``PreprocessCfg.crop_scale``)."""
NARROW_FIELD = (0.4, 1.0)
"""The narrow field's diameter in field diameters: down to 18 degrees of a 45-degree model, the field of
a direct ophthalmoscope on a smartphone (the narrowest fundus cameras screening programmes use)."""


@dataclass(frozen=True)
class AcquisitionCfg:
    """The acquisition-shift policy: a random camera per re-photographed item (see the module docstring)."""

    enabled: bool = field(default=False, metadata={"help": "re-photograph training images through random cameras"})
    p: float = field(default=0.5, metadata={"help": "probability an item is re-photographed"})
    source_px: int = field(default=256, metadata={"help": "side of the field square the camera starts from, px"})
    field_p: float = field(default=0.5, metadata={"help": "probability of a field-stop change"})
    field_shapes: tuple[str, ...] = field(default=FIELD_SHAPES, metadata={"help": f"among {', '.join(FIELD_SHAPES)}"})
    defocus_p: float = field(default=0.5, metadata={"help": "probability of defocus"})
    defocus: float = field(default=0.005, metadata={"help": "largest defocus sigma, in field diameters"})
    vignette: float = field(default=0.5, metadata={"help": "largest fall-off at the field's rim (share of light lost)"})
    rescale: tuple[float, float] = field(
        default=(0.4, 1.0), metadata={"help": "the square resampled to this share of source_px (fewer pixels)"}
    )
    exposure: tuple[float, float] = field(
        default=(0.6, 1.3), metadata={"help": "exposure gain range, linear light (drawn log-uniform)"}
    )
    illuminant_k: tuple[float, float] = field(
        default=(3000.0, 7500.0), metadata={"help": "illuminant colour temperatures, K (drawn uniform in mired)"}
    )
    white_balance_k: float = field(default=5500.0, metadata={"help": "the colour temperature the camera balances for"})
    electrons: tuple[float, float] = field(
        default=(300.0, 30000.0), metadata={"help": "electrons a level of 255 collects per pixel (log-uniform)"}
    )
    read_noise_e: float = field(default=3.0, metadata={"help": "read noise, electrons"})
    gamma: float = field(default=0.15, metadata={"help": "largest |log| of the tone curve's exponent"})
    jpeg_p: float = field(default=0.8, metadata={"help": "probability of a JPEG (else lossless PNG)"})
    jpeg_quality: tuple[int, int] = field(default=(25, 95), metadata={"help": "JPEG quality range"})
    subsampling: str = field(default="4:2:0", metadata={"help": f"JPEG chroma subsampling, one of {SUBSAMPLINGS}"})

    def __post_init__(self) -> None:
        for name in ("p", "field_p", "defocus_p", "jpeg_p", "vignette"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"acquisition.{name} must lie in [0, 1], got {getattr(self, name)}")
        unknown = sorted(set(self.field_shapes) - set(FIELD_SHAPES))
        if unknown or not self.field_shapes:
            raise ConfigError(f"acquisition.field_shapes must be among {FIELD_SHAPES}, got {list(self.field_shapes)}")
        if self.source_px < 96:
            raise ConfigError(f"acquisition.source_px must be >= 96, got {self.source_px}")
        if not 0.0 <= self.defocus <= 0.05:
            raise ConfigError(f"acquisition.defocus must lie in [0, 0.05] field diameters, got {self.defocus}")
        if not 0.0 <= self.gamma < 1.0 or self.read_noise_e < 0:
            raise ConfigError("acquisition.gamma must lie in [0, 1) and read_noise_e be >= 0")
        if self.subsampling not in SUBSAMPLINGS:
            raise ConfigError(f"acquisition.subsampling must be one of {SUBSAMPLINGS}, got {self.subsampling!r}")
        ranges = {
            "rescale": (0.1, 1.0),
            "exposure": (0.05, 20.0),
            "illuminant_k": (1000.0, 20000.0),
            "electrons": (1.0, 1e7),
            "jpeg_quality": (1, 95),
        }
        for name, (low, high) in ranges.items():
            a, b = getattr(self, name)
            if not low <= a <= b <= high:
                raise ConfigError(f"acquisition.{name} must be {low} <= low <= high <= {high}, got {(a, b)}")


@dataclass(frozen=True)
class Shot:
    """One random camera: every draw of ``AcquisitionCfg``, made whether or not each step applies."""

    fire: bool
    shape: str | None
    shape_draws: tuple[float, float, float]
    blur: float  # sigma, field diameters
    vignette: float
    scale: float
    exposure: float
    illuminant_k: float
    electrons: float
    gamma: float
    quality: int | None  # None: PNG
    noise_seed: int


def draw_shot(cfg: AcquisitionCfg, rng: np.random.Generator) -> Shot:
    """A random camera of ``cfg`` from ``rng``; the same number of draws whatever comes out."""
    fire = rng.random() < cfg.p
    shape_on = rng.random() < cfg.field_p
    shape = cfg.field_shapes[int(rng.integers(len(cfg.field_shapes)))]
    shape_draws = (float(rng.random()), float(rng.random()), float(rng.random()))
    blur_on = rng.random() < cfg.defocus_p
    blur = float(rng.uniform(0.0, cfg.defocus))
    vignette = float(rng.uniform(0.0, cfg.vignette))
    scale = float(rng.uniform(*cfg.rescale))
    exposure = float(math.exp(rng.uniform(math.log(cfg.exposure[0]), math.log(cfg.exposure[1]))))
    mired = rng.uniform(1e6 / cfg.illuminant_k[1], 1e6 / cfg.illuminant_k[0])
    electrons = float(math.exp(rng.uniform(math.log(cfg.electrons[0]), math.log(cfg.electrons[1]))))
    gamma = float(math.exp(rng.uniform(-cfg.gamma, cfg.gamma)))
    jpeg_on = rng.random() < cfg.jpeg_p
    quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    noise_seed = int(rng.integers(0, 2**63 - 1))
    return Shot(
        fire=bool(fire),
        shape=shape if shape_on else None,
        shape_draws=shape_draws,
        blur=blur if blur_on else 0.0,
        vignette=vignette,
        scale=scale,
        exposure=exposure,
        illuminant_k=float(1e6 / mired),
        electrons=electrons,
        gamma=gamma,
        quality=quality if jpeg_on else None,
        noise_seed=noise_seed,
    )


def narrow_diameter(draw: float) -> float:
    """The ``narrow`` field's diameter in field diameters for a uniform ``draw`` in [0, 1)."""
    low, high = NARROW_FIELD
    return low + (high - low) * draw


def _distance_from_centre(side: int) -> np.ndarray:
    c = np.arange(side, dtype=np.float32) + 0.5 - side / 2
    return np.hypot(c[None, :], c[:, None])


def shot_field_angle(shot: Shot, model_angle_deg: float | None) -> float | None:
    """The field angle the served preprocessing is told for ``shot``'s photograph: a narrow field's, else None."""
    if shot.shape != "narrow" or model_angle_deg is None:
        return None
    return model_angle_deg * narrow_diameter(shot.shape_draws[0])


def reshape_field(square: np.ndarray, shape: str | None, draws: tuple[float, float, float]) -> np.ndarray:
    """The field square (HxWx3 uint8, the field filling it) seen through another field stop."""
    if shape is None:
        return square
    side = square.shape[0]
    a, b, c = draws
    out = square.copy()
    if shape == "cut":  # a 3:2 frame cuts the circle at top and bottom
        half = round((0.35 + 0.12 * a) * side)
        out[: side // 2 - half] = 0
        out[side // 2 + half :] = 0
    elif shape == "fill":  # a crop inside the field: magnified, the black surround gone
        zoom = 1.2 + 0.3 * a
        inner = round(side / zoom)
        start = (side - inner) // 2
        crop = Image.fromarray(square[start : start + inner, start : start + inner])
        out = np.asarray(crop.resize((side, side), Image.Resampling.BILINEAR)).copy()
        half = round((0.375 + 0.125 * b) * side)  # the frame's own aspect, 4:3 to square
        out[: side // 2 - half] = 0
        out[side // 2 + half :] = 0
    elif shape == "notch":
        angle = 2.0 * math.pi * a
        size = 0.05 * side
        x, y = side / 2 + 0.47 * side * math.cos(angle), side / 2 - 0.47 * side * math.sin(angle)
        image = Image.fromarray(out)
        ImageDraw.Draw(image).rectangle((x - size / 2, y - size / 2, x + size / 2, y + size / 2), fill=(0, 0, 0))
        out = np.asarray(image).copy()
    elif shape == "narrow":
        out[_distance_from_centre(side) > narrow_diameter(a) * side / 2] = 0
    elif shape == "offcentre":
        shift = 0.08 * side * math.sqrt(a)
        dx, dy = round(shift * math.cos(2 * math.pi * b)), round(shift * math.sin(2 * math.pi * b))
        out = np.zeros_like(square)
        ys, xs = slice(max(0, dy), side + min(0, dy)), slice(max(0, dx), side + min(0, dx))
        out[ys, xs] = square[max(0, -dy) : side - max(0, dy), max(0, -dx) : side - max(0, dx)]
    return out


def photograph(square: np.ndarray, shot: Shot, cfg: AcquisitionCfg) -> bytes:
    """The encoded photograph a ``shot`` camera takes of a field square (HxWx3 uint8): JPEG or PNG bytes."""
    side = square.shape[0]
    image = Image.fromarray(reshape_field(square, shot.shape, shot.shape_draws))
    image = defocus(image, shot.blur * side)
    levels = np.asarray(image, dtype=np.float32)
    if shot.vignette > 0:
        levels = levels * vignette_shade((side, side), (side / 2, side / 2), side / 2, shot.vignette)[..., None]
    pixels = Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8))
    small = max(16, round(side * shot.scale))
    if small != side:
        pixels = pixels.resize((small, small), Image.Resampling.BILINEAR, reducing_gap=None)
    gains = planck_gains(shot.illuminant_k, cfg.white_balance_k) * np.float32(shot.exposure)
    sensor = {"full_well_e": shot.electrons, "read_noise_e": cfg.read_noise_e, "signal": 1.0}
    exposed = expose(np.asarray(pixels), gains, **sensor, gamma=shot.gamma, rng=np.random.default_rng(shot.noise_seed))
    photo = Image.fromarray(exposed, "RGB")
    if shot.quality is None:
        return encode_png(np.asarray(photo), compression_level=1)
    return jpeg_bytes(photo, quality=shot.quality, subsampling=cfg.subsampling)


@dataclass(frozen=True)
class AugmentCfg:
    """Augmentation strengths; ``AugmentCfg(enabled=False)`` (or ``augment=None``) turns it off."""

    enabled: bool = field(default=True, metadata={"help": "augment training images"})
    mirror_p: float = field(default=0.5, metadata={"help": "probability of a horizontal mirror (the other eye)"})
    rotate_deg: float = field(default=10.0, metadata={"help": "largest rotation about the disc centre, degrees"})
    scale: float = field(default=0.05, metadata={"help": "largest relative zoom in or out"})
    brightness: float = field(default=0.1, metadata={"help": "largest relative brightness change"})
    contrast: float = field(default=0.1, metadata={"help": "largest relative contrast change"})
    gamma: float = field(default=0.1, metadata={"help": "largest |log gamma|"})
    acquisition: AcquisitionCfg = field(default_factory=AcquisitionCfg)

    def __post_init__(self) -> None:
        if not 0.0 <= self.mirror_p <= 1.0:
            raise ConfigError(f"mirror_p must lie in [0, 1], got {self.mirror_p}")
        if not 0.0 <= self.rotate_deg <= 45.0:
            raise ConfigError(f"rotate_deg must lie in [0, 45] (keeps the disc whole), got {self.rotate_deg}")
        for name in ("scale", "brightness", "contrast", "gamma"):
            if not 0.0 <= getattr(self, name) < 0.5:
                raise ConfigError(f"{name} must lie in [0, 0.5), got {getattr(self, name)}")


class FundusAugment:
    """Callable ``(pixels [3,S,S] normalised, rng, source=...) -> pixels``, for tensors made by ``preprocess``.

    ``source`` (with the acquisition policy on) returns the item's field square at ``source_px``
    (HxWx3 uint8); it is called only for an item the policy re-photographs."""

    def __init__(self, cfg: AugmentCfg, preprocess: PreprocessCfg) -> None:
        self.cfg = cfg
        self.preprocess = preprocess
        self._mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(preprocess.std, dtype=torch.float32).view(3, 1, 1)
        self._fov_level = preprocess.fov_threshold / 255.0
        self._served: Any = None  # the Preprocessor photographs go through, opened on first use

    @property
    def source_px(self) -> int | None:
        """The side of the field square the acquisition policy starts from; None when it is off."""
        on = self.cfg.enabled and self.cfg.acquisition.enabled
        return self.cfg.acquisition.source_px if on else None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_served"] = None  # one per worker process
        return state

    def rephotograph(self, square: np.ndarray, shot: Shot) -> torch.Tensor | None:
        """The served tensor of the photograph ``shot`` takes of ``square``; None if preprocessing refuses it."""
        if self._served is None:
            from predilect.preprocess import Preprocessor

            self._served = Preprocessor(self.preprocess, max_batch_size=1, num_threads=1)
        angle = shot_field_angle(shot, self.preprocess.field_angle_deg)
        encoded = photograph(square, shot, self.cfg.acquisition)
        (out,) = self._served.run([encoded], field_angles_deg=[angle]).per_payload()
        return None if isinstance(out, InvalidImageError) else torch.from_numpy(np.array(out))

    def __call__(
        self, pixels: torch.Tensor, rng: np.random.Generator, *, source: Callable[[], np.ndarray] | None = None
    ) -> torch.Tensor:
        cfg = self.cfg
        if not cfg.enabled:
            return pixels
        # Every draw happens, used or not, so the stream does not depend on the outcomes.
        mirror = rng.random() < cfg.mirror_p
        angle = math.radians(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
        zoom = 1.0 + rng.uniform(-cfg.scale, cfg.scale)
        gamma = math.exp(rng.uniform(-cfg.gamma, cfg.gamma))
        brightness = 1.0 + rng.uniform(-cfg.brightness, cfg.brightness)
        contrast = 1.0 + rng.uniform(-cfg.contrast, cfg.contrast)
        shot = draw_shot(cfg.acquisition, rng) if cfg.acquisition.enabled else None
        if shot is not None and shot.fire and source is not None:
            photographed = self.rephotograph(source(), shot)
            pixels = pixels if photographed is None else photographed

        image = (pixels * self._std + self._mean).clamp(0.0, 1.0)  # back to [0, 1] intensities
        fov = (image.amax(dim=0, keepdim=True) > self._fov_level).to(image.dtype)
        if mirror:
            image, fov = image.flip(-1), fov.flip(-1)
        if angle or zoom != 1.0:
            image, fov = _rotate_zoom(torch.cat([image, fov]), angle, zoom).split([3, 1])
            fov = (fov > 0.5).to(image.dtype)
        image = image.clamp(0.0, 1.0)
        inside = fov.bool().expand_as(image)
        jittered = image**gamma
        level = jittered[inside].mean() if inside.any() else image.new_tensor(0.0)
        jittered = (((jittered - level) * contrast + level) * brightness).clamp(0.0, 1.0)
        image = torch.where(inside, jittered, image)  # the surround keeps its (black) pixels
        return (image - self._mean) / self._std


def _rotate_zoom(channels: torch.Tensor, angle: float, zoom: float) -> torch.Tensor:
    """Rotate by ``angle`` radians and zoom by ``zoom`` about the centre; zeros flow in."""
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    theta = channels.new_tensor([[cos, -sin, 0.0], [sin, cos, 0.0]]).unsqueeze(0)
    grid = F.affine_grid(theta, [1, *channels.shape], align_corners=False)
    return F.grid_sample(channels.unsqueeze(0), grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
