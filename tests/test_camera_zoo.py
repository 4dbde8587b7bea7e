"""The camera zoo: its profiles span what programmes meet, its split keeps held-out cameras out of
training and calibration, its photographs are what each profile says, and the older presets'
bytes do not move."""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from predilect.catalog import load_catalog
from predilect.errors import ConfigError
from predilect.manifest import capture_of, read_manifest
from predilect.training import acquisition
from predilect.training.gradability import degraded_sets
from predilect.training.phantom import generate
from predilect.training.phantom.cameras import HELD_OUT, PROFILES, SEEN, Acquisition, encode, load_zoo
from predilect.training.phantom.generate import PHANTOM_CATALOG
from predilect.training.phantom.presets import CAMERAS, PRESETS, ZOO, Preset
from predilect.training.phantom.render import FundusStyle, draw_fundus
from predilect.training.stages import read_splits

TINY = {"max_side": 160, "render_height": 96}


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory) -> Path:
    """A zoo phantom at thumbnail size: 8 eyes, every test eye through all 14 cameras."""
    out = tmp_path_factory.mktemp("zoo")
    return generate(out, preset="zoo", count=8, oct_count=2, test_fraction=0.25, workers=1, **TINY)


def _photo(name: str, labels: frozenset[str] = frozenset({"dr"}), seed: int = 0) -> Image.Image:
    camera = PROFILES[name].scaled(320)
    width, height = camera.work_size(160)
    style = FundusStyle(None, acquisition=camera)
    return draw_fundus(labels, rng=np.random.default_rng(seed), width=width, height=height, style=style).image


# ----------------------------------------------------------------------------- the split


def test_camera_split_names_every_profile_exactly_once_when_loaded():
    named = [*SEEN, *HELD_OUT]
    assert len(named) == len(set(named))
    assert set(named) == set(PROFILES) | set(CAMERAS)
    assert {"widefield"} <= set(HELD_OUT) and {"reference", "desk_a", "desk_b", "handheld"} <= set(SEEN)


def test_zoo_spans_the_acquisitions_programmes_meet_when_loaded():
    zoo = list(PROFILES.values())
    assert len(zoo) >= 12
    assert {p.kind for p in zoo} >= {"desktop", "handheld", "smartphone", "widefield", "ultra_widefield"}
    assert {p.capture for p in zoo} == {"colour", "pseudo_colour", "red_free"}
    assert {p.field for p in zoo} >= {"circle", "cut", "fill"} and any(p.notch for p in zoo)
    assert any(p.text for p in zoo) and any(p.reencode for p in zoo)
    pixels = [p.frame[0] * p.frame[1] for p in zoo]
    assert min(min(p.frame) for p in zoo) == 480 and 5.9e6 <= max(pixels) <= 6.0e6
    qualities = [q for p in zoo for q in (*p.jpeg_quality, *p.reencode)]
    assert min(qualities) == 25 and max(qualities) == 95
    assert {p.subsampling for p in zoo} >= {"4:2:0", "4:4:4"}
    assert len({p.illuminant_k for p in zoo}) > 5 and any(p.white_balance_k != 5500 for p in zoo)
    assert any("mydriatic" in p.basis and "non-mydriatic" not in p.basis for p in zoo)
    assert any("non-mydriatic" in p.basis and p.kind == "desktop" for p in zoo)
    seen = [p for p in zoo if p.name in SEEN]
    held = [p for p in zoo if p.name in HELD_OUT]
    assert seen and held and {p.capture for p in held} >= {"colour", "red_free"}


def test_preset_refuses_held_out_camera_when_named_for_training():
    with pytest.raises(ConfigError, match="held out of training and calibration"):
        replace(ZOO, name="leaky", cameras={"desk45_dslr_cut": 1.0, "handheld_50_lowres": 1.0})


def test_every_preset_trains_on_seen_cameras_only_when_defined():
    for preset in PRESETS.values():
        assert set(preset.cameras) <= set(SEEN), preset.name


def test_held_out_cameras_reach_no_training_or_calibration_manifest_when_zoo_generated(tiny_zoo, tmp_path):
    catalog = load_catalog(tiny_zoo.with_name(PHANTOM_CATALOG))
    splits = read_splits(tiny_zoo, catalog=catalog)  # what both training stages read
    trained_on = {r.extra["camera"] for r in [*splits.train, *splits.val]}
    assert trained_on and trained_on <= set(SEEN)
    calibration, measurement = degraded_sets(tiny_zoo, catalog, tmp_path, count_per_kind=1)  # `predilect gradability`
    assert {r.extra["camera"] for r in calibration} <= set(SEEN)
    assert {r.extra["camera"] for r in measurement} == set(PROFILES)
    records = read_manifest(tiny_zoo, catalog=catalog)
    assert {r.extra["camera"] for r in records if r.split != "test"} <= set(SEEN)
    assert {r.extra["camera"] for r in records if r.split == "test"} == set(PROFILES)


def test_read_splits_leaves_out_red_free_captures_when_manifest_holds_them(tiny_zoo):
    catalog = load_catalog(tiny_zoo.with_name(PHANTOM_CATALOG))
    records = read_manifest(tiny_zoo, catalog=catalog)
    assert any(capture_of(r) == "red_free" for r in records)
    splits = read_splits(tiny_zoo, catalog=catalog)
    kept = [*splits.train, *splits.val, *splits.test]
    assert kept and all(capture_of(r) != "red_free" for r in kept)
    assert len(kept) == sum(capture_of(r) != "red_free" for r in records)


def test_zoo_rephotographs_each_test_eye_with_the_same_findings_when_generated(tiny_zoo):
    records = read_manifest(tiny_zoo, catalog=load_catalog(tiny_zoo.with_name(PHANTOM_CATALOG)))
    eyes: dict[tuple[str | None, str | None], set[frozenset[str]]] = {}
    for r in records:
        if r.split == "test":
            eyes.setdefault((r.patient_id, r.eye), set()).add(r.labels)
    assert eyes and all(len(labels) == 1 for labels in eyes.values())
    assert sum(r.split == "test" for r in records) == len(eyes) * len(PROFILES)


def test_load_zoo_refuses_a_profile_in_both_lists_when_split_overlaps(tmp_path):
    text = Path(__file__).resolve().parent.parent / "training/predilect/training/phantom/cameras.toml"
    broken = tmp_path / "cameras.toml"
    broken.write_text(
        text.read_text().replace('held_out = [\n    "widefield",', 'held_out = [\n    "widefield",\n    "reference",')
    )
    with pytest.raises(ConfigError, match="both seen and held out"):
        load_zoo(broken)


# ----------------------------------------------------------------------------- the photographs


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_zoo_photograph_has_the_profile_frame_capture_and_field_when_drawn(name):
    profile = PROFILES[name].scaled(320)
    photo = _photo(name)
    assert photo.size == profile.frame
    rgb = np.asarray(photo.convert("RGB")).astype(int)
    if profile.capture == "red_free":
        assert photo.mode == ("RGB" if profile.grey_as_rgb else "L")
        assert np.abs(rgb[..., 0] - rgb[..., 1]).max() == 0
    else:
        assert photo.mode == "RGB" and np.abs(rgb[..., 0] - rgb[..., 1]).mean() > 10
    if profile.capture == "pseudo_colour":
        assert rgb[..., 2].max() <= 12  # no blue laser: sensor read noise only
    h, w = rgb.shape[:2]
    lit = rgb.max(axis=2) > 40
    corner = lit[: h // 10, : w // 10].mean()
    if profile.field == "fill":
        assert lit.mean() > 0.95
    else:
        assert corner < 0.2 and lit[h // 2, w // 2]
    if profile.field == "cut":
        assert lit[1, w // 2] and lit[h - 2, w // 2] and not lit[h // 2, 1]


def test_dim_small_sensor_profile_is_darker_and_noisier_when_photographing_the_same_eye():
    desk, handheld = (
        np.asarray(_photo(n, frozenset())).astype(float) for n in ("desk45_dslr_cut", "handheld_50_lowres")
    )
    assert np.median(handheld[..., 0][handheld[..., 0] > 40]) < np.median(desk[..., 0][desk[..., 0] > 40])


def test_encode_writes_the_profile_jpeg_quality_and_reencodings_when_saved():
    profile = replace(PROFILES["smartphone_25_video"].scaled(320), jpeg_quality=(40, 40))
    photo = _photo("smartphone_25_video")
    data = encode(photo, profile, np.random.default_rng(0))
    once = acquisition.jpeg_bytes(photo, quality=40)
    twice = acquisition.jpeg_bytes(acquisition.jpeg_roundtrip(photo, [40]), quality=profile.reencode[-1])
    assert data == twice and data != once
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.size == photo.size and decoded.mode == "RGB"


def test_acquisition_refuses_a_field_label_its_geometry_contradicts_when_defined():
    with pytest.raises(ConfigError, match="that is a 'cut' field"):
        Acquisition(name="x", kind="desktop", basis="", frame=(1500, 1000), field="circle", field_diameter=1.1)


# ----------------------------------------------------------------------------- the physics


def test_planck_gains_warm_a_halogen_picture_when_balanced_for_daylight():
    red, green, blue = acquisition.planck_gains(3000.0, 5500.0)
    assert green == pytest.approx(1.0) and red > 1.3 and blue < 0.6
    assert acquisition.planck_gains(5500.0, 5500.0) == pytest.approx(np.ones(3))
    cool = acquisition.planck_gains(7000.0, 5500.0)
    assert cool[0] < 1.0 < cool[2]


def test_expose_has_shot_and_read_variance_and_the_tone_curve_when_light_flat():
    rng = np.random.default_rng(0)
    light = np.full((400, 400, 1), 50, np.uint8)
    out = acquisition.expose(
        light, np.array([2.0]), full_well_e=5100.0, read_noise_e=4.0, signal=0.5, gamma=1.0, rng=rng
    )
    per_level = 0.5 * 5100.0 / 255.0  # 10 electrons a level
    expected = np.sqrt(100.0 * per_level + 16.0) / per_level
    assert out.dtype == np.uint8 and out.mean() == pytest.approx(100.0, abs=0.1)
    assert out.std() == pytest.approx(expected, rel=0.05)
    dark = acquisition.expose(light, np.array([2.0]), full_well_e=1e9, read_noise_e=0.0, signal=1.0, gamma=2.0, rng=rng)
    assert int(dark[0, 0, 0]) == round(255 * (100 / 255) ** 2)


def test_standard_normal_is_deterministic_and_unit_when_drawn_large():
    a = acquisition.standard_normal((2000, 1000), np.random.default_rng(3))
    b = acquisition.standard_normal((2000, 1000), np.random.default_rng(3))
    assert np.array_equal(a, b) and abs(float(a.mean())) < 0.01 and float(a.std()) == pytest.approx(1.0, abs=0.01)


# ----------------------------------------------------------------------------- the older presets

# sha256 of the files the hard preset (count 6, OCT 2, seed 5) wrote on main before the zoo existed, joined
# in path order: the zoo must not move a byte of the older presets (their own render path is unchanged).
_HARD_PINNED = "3fcab4a58601e968"


def _digest(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".jpg", ".png", ".csv"))
    joined = "".join(f"{p.relative_to(folder)} {hashlib.sha256(p.read_bytes()).hexdigest()[:16]}\n" for p in files)
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def test_hard_preset_writes_the_pre_zoo_bytes_when_seed_same(tmp_path):
    generate(tmp_path, preset="hard", count=6, oct_count=2, seed=5, workers=1)
    assert _digest(tmp_path) == _HARD_PINNED


def test_generate_refuses_frame_size_when_preset_photographs_with_the_zoo(tmp_path):
    with pytest.raises(ConfigError, match="own frame size"):
        generate(tmp_path, preset="zoo", count=4, width=640, height=480)
    with pytest.raises(ConfigError, match="zoo presets only"):
        generate(tmp_path, preset="easy", count=4, max_side=320)


def test_preset_refuses_mixing_zoo_and_older_profiles_when_defined():
    with pytest.raises(ConfigError, match="cannot be mixed"):
        Preset(
            name="mixed",
            diseases=("dr",),
            size=(640, 480),
            count=4,
            oct_count=0,
            cameras={"desk_a": 1.0, "handheld_40": 1.0},
        )
