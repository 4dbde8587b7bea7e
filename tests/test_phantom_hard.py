"""The hard phantom: registry and catalog vocabulary, lesion ground truth, severity, cohort rules,
fundus/OCT site agreement, the OCT-visible premise and the controlled degradations."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from phantom_zones import fundus_zone, oct_zone
from PIL import Image, ImageDraw, ImageFilter

from predilect.catalog import DEFAULT_CATALOG, REFERRALS, load_catalog
from predilect.manifest import read_manifest
from predilect.training.phantom import REGISTRY, draw_fundus, draw_oct, generate
from predilect.training.phantom import phantom_cli as cli
from predilect.training.phantom.degrade import KINDS, clean_exposure_floor, degrade, degrade_dataset, exposure_level
from predilect.training.phantom.fundus import CameraProfile
from predilect.training.phantom.generate import plan_hard_cohort
from predilect.training.phantom.presets import CAMERAS, HARD
from predilect.training.phantom.render import FundusStyle, OctStyle
from predilect.training.phantom.vocabulary import DEFAULT_CONCEPTS, VOCABULARY, describe

SIZE = (384, 288)
PLAIN = CameraProfile("plain")  # no blur, vignetting or noise: pixel differences are the lesions'


def _draw(labels: set[str], severity: float = 0.6, seed: int = 4, size: tuple[int, int] = SIZE, **style):
    st = FundusStyle({d: severity for d in labels}, style.pop("profile", PLAIN), cup_ratio=0.35, **style)
    return draw_fundus(frozenset(labels), rng=np.random.default_rng(seed), width=size[0], height=size[1], style=st)


def _changed(a: Image.Image, b: Image.Image, level: int = 12) -> np.ndarray:
    return np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max(axis=2) > level


def _vessels(drawing, factor: float = 1.7) -> np.ndarray:
    """Pixels on or beside any vessel (where calibre changes show)."""
    mask = Image.new("L", drawing.image.size, 0)
    draw = ImageDraw.Draw(mask)
    for v in drawing.anatomy.vessels:
        draw.line([tuple(p) for p in v.points], fill=255, width=max(2, round(float(v.widths.max()) * factor) + 2))
    return np.asarray(mask.filter(ImageFilter.MaxFilter(3))) > 0


def _in_circles(lesions, shape: tuple[int, ...], margin: float) -> np.ndarray:
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    inside = np.zeros(shape, dtype=bool)
    for le in lesions:
        inside |= np.hypot(xs - le.x, ys - le.y) <= le.r + margin
    return inside


# ----------------------------------------------------------------------------- catalog and registry


def test_default_catalog_has_twenty_categories_with_descriptions_and_referrals_when_loaded():
    assert len(DEFAULT_CATALOG) >= 20
    for d in DEFAULT_CATALOG:
        assert len(d.descriptions) >= 4 and d.referral in REFERRALS
        assert d.descriptions[:4] == describe(DEFAULT_CONCEPTS[d.id])
    assert {"dr", "dme", "amd", "namd", "glaucoma", "rvo", "myopia", "csc", "erm", "macular_hole"} <= set(
        DEFAULT_CATALOG.ids
    )


@pytest.mark.parametrize("disease", sorted(REGISTRY))
def test_registry_draws_only_concepts_its_catalog_descriptions_name_when_registered(disease):
    drawn, described = REGISTRY[disease].draws, DEFAULT_CONCEPTS[disease]
    text = " ".join(DEFAULT_CATALOG[disease].descriptions)
    for kind, vocabulary in (("fundus", "fundus"), ("where", "location"), ("oct", "oct"), ("oct_where", "location")):
        assert set(getattr(drawn, kind)) <= set(getattr(described, kind)), (disease, kind)
        assert all(VOCABULARY[vocabulary][key] in text for key in getattr(drawn, kind))


@pytest.mark.parametrize("disease", HARD.zero_shot)
def test_zero_shot_category_is_composed_of_trained_concepts_when_held_out(disease):
    trained = [REGISTRY[d].draws for d in HARD.trained]
    mine = REGISTRY[disease].draws
    for kind in ("fundus", "where", "oct", "oct_where"):
        seen = {k for c in trained for k in getattr(c, kind)}
        assert set(getattr(mine, kind)) <= seen, (disease, kind, set(getattr(mine, kind)) - seen)


# ----------------------------------------------------------------------------- fundus ground truth


def test_draw_fundus_returns_same_pixels_and_lesions_when_seed_same():
    a = _draw({"dr", "csc"}, profile=CAMERAS["handheld"], confounders=("dust", "laser_scars"))
    b = _draw({"dr", "csc"}, profile=CAMERAS["handheld"], confounders=("dust", "laser_scars"))
    np.testing.assert_array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.lesions == b.lesions and a.confounders == b.confounders and len(a.confounders) > 0


@pytest.mark.parametrize("disease", HARD.diseases)
def test_draw_fundus_records_lesions_where_pixels_changed_when_disease_drawn(disease):
    normal, sick = _draw(set()), _draw({disease})
    raw = changed = _changed(sick.image, normal.image)
    if any(v != 1.0 for v in _calibre_changes(disease)):
        changed = raw & ~_vessels(sick)  # vessel calibre changes are not lesions
    inside = _in_circles(sick.lesions, changed.shape, margin=3)
    assert sick.lesions and all(le.disease == disease for le in sick.lesions)
    assert changed.sum() > 30, f"{disease}: only {changed.sum()} pixels changed"
    assert (changed & inside).sum() >= 0.9 * changed.sum(), f"{disease}: {(changed & inside).sum()} of {changed.sum()}"
    hit = [le for le in sick.lesions if (raw & _in_circles([le], raw.shape, margin=2)).any()]
    assert len(hit) >= 0.8 * len(sick.lesions), f"{disease}: {len(hit)} of {len(sick.lesions)} lesions changed pixels"


def _calibre_changes(disease: str) -> list[float]:
    from predilect.training.phantom.fundus import Findings

    f = Findings(cup_ratio=0.3)
    a = _draw(set()).anatomy
    REGISTRY[disease].fundus(f, a, np.random.default_rng(0), 0.6)
    return list(f.vessel_scale.values())


@pytest.mark.parametrize("disease", ["dr", "dme", "amd", "rvo", "rp", "erm", "crvo"])
def test_draw_fundus_draws_more_when_severity_higher(disease):
    normal = _draw(set(), seed=6).image
    mild = _changed(_draw({disease}, 0.05, seed=6).image, normal).sum()
    florid = _changed(_draw({disease}, 0.95, seed=6).image, normal).sum()
    assert florid > 2 * mild, f"{disease}: {mild} -> {florid}"


def test_draw_fundus_single_faint_lesion_when_dr_mildest():
    drawing = _draw({"dr"}, 0.0)
    assert 1 <= len(drawing.lesions) <= 2


def test_draw_fundus_changes_only_confounders_when_eye_normal():
    plain = _draw(set(), seed=9)
    confounded = _draw(set(), seed=9, confounders=("drusen_like", "laser_scars", "dust"))
    changed = _changed(confounded.image, plain.image)
    assert not confounded.lesions and len(confounded.confounders) >= 3
    assert changed.sum() > 50
    assert (changed & _in_circles(confounded.confounders, changed.shape, margin=3)).sum() >= 0.9 * changed.sum()


def test_camera_profile_changes_colour_sharpness_and_field_when_applied():
    reference, handheld, wide = (_draw(set(), profile=CAMERAS[n]) for n in ("desk_a", "handheld", "widefield"))
    ref, hand = np.asarray(reference.image, np.float32), np.asarray(handheld.image, np.float32)
    inside = ref.max(axis=2) > 20
    assert abs(ref[inside].mean() - hand[inside].mean()) > 5
    soft = np.asarray(_draw(set(), profile=replace(CAMERAS["handheld"], noise=0.0)).image, np.float32)
    assert np.abs(np.diff(soft, axis=1)).mean() < 0.8 * np.abs(np.diff(ref, axis=1)).mean()  # blurrier
    assert wide.anatomy.dd < reference.anatomy.dd < handheld.anatomy.dd  # field angle
    assert (np.asarray(wide.image).max(axis=2)[0] > 20).any()  # the wide field is clipped top and bottom


# ----------------------------------------------------------------------------- OCT and the premise


def _oct(labels: set[str], severity: float, seed: int = 3) -> np.ndarray:
    st = OctStyle({d: severity for d in labels})
    return np.asarray(draw_oct(frozenset(labels), rng=np.random.default_rng(seed), style=st).image, np.int16)


@pytest.mark.parametrize("disease", HARD.diseases)
def test_oct_and_fundus_draw_disease_at_same_sites_when_rendered(disease):
    """Fundus lesions lie in the zones of the disease's locations; OCT changes in the same concepts' scan zones."""
    draws = REGISTRY[disease].draws
    centres_inside = []
    for seed in range(3):
        sick = _draw({disease}, 0.7, seed=seed)
        xs = np.array([le.x for le in sick.lesions])
        ys = np.array([le.y for le in sick.lesions])
        centres_inside += list(fundus_zone(sick.anatomy, draws.where, xs, ys))
    assert np.mean(centres_inside) >= 0.9, f"{disease}: {np.mean(centres_inside):.2f} of fundus lesions in zone"
    scan = draw_oct(frozenset({disease}), rng=np.random.default_rng(3), style=OctStyle({disease: 0.7}))
    column_change = np.abs(_oct({disease}, 0.7) - _oct(set(), 0.7)).mean(axis=0)
    u = ((np.arange(column_change.size) + 0.5) / column_change.size - scan.fovea) / scan.dd
    near = oct_zone(draws.oct_where, u) | oct_zone(draws.oct_where, u - 0.6) | oct_zone(draws.oct_where, u + 0.6)
    share = column_change[near].sum() / column_change.sum()
    assert column_change.mean() > 0.3 and share >= 0.75, f"{disease}: {share:.2f} of OCT change in zone"
    assert scan.lesions and all(d == disease for d, *_ in scan.lesions)


@pytest.mark.parametrize("disease", [d for d in HARD.oct_visible if d != "glaucoma"])
def test_oct_visible_disease_is_subtle_on_fundus_but_obvious_on_oct_when_mild(disease):
    """The paper's premise, made explicit: at mild severity the photograph barely changes, the scan clearly.

    (Glaucoma's fundus sign is not small but ambiguous: its cup overlaps healthy cups, see the cohort test.)
    """
    fundus_share = np.mean(
        [_changed(_draw({disease}, 0.1, seed=s).image, _draw(set(), seed=s).image, 25).mean() for s in range(3)]
    )
    oct_change = np.mean([np.abs(_oct({disease}, 0.1, s) - _oct(set(), 0.1, s)).mean() for s in range(3)])
    assert fundus_share < 0.004, f"{disease}: {fundus_share:.4f} of the photograph changed"
    assert oct_change > 2.0, f"{disease}: mean OCT change {oct_change:.2f}"


# ----------------------------------------------------------------------------- cohort


@pytest.fixture(scope="module")
def cohort():
    return plan_hard_cohort(1600, prefix="P", preset=HARD, rng=np.random.default_rng(0))


def test_plan_hard_cohort_adds_label_noise_only_in_train_when_planned(cohort):
    noisy = {s: sum(p.labels != p.true_labels for p in cohort if p.split == s) for s in ("train", "val", "test")}
    n_train = sum(p.split == "train" for p in cohort)
    assert noisy["val"] == 0 and noisy["test"] == 0
    assert 0.5 * HARD.label_noise * n_train < noisy["train"] < 1.6 * HARD.label_noise * n_train


def test_plan_hard_cohort_keeps_test_only_camera_and_zero_shot_out_of_training_when_planned(cohort):
    cameras = {s: {p.camera for p in cohort if p.split == s} for s in ("train", "val", "test")}
    assert HARD.test_only_camera in cameras["test"]
    assert HARD.test_only_camera not in cameras["train"] | cameras["val"] and len(cameras["train"]) >= 3
    for p in cohort:
        if p.split == "train":
            assert not (p.labels | p.drawn) & set(HARD.zero_shot)
    for split in ("val", "test"):
        assert all(any(z in p.drawn for p in cohort if p.split == split) for z in HARD.zero_shot)


def test_plan_hard_cohort_splits_by_patient_with_long_tail_and_overlapping_cups_when_planned(cohort):
    split_of: dict[str, set[str]] = {}
    for p in cohort:
        split_of.setdefault(p.patient_id, set()).add(p.split)
    assert all(len(s) == 1 for s in split_of.values())
    train = [p for p in cohort if p.split == "train"]
    prevalence = {d: sum(d in p.drawn for p in train) for d in HARD.trained}
    assert max(prevalence.values()) > 3 * min(prevalence.values()) and min(prevalence.values()) >= 8
    healthy_cups = np.array([p.cup_ratio for p in cohort])
    assert (healthy_cups > 0.5).mean() > 0.1  # glaucoma starts at 0.5: the ranges overlap
    severities = [v for p in cohort for v in p.severity.values()]
    assert min(severities) < 0.05 and max(severities) > 0.95


# ----------------------------------------------------------------------------- data set and CLI


@pytest.fixture(scope="module")
def hard_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("hard")
    generate(out, preset="hard", count=60, oct_count=30, seed=2, width=320, height=240, workers=1)
    return out


def test_generate_hard_writes_manifests_lesions_and_info_when_preset_hard(hard_dataset):
    out = hard_dataset
    catalog = load_catalog(out / "phantom_catalog.json")
    assert catalog.ids == list(HARD.diseases)
    fundus = read_manifest(out / "manifest.csv", catalog=catalog)
    oct_records = read_manifest(out / "oct_manifest.csv", catalog=catalog)
    assert {r.split for r in fundus} == {"train", "val", "test"}
    assert not {r.patient_id for r in fundus} & {r.patient_id for r in oct_records}  # unpaired
    assert all({"true_labels", "camera", "modality"} <= set(r.extra) for r in fundus)
    info = json.loads((out / "phantom.json").read_text())
    assert info["zero_shot"] == list(HARD.zero_shot) and info["test_only_camera"] == "widefield"
    lines = [json.loads(line) for line in (out / "lesions.jsonl").read_text().splitlines()]
    assert len(lines) == 90
    by_path = {line["path"]: line for line in lines}
    for r in fundus:
        entry = by_path[r.path.relative_to(out).as_posix()]
        drawn = set(r.extra["true_labels"].split(";")) - {"normal"}
        assert {le["disease"] for le in entry["lesions"]} == drawn
        assert all(0 <= le["x"] <= 1 and 0 <= le["y"] <= 1 and 0 < le["r"] < 1 for le in entry["lesions"])


def test_generate_hard_writes_identical_bytes_when_workers_differ(hard_dataset, tmp_path):
    generate(tmp_path, preset="hard", count=60, oct_count=30, seed=2, width=320, height=240, workers=2)
    names = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert len(names) == 60 + 30 + 5
    for name in names:
        assert (tmp_path / name).read_bytes() == (hard_dataset / name).read_bytes(), name


def test_cli_main_degrades_source_manifest_when_source_given(hard_dataset, tmp_path, capsys):
    code = cli.main(
        ["--source", str(hard_dataset / "manifest.csv"), "--out", str(tmp_path), "--degrade", "blur,oct"]
        + ["--degrade-count", "3", "--degrade-strengths", "0.5", "1.0"]
    )
    assert code == 0, capsys.readouterr().err
    records = read_manifest(
        tmp_path / "degradation_manifest.csv", catalog=load_catalog(hard_dataset / "phantom_catalog.json")
    )
    kinds = [r.extra["degradation"] for r in records]
    assert kinds.count("blur") == 3 and kinds.count("oct") == 3 and "none" in kinds
    assert {r.extra["degradation_strength"] for r in records if r.extra["degradation"] == "blur"} == {"0.50", "1.00"}


def test_cli_main_returns_2_when_degradation_unknown(tmp_path, capsys):
    assert cli.main(["--out", str(tmp_path), "--degrade", "smudge", "--count", "2"]) == 2
    assert "smudge" in capsys.readouterr().err


# ----------------------------------------------------------------------------- degradations


@pytest.fixture(scope="module")
def photo():
    return _draw({"dr"}, 0.5, profile=CAMERAS["desk_a"]).image


def _stats(image: Image.Image) -> dict[str, float]:
    a = np.asarray(image.convert("RGB"), np.float32)
    grey = a.mean(axis=2)
    h, w = grey.shape
    ys, xs = np.mgrid[0:h, 0:w]
    fov = np.hypot(xs + 0.5 - w / 2, ys + 0.5 - h / 2) < 0.45 * h
    lap = grey[1:-1, 1:-1] * 4 - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    return {
        "sharpness": float(lap[fov[1:-1, 1:-1]].var()),
        "mean": float(grey[fov].mean()),
        "saturated": float((a[fov].min(axis=1) > 160).mean()),
        "coverage": float((a.max(axis=2) > 20).mean()),
        "dark_in_fov": float((grey[fov] < 25).mean()),
        "top_mean": float(grey[: h // 3][fov[: h // 3]].mean()),
        "outside": float(grey[~fov & (np.hypot(xs + 0.5 - w / 2, ys + 0.5 - h / 2) > 0.55 * h)].mean()),
        "grey": float(np.abs(a[..., 0] - a[..., 2]).mean()),
    }


@pytest.mark.parametrize(
    "kind,measure,direction",
    [
        ("blur", "sharpness", -1),
        ("dark", "mean", -1),
        ("bright", "mean", +1),
        ("bright", "saturated", +1),
        ("fov", "coverage", -1),
        ("occlusion", "top_mean", -1),
        ("dust", "dark_in_fov", +1),
        ("reflection", "mean", +1),
    ],
)
def test_degrade_changes_what_it_claims_more_when_stronger(photo, kind, measure, direction):
    clean = _stats(photo)[measure]
    weak = _stats(degrade(photo, kind, strength=0.25, rng=np.random.default_rng(1)))[measure]
    strong = _stats(degrade(photo, kind, strength=1.0, rng=np.random.default_rng(1)))[measure]
    assert direction * (weak - clean) > 0 and direction * (strong - weak) > 0, (clean, weak, strong)


@pytest.mark.parametrize("camera", sorted(CAMERAS))
def test_degrade_dark_lies_below_every_clean_photograph_when_weakest(camera):
    # the old dark (a gain of about 0.79 on the source) left copies of bright eyes above the darkest clean ones
    floor = clean_exposure_floor()
    style = FundusStyle({"dr": 0.5}, CAMERAS[camera])
    for seed in range(3):
        clean = draw_fundus(frozenset({"dr"}), rng=np.random.default_rng(seed), width=256, height=192, style=style)
        copy = degrade(clean.image, "dark", strength=0.25, rng=np.random.default_rng(seed))
        assert exposure_level(copy) < floor < exposure_level(clean.image), (camera, seed)


def test_clean_exposure_floor_follows_the_darkest_camera_when_profiles_given():
    dim = CameraProfile("dim", gains=(0.6, 0.6, 0.6))
    assert clean_exposure_floor([CAMERAS["desk_b"]]) > clean_exposure_floor([CAMERAS["handheld"]])
    assert (
        clean_exposure_floor([*CAMERAS.values(), dim])
        < clean_exposure_floor()
        == clean_exposure_floor([CAMERAS["handheld"]])
    )


def test_degrade_dark_darkens_its_source_too_when_source_lies_below_the_floor():
    dim = Image.new("RGB", (128, 96), (60, 25, 10))  # a lit field far below any clean phantom photograph
    copy = degrade(dim, "dark", strength=0.25, rng=np.random.default_rng(0))
    assert exposure_level(copy) < exposure_level(dim) == 60 < clean_exposure_floor()


def test_degrade_dark_adds_photon_noise_and_clips_black_when_underexposed():
    half = Image.new("RGB", (128, 96))
    half.paste((200, 200, 200), (64, 0, 128, 96))
    copy = np.asarray(degrade(half, "dark", strength=1.0, rng=np.random.default_rng(0)), np.float64)
    lit, black = copy[8:-8, 72:-8], copy[8:-8, 8:56]  # clear of the edge between them
    assert 0.05 * 200 < lit.mean() < 0.3 * 200 and lit.std() > 0.5  # fewer photons: shot noise, not a clean gain
    assert black.mean() < 1.0  # read noise below the black level is clipped, not wrapped round


def test_degrade_replaces_photo_with_wrong_image_type_when_external_or_oct(photo):
    clean = _stats(photo)
    external = _stats(degrade(photo, "external", rng=np.random.default_rng(0)))
    oct_ = _stats(degrade(photo, "oct", rng=np.random.default_rng(0)))
    assert clean["outside"] < 5 and external["outside"] > 60  # no black surround: not a fundus camera
    assert oct_["grey"] == 0 and clean["grey"] > 50  # grey-scale


def test_degrade_is_deterministic_and_validates_when_called(photo):
    for kind in ("dust", "dark"):
        a = degrade(photo, kind, strength=0.5, rng=np.random.default_rng(3))
        b = degrade(photo, kind, strength=0.5, rng=np.random.default_rng(3))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="smudge"):
        degrade(photo, "smudge", rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="strength"):
        degrade(photo, "blur", strength=0.0, rng=np.random.default_rng(0))
    assert set(KINDS) >= {"blur", "dark", "bright", "fov", "occlusion", "external", "oct"}


def test_degrade_dataset_keeps_patient_split_and_labels_when_copying(hard_dataset, tmp_path):
    catalog = load_catalog(hard_dataset / "phantom_catalog.json")
    path = degrade_dataset(hard_dataset / "manifest.csv", tmp_path, kinds=["dark"], catalog=catalog, count=4, seed=1)
    records = read_manifest(path, catalog=catalog)
    sources = {r.path: r for r in read_manifest(hard_dataset / "manifest.csv", catalog=catalog)}
    for r in records:
        if r.extra["degradation"] != "none":
            source = sources[(tmp_path / r.extra["source"]).resolve()]
            assert (r.labels, r.split, r.patient_id) == (source.labels, source.split, source.patient_id)


def test_pooled_pixel_probe_scores_trained_categories_only_when_run(hard_dataset):
    from predilect.training.phantom.probe import pooled_pixel_probe

    result = pooled_pixel_probe(hard_dataset / "manifest.csv", load_catalog(hard_dataset / "phantom_catalog.json"))
    assert result.auroc and not set(result.auroc) & set(HARD.zero_shot)
    assert 0.0 <= result.macro_auroc <= 1.0 and result.train_images + result.test_images < 60


def test_cli_main_writes_hard_dataset_and_degrades_it_when_preset_hard(tmp_path, capsys):
    args = ["--preset", "hard", "--out", str(tmp_path), "--count", "8", "--oct-count", "4", "--size", "256x192"]
    code = cli.main([*args, "--workers", "1", "--degrade", "dark", "--degrade-count", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "hypertensive" in out and "degradation manifest" in out
    assert json.loads((tmp_path / "phantom.json").read_text())["preset"] == "hard"
    with Image.open(
        read_manifest(tmp_path / "manifest.csv", catalog=load_catalog(tmp_path / "phantom_catalog.json"))[0].path
    ) as im:
        assert im.size == (256, 192)
