"""The phantom's presets: ``easy`` (the original data set) and ``hard`` (one that can answer questions).

``easy``: six diseases at florid, high-contrast severity, balanced prevalence, one camera,
no confounders, clean labels; the same images for the same seed as before presets existed.

``hard``: severity from a single faint lesion to florid; healthy and glaucomatous
cup-to-disc ratios overlap; confounders in any eye (drusen-like spots, laser scars, dust,
vessel reflex, tilted discs); four camera profiles, one seen only in the test split;
long-tailed prevalence; label noise in the training split only (the true labels are kept);
diseases subtle on the fundus but obvious on OCT (``oct_visible``); two categories composed
of trained concepts that appear only in val/test, for zero-shot.

``zoo``: easy's diseases and florid lesions photographed through the camera zoo (``cameras``):
training and validation eyes each by one seen profile, and every test eye re-photographed by every
profile, seen and held out, so that each camera's test set holds the same eyes.

Which cameras a preset may put in training and validation is not the preset's choice: the zoo's
split (``cameras.SEEN``) decides, and a preset naming a held-out camera there is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from predilect.errors import ConfigError
from predilect.training.phantom.cameras import HELD_OUT, PROFILES, SEEN
from predilect.training.phantom.fundus import CameraProfile
from predilect.training.phantom.fundus_lesions import CONFOUNDERS
from predilect.training.phantom.registry import REGISTRY


@dataclass(frozen=True)
class Preset:
    """What a phantom data set draws and how it is split; see the module docstring."""

    name: str
    diseases: tuple[str, ...]
    size: tuple[int, int]
    count: int
    oct_count: int
    test_fraction: float = 0.25
    val_fraction: float = 0.15
    hard: bool = False
    prevalence: Mapping[str, float] = field(default_factory=dict)  # relative weights; empty: balanced
    normal_fraction: float = 0.28
    pair_fraction: float = 0.4
    severity_beta: tuple[float, float] = (1.0, 1.0)
    cameras: Mapping[str, float] = field(default_factory=dict)  # profile name -> weight in train/val/test
    test_only_camera: str | None = None
    test_only_share: float = 0.0  # share of test patients photographed by it
    test_cameras: tuple[str, ...] = ()  # zoo profiles that re-photograph every test eye (one image each)
    render_height: int = 768  # zoo profiles: scenes are painted at most this high, then resampled to the frame
    confounder_rate: float = 0.0  # chance an eye shows confounders
    healthy_cup: tuple[float, float] = (0.31, 0.07)  # mean, sd of a healthy cup-to-disc ratio (hard only)
    label_noise: float = 0.0  # share of training images with a wrong label set
    zero_shot: tuple[str, ...] = ()  # never in the training split

    def __post_init__(self) -> None:
        unknown = sorted(set(self.diseases) - set(REGISTRY))
        if unknown:
            raise ConfigError(f"preset {self.name!r}: the phantom cannot draw {unknown}")
        if not set(self.zero_shot) <= set(self.diseases):
            raise ConfigError(f"preset {self.name!r}: zero-shot ids {self.zero_shot} must be drawn")
        cameras = {*self.cameras, *([self.test_only_camera] if self.test_only_camera else []), *self.test_cameras}
        unknown = sorted(cameras - set(CAMERAS) - set(PROFILES))
        if unknown:
            raise ConfigError(f"preset {self.name!r}: unknown camera profiles {unknown}")
        if not set(self.test_cameras) <= set(PROFILES) or (self.test_cameras and self.test_only_camera):
            raise ConfigError(f"preset {self.name!r}: test_cameras are zoo profiles, without a test_only_camera")
        if cameras & set(PROFILES) and cameras & set(CAMERAS):
            raise ConfigError(f"preset {self.name!r}: zoo profiles and the older profiles cannot be mixed")
        trained_on = sorted(set(self.cameras) - set(SEEN))
        if trained_on:
            raise ConfigError(
                f"preset {self.name!r}: cameras {trained_on} are held out of training and calibration "
                f"(the camera split: {sorted(HELD_OUT)}); name them as test cameras only"
            )
        if self.render_height < 64:
            raise ConfigError(f"preset {self.name!r}: render_height must be >= 64, got {self.render_height}")

    @property
    def oct_visible(self) -> tuple[str, ...]:
        return tuple(d for d in self.diseases if REGISTRY[d].oct_visible) if self.hard else ()

    @property
    def trained(self) -> tuple[str, ...]:
        return tuple(d for d in self.diseases if d not in self.zero_shot)

    @property
    def zoo(self) -> bool:
        """Whether this preset photographs through the camera zoo (``cameras.PROFILES``)."""
        return bool(set(self.cameras) & set(PROFILES) or self.test_cameras)

    @property
    def all_cameras(self) -> tuple[str, ...]:
        """Every camera the preset draws with, sorted."""
        return tuple(
            sorted({*self.cameras, *([self.test_only_camera] if self.test_only_camera else []), *self.test_cameras})
        )


CAMERAS: dict[str, CameraProfile] = {
    p.name: p
    for p in (
        CameraProfile("reference"),
        CameraProfile("desk_a", gains=(1.0, 0.98, 0.96), gamma=1.0, vignette=0.1, blur=0.8, noise=1.5),
        CameraProfile(
            "desk_b", gains=(1.06, 0.96, 0.86), gamma=0.92, vignette=0.2, blur=1.6, noise=2.0, fov_diameter=0.98
        ),
        CameraProfile(
            "handheld",
            gains=(0.9, 0.86, 0.9),
            gamma=1.12,
            vignette=0.35,
            blur=3.0,
            noise=3.5,
            fov_diameter=0.94,
            disc_fraction=1.0 / 7.0,
        ),
        CameraProfile(
            "widefield",  # the profile seen only in the test split of the hard preset
            gains=(0.9, 1.04, 1.1),
            gamma=0.95,
            vignette=0.05,
            blur=1.0,
            noise=2.0,
            fov_diameter=1.08,
            disc_fraction=1.0 / 9.5,
        ),
    )
}
"""Camera profiles by name: colour cast, vignetting, sharpness, field of view and field angle."""

EASY = Preset(
    name="easy",
    diseases=("dr", "dme", "amd", "glaucoma", "rvo", "rp"),
    size=(2048, 1536),
    count=720,
    oct_count=480,
    cameras={"reference": 1.0},
)

HARD = Preset(
    name="hard",
    diseases=(
        "dr",
        "dme",
        "amd",
        "glaucoma",
        "rvo",
        "rp",
        "namd",
        "csc",
        "erm",
        "macular_hole",
        "papilloedema",
        "myopia",
        "crvo",
        "hypertensive",
    ),
    size=(768, 576),
    count=1600,
    oct_count=1000,
    test_fraction=0.25,
    val_fraction=0.15,
    hard=True,
    prevalence={
        "dr": 14.0,
        "glaucoma": 11.0,
        "amd": 10.0,
        "dme": 8.0,
        "myopia": 6.0,
        "erm": 5.0,
        "rvo": 5.0,
        "namd": 4.0,
        "csc": 4.0,
        "rp": 3.0,
        "papilloedema": 3.0,
        "macular_hole": 3.0,
        "crvo": 4.0,
        "hypertensive": 4.0,
    },
    normal_fraction=0.4,
    pair_fraction=0.25,
    severity_beta=(1.0, 1.6),
    cameras={"desk_a": 0.45, "desk_b": 0.35, "handheld": 0.2},
    test_only_camera="widefield",
    test_only_share=0.3,
    confounder_rate=0.45,
    healthy_cup=(0.4, 0.1),
    label_noise=0.06,
    zero_shot=("crvo", "hypertensive"),
)

ZOO = Preset(
    name="zoo",
    diseases=EASY.diseases,
    size=(1024, 768),  # unused by zoo cameras (each has its frame); render_height caps the painted scene
    count=720,  # eyes; each test eye gives one image per test camera
    oct_count=480,
    test_fraction=1.0 / 12.0,
    val_fraction=0.15,
    cameras={
        "desk45_dslr_cut": 0.2,
        "desk45_nonmyd_circle": 0.15,
        "desk45_nonmyd_notch": 0.15,
        "desk45_midres_cut": 0.1,
        "handheld_40": 0.12,
        "smartphone_50": 0.1,
        "uwf_pseudocolour": 0.1,
        "redfree_desk": 0.08,
    },
    test_cameras=tuple(PROFILES),
)

PRESETS: dict[str, Preset] = {p.name: p for p in (EASY, HARD, ZOO)}
CONFOUNDER_KINDS: tuple[str, ...] = tuple(CONFOUNDERS)


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError as e:
        raise ConfigError(f"unknown phantom preset {name!r}; choose one of {sorted(PRESETS)}") from e
