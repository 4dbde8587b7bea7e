"""Render one fundus photograph or one OCT B-scan from the registry, with where lesions were drawn.

``style=None`` is the easy preset: the original fixed lesion ranges and camera, the same
pixels for the same seed. A ``FundusStyle`` / ``OctStyle`` is the hard preset's per-image
choices (severity per disease, camera profile, confounders, cup ratio), decided and recorded
by the caller (``generate``) so a manifest can say what each image shows. A style with an
``acquisition`` (a profile of the camera zoo, ``cameras``) paints the scene on the working
canvas it is given and returns the photograph that camera takes of it, at the camera's frame.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from predilect.contract import EYES
from predilect.training.phantom.cameras import Acquisition, acquire, field_centre, fovea_shift, profile_stream
from predilect.training.phantom.fundus import (
    Anatomy,
    CameraProfile,
    Findings,
    Lesion,
    apply_camera,
    check_args,
    colour_cast,
    fov_mask,
    paint_background,
    paint_disc,
    paint_vessels,
    sample_anatomy,
)
from predilect.training.phantom.fundus_lesions import CONFOUNDERS
from predilect.training.phantom.oct import MIN_HEIGHT, MIN_WIDTH, normal_scan, scan_image
from predilect.training.phantom.registry import DISEASES, REGISTRY, PhantomDisease

_EXTRA_STREAM = 10_000  # lesion-seed sub-streams beyond the diseases' own: confounders, camera


@dataclass(frozen=True)
class FundusStyle:
    """The hard preset's choices for one photograph."""

    severity: Mapping[str, float] | None = field(default_factory=dict)  # per disease; missing: 1; None: easy's
    profile: CameraProfile = CameraProfile("reference")
    confounders: tuple[str, ...] = ()
    cup_ratio: float | None = None  # the healthy cup; None keeps the anatomy's
    acquisition: Acquisition | None = None  # a zoo camera (replaces ``profile``): see ``cameras.acquire``


@dataclass(frozen=True)
class OctStyle:
    """The hard preset's choices for one B-scan."""

    severity: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class FundusDrawing:
    """A rendered photograph, its anatomy, and where lesions and confounders were drawn (pixels).

    The anatomy and the lesions are in the pixels of the canvas painted (``anatomy.width`` x
    ``anatomy.height``); a zoo camera's ``image`` is its own frame, of the same aspect."""

    image: Image.Image
    anatomy: Anatomy
    lesions: tuple[Lesion, ...]
    confounders: tuple[Lesion, ...]


@dataclass(frozen=True)
class OctDrawing:
    """A rendered B-scan and its lesions as (disease, x, y, r) in fractions of width / height / width."""

    image: Image.Image
    lesions: tuple[tuple[str, float, float, float], ...]
    fovea: float  # column fraction of the fovea (after mirroring a left eye)
    dd: float  # one disc diameter as a fraction of the width


def _check_labels(labels: frozenset[str]) -> None:
    unknown = sorted(set(labels) - set(DISEASES))
    if unknown:
        raise ValueError(f"cannot render disease ids {unknown}; the phantom knows {list(DISEASES)}")


def _child_seeds(rng: np.random.Generator) -> np.ndarray:
    """Three seeds drawn first, whatever the labels: anatomy, camera, lesions (OCT: scan, image, lesions).

    So the same ``rng`` state gives the same eye with and without disease.
    """
    return rng.integers(0, 2**63 - 1, size=3)


def _drawn(
    labels: frozenset[str], severity: Mapping[str, float] | None, lesion_seed: np.integer
) -> Iterator[tuple[PhantomDisease, np.random.Generator, float | None]]:
    """The diseases of ``labels`` in the registry's fixed order, each with its own random stream
    (``[lesion_seed, its index]``) and its severity (None: the easy preset; missing: 1)."""
    for i, disease in enumerate(DISEASES):
        if disease in labels:
            level = None if severity is None else severity.get(disease, 1.0)
            yield REGISTRY[disease], np.random.default_rng([int(lesion_seed), i]), level


def fundus_anatomy(
    rng: np.random.Generator,
    *,
    width: int = 2048,
    height: int = 1536,
    eye: str = "R",
    profile: CameraProfile | None = None,
) -> Anatomy:
    """The anatomy ``draw_fundus`` would draw from an ``rng`` in the same state (and camera profile)."""
    return _anatomy(_child_seeds(rng)[0], width=width, height=height, eye=eye, profile=profile)


def _anatomy(seed: np.integer, *, width: int, height: int, eye: str, profile: CameraProfile | None) -> Anatomy:
    p = profile or CameraProfile("reference")
    return sample_anatomy(
        np.random.default_rng(seed),
        width=width,
        height=height,
        eye=eye,
        fov_diameter=p.fov_diameter,
        disc_fraction=p.disc_fraction,
    )


def draw_fundus(
    labels: frozenset[str],
    *,
    rng: np.random.Generator,
    width: int = 2048,
    height: int = 1536,
    eye: str = "R",
    style: FundusStyle | None = None,
) -> FundusDrawing:
    """A synthetic colour fundus photograph of ``eye`` showing ``labels``, and where it drew them."""
    _check_labels(labels)
    check_args(width, height, eye)
    profile = style.profile if style else CameraProfile("reference")
    zoo = style.acquisition if style else None
    anatomy_seed, camera_seed, lesion_seed = _child_seeds(rng)
    shot = None
    if zoo is None:
        anatomy = _anatomy(anatomy_seed, width=width, height=height, eye=eye, profile=profile)
    else:
        shot = np.random.default_rng([int(lesion_seed), _EXTRA_STREAM + 2, profile_stream(zoo)])
        anatomy = sample_anatomy(
            np.random.default_rng(anatomy_seed),
            width=width,
            height=height,
            eye=eye,
            fov_diameter=zoo.circle_diameter,
            disc_fraction=zoo.disc_fraction,
            centre=field_centre(zoo, (width, height), shot),
            fovea_shift=fovea_shift(zoo),
            vessels_to_rim=True,
        )
    camera = np.random.default_rng(camera_seed)
    findings = Findings(cup_ratio=anatomy.cup_ratio if style is None or style.cup_ratio is None else style.cup_ratio)
    for entry, rng_of_disease, severity in _drawn(labels, None if style is None else style.severity, lesion_seed):
        findings.disease = entry.id
        entry.fundus(findings, anatomy, rng_of_disease, severity)
    n_lesions = len(findings.lesions)
    for kind in style.confounders if style else ():
        findings.disease = kind
        stream = [int(lesion_seed), _EXTRA_STREAM, list(CONFOUNDERS).index(kind)]
        CONFOUNDERS[kind](findings, anatomy, np.random.default_rng(stream))
    image = paint_background(anatomy, camera)
    for layer in findings.under_vessels:
        layer.apply(image)
    paint_disc(image, anatomy, findings.cup_ratio, camera)
    paint_vessels(image, anatomy, findings)
    for layer in (*findings.layers, *findings.over_vessels):
        layer.apply(image)
    image = colour_cast(image, camera)
    lesions, confounders = tuple(findings.lesions[:n_lesions]), tuple(findings.lesions[n_lesions:])
    if zoo is not None and shot is not None:
        return FundusDrawing(acquire(image, anatomy, zoo, shot), anatomy, lesions, confounders)
    if style is not None:
        image = apply_camera(image, anatomy, profile, np.random.default_rng([int(lesion_seed), _EXTRA_STREAM + 1]))
    image = Image.composite(image, Image.new("RGB", image.size), fov_mask(width, height, profile.fov_diameter))
    return FundusDrawing(image, anatomy, lesions, confounders)


def render_fundus(
    labels: frozenset[str],
    *,
    rng: np.random.Generator,
    width: int = 2048,
    height: int = 1536,
    eye: str = "R",
    style: FundusStyle | None = None,
) -> Image.Image:
    """A synthetic colour fundus photograph (RGB) of ``eye`` showing the diseases in ``labels``."""
    return draw_fundus(labels, rng=rng, width=width, height=height, eye=eye, style=style).image


def draw_oct(
    labels: frozenset[str],
    *,
    rng: np.random.Generator,
    width: int = 512,
    height: int = 256,
    eye: str = "R",
    style: OctStyle | None = None,
) -> OctDrawing:
    """A synthetic OCT B-scan ("L") through fovea and disc showing ``labels``, and where it drew them."""
    _check_labels(labels)
    if eye not in EYES:
        raise ValueError(f"eye must be one of {EYES}, got {eye!r}")
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        raise ValueError(f"scan must be at least {MIN_WIDTH}x{MIN_HEIGHT}, got {width}x{height}")
    scan_seed, image_seed, lesion_seed = _child_seeds(rng)
    scan = normal_scan(np.random.default_rng(scan_seed), width, height)
    for entry, rng_of_disease, severity in _drawn(labels, None if style is None else style.severity, lesion_seed):
        scan.disease = entry.id
        entry.oct(scan, rng_of_disease, severity)
    image, lesions = scan_image(scan, np.random.default_rng(image_seed))
    fovea = scan.fovea
    if eye == "L":
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        lesions = [(d, 1.0 - x, y, r) for d, x, y, r in lesions]
        fovea = 1.0 - fovea
    return OctDrawing(image, tuple(lesions), fovea, scan.dd)


def render_oct(
    labels: frozenset[str],
    *,
    rng: np.random.Generator,
    width: int = 512,
    height: int = 256,
    eye: str = "R",
    style: OctStyle | None = None,
) -> Image.Image:
    """A synthetic OCT B-scan ("L" mode) through fovea and disc showing the diseases in ``labels``."""
    return draw_oct(labels, rng=rng, width=width, height=height, eye=eye, style=style).image
