"""Fundus-respecting augmentation, applied to tensors AFTER the one shared preprocessing.

The preprocessing (``predilect.preprocess``) has already cropped the field of view (FOV, the
fundus disc) to a centred square and normalised it; augmentation works on that tensor so that
evaluation and serving (which never augment) see exactly the preprocessed pixels. Per image:

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
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from predilect.errors import ConfigError
from predilect.preprocess import PreprocessCfg


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

    def __post_init__(self) -> None:
        if not 0.0 <= self.mirror_p <= 1.0:
            raise ConfigError(f"mirror_p must lie in [0, 1], got {self.mirror_p}")
        if not 0.0 <= self.rotate_deg <= 45.0:
            raise ConfigError(f"rotate_deg must lie in [0, 45] (keeps the disc whole), got {self.rotate_deg}")
        for name in ("scale", "brightness", "contrast", "gamma"):
            if not 0.0 <= getattr(self, name) < 0.5:
                raise ConfigError(f"{name} must lie in [0, 0.5), got {getattr(self, name)}")


class FundusAugment:
    """Callable ``(pixels [3,S,S] normalised, rng) -> pixels``, for tensors made by ``preprocess``."""

    def __init__(self, cfg: AugmentCfg, preprocess: PreprocessCfg) -> None:
        self.cfg = cfg
        self._mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(preprocess.std, dtype=torch.float32).view(3, 1, 1)
        self._fov_level = preprocess.fov_threshold / 255.0

    def __call__(self, pixels: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
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
