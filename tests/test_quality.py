"""The gradability step (predilect.quality) and its calibration, on real decoded photographs."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest

from predilect import contract, quality
from predilect.client.results import QualityReport
from predilect.preprocess import PreprocessCfg, Preprocessor

CFG = PreprocessCfg()


def _planes(payloads: list[bytes]) -> np.ndarray:
    done = Preprocessor(CFG, max_batch_size=8).run(payloads)
    pixels, errors = done.pixels, done.errors
    assert errors == [None] * len(payloads)
    return quality.planes_from_pixels(pixels, CFG.mean, CFG.std)


def _jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _clean_rows(rng: np.random.Generator, count: int) -> np.ndarray:
    """Synthetic measures of clean photographs: every measure near 1, but the defined ones where photographs lie."""
    rows = rng.normal(1.0, 0.05, size=(count, len(quality.MEASURES))).clip(0.01)
    for name, value in {"field_px": 800.0, "chroma": 0.5, "masked": 1.0}.items():
        rows[:, quality.MEASURES.index(name)] = value
    rows[:, quality.MEASURES.index("field_offset")] = rng.uniform(0.0, 0.02, count)
    rows[:, quality.MEASURES.index("redness")] = rng.uniform(0.45, 0.6, count)
    return rows


def _measured(payloads: list[bytes]) -> np.ndarray:
    """The measures of encoded photographs as served: their squares, and where each frame lies on its square."""
    done = Preprocessor(CFG, max_batch_size=8).run(payloads, quality=True)
    assert done.errors == [None] * len(payloads)
    frames = quality.frames_of(CFG.quality_size, done.boxes, done.frames)
    return quality.measure(quality.planes_from_pixels(done.pixels, CFG.mean, CFG.std), frames=frames)


def _grade(payloads: list[bytes]) -> quality.Grade:
    return quality.grade(_measured(payloads), quality.default_quality_cfg())


def _reasons(grade: quality.Grade) -> list[list[str]]:
    return [QualityReport.from_row(row).reasons for row in grade.tensor()]


def test_planes_from_pixels_recovers_uint8_square_exactly_when_tensor_made_by_preprocessing(fundus_jpeg) -> None:
    from predilect.preprocess.decoders.pil_draft import squares
    from predilect.preprocess.sniff import inspect_image

    data = np.frombuffer(fundus_jpeg(1), np.uint8)
    square = squares(data, CFG, inspect_image(data, CFG)).model  # the uint8 square the decoder normalised
    np.testing.assert_array_equal(_planes([fundus_jpeg(1)])[0], square.transpose(2, 0, 1))


def test_grade_passes_clean_fixture_photographs_when_default_calibration(fundus_jpeg) -> None:
    grade = _grade([fundus_jpeg(seed) for seed in range(6)])
    assert grade.gradable.all() and (grade.score > 0.5).all()


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("blur", "focus"),
        ("dark", "underexposed"),
        ("bright", "overexposed"),
        ("fov", "field_of_view"),
        ("occlusion", "artefact"),
        ("dust", "artefact"),
        ("reflection", "artefact"),
        ("external", "wrong_image_type"),
        ("oct", "wrong_image_type"),
    ],
)
def test_grade_flags_expected_reason_when_photograph_clearly_degraded(fundus_jpeg, kind: str, reason: str) -> None:
    from PIL import Image

    from predilect.training.phantom.degrade import degrade

    rng = np.random.default_rng(3)
    images = [_jpeg(degrade(Image.open(io.BytesIO(fundus_jpeg(seed))), kind, strength=1.0, rng=rng)) for seed in (1, 2)]
    grade = _grade(images)
    assert not grade.gradable.any() and (grade.score <= 0.5).all()
    for row in grade.tensor():  # the QUALITY rows, as the client reads them
        assert reason in QualityReport.from_row(row).reasons


def test_grade_agrees_flags_and_score_when_measures_vary() -> None:
    rng = np.random.default_rng(0)
    cfg = quality.default_quality_cfg()
    base = np.array([cfg.thresholds.get(m, 1.0) for m in quality.MEASURES])
    measures = base[None, :] * rng.uniform(0.3, 3.0, size=(500, len(quality.MEASURES)))
    measures[:, quality.MEASURES.index("masked")] = rng.integers(0, 2, 500)
    grade = quality.grade(measures, cfg)
    np.testing.assert_array_equal(grade.gradable, grade.score > 0.5)
    tensor = grade.tensor()
    assert tensor.shape == (500, 1 + len(contract.QUALITY_REASONS)) and tensor.dtype == np.float32
    alone = grade.flags[:, contract.QUALITY_REASONS.index("wrong_image_type")]
    assert alone.any() and (grade.flags[alone].sum(axis=1) == 1).all(), "the wrong image type stands alone"
    for reason in ("monochrome", "too_small"):
        assert grade.flags[:, contract.QUALITY_REASONS.index(reason)].any()


def test_quality_cfg_raises_naming_measures_when_thresholds_incomplete_or_not_finite() -> None:
    thresholds = dict(quality.default_quality_cfg().thresholds)
    del thresholds["haze"]
    with pytest.raises(quality.QualityConfigError, match="haze"):
        quality.QualityCfg(thresholds=thresholds)
    with pytest.raises(quality.QualityConfigError, match="finite"):
        quality.QualityCfg(thresholds={**thresholds, "haze": float("nan")})
    with pytest.raises(quality.QualityConfigError, match="not valid JSON"):
        quality.QualityCfg.from_json("{")


def test_quality_cfg_round_trips_and_digest_changes_when_a_threshold_moves() -> None:
    cfg = quality.default_quality_cfg()
    assert quality.QualityCfg.from_json(cfg.to_json()) == cfg
    moved = quality.QualityCfg(thresholds={**cfg.thresholds, "dust": cfg.thresholds["dust"] * 1.01})
    assert moved.digest() != cfg.digest()


def test_measure_raises_value_error_when_planes_are_not_uint8_square_planes() -> None:
    with pytest.raises(ValueError, match="uint8"):
        quality.measure(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match="shaped"):
        quality.measure(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="32 px"):
        quality.measure(np.zeros((1, 3, 8, 8), np.uint8))
    assert quality.measure(np.zeros((0, 3, 64, 64), np.uint8)).shape == (0, len(quality.MEASURES))


def test_calibrate_places_threshold_between_clean_and_degraded_tails_when_separable() -> None:
    from predilect.training.gradability import Measured, calibrate, evaluate

    rng = np.random.default_rng(1)
    clean = _clean_rows(rng, 200)
    blurred = clean[:60].copy()
    blurred[:, quality.MEASURES.index("blur")] *= 2.0
    kinds = ["none"] * 200 + ["blur"] * 60
    measured = Measured(
        kinds=kinds,
        strengths=[0.0] * 200 + [1.0] * 60,
        cameras=["a"] * 260,
        paths=[""] * 260,
        measures=np.concatenate([clean, blurred]),
        refused=np.zeros(260, dtype=bool),
    )
    cfg = calibrate(measured, clean_quantile=0.995)
    sharp = clean[:, quality.MEASURES.index("blur")]
    assert np.quantile(sharp, 0.995) < cfg.thresholds["blur"] < blurred[:, quality.MEASURES.index("blur")].min()
    result = evaluate(measured, cfg)
    assert result.flagged["blur"].rate == 1.0 and result.clean_pass.rate >= 0.95
    assert result.expected_reason["blur"].rate == 1.0


def test_assess_pixels_returns_one_quality_row_per_image_when_batched(
    fundus_jpeg: Callable[[int], bytes],
) -> None:
    pixels = Preprocessor(CFG).run([fundus_jpeg(7), fundus_jpeg(8)]).pixels_or_raise()
    rows = quality.assess_pixels(
        pixels, quality.default_quality_cfg(), mean=CFG.mean, std=CFG.std, fov_threshold=CFG.fov_threshold
    )
    single = quality.assess_pixels(
        pixels[1:], quality.default_quality_cfg(), mean=CFG.mean, std=CFG.std, fov_threshold=CFG.fov_threshold
    )
    assert rows.quality.shape == (2, 1 + len(contract.QUALITY_REASONS))
    assert rows.measures.shape == (2, len(contract.QUALITY_MEASURES))
    np.testing.assert_array_equal(rows.quality[1:], single.quality, err_msg="a row does not depend on its batch")


def _paint_spots(
    planes: np.ndarray, centres: list[tuple[float, float]], gains: tuple[float, float, float], *, radius: float = 0.04
) -> np.ndarray:
    """``planes`` with round spots (``radius`` and centres in units of the side) scaled by ``gains`` per channel."""
    out = planes.astype(np.float64)
    size = planes.shape[2]
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    for cx, cy in centres:
        spot = np.hypot(xs - cx * size, ys - cy * size) < radius * size
        for c, gain in enumerate(gains):
            out[:, c][:, spot] *= gain
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _rim_centres(count: int, radius: float) -> list[tuple[float, float]]:
    angles = np.linspace(0.0, 2 * np.pi, count, endpoint=False) + 0.3
    return [(0.5 + radius * np.cos(a), 0.5 + radius * np.sin(a)) for a in angles]


def _dust(planes: np.ndarray) -> np.ndarray:
    return quality.measure(planes)[:, quality.MEASURES.index("dust")]


def test_measure_flags_dust_when_neutral_shadows_lie_only_near_the_rim(fundus_jpeg) -> None:
    clean = _planes([fundus_jpeg(seed) for seed in (1, 2)])
    dusty = _paint_spots(clean, _rim_centres(14, 0.44), (0.5, 0.5, 0.5), radius=0.025)  # all beyond 0.4 S
    cfg = quality.default_quality_cfg()
    assert (_dust(clean) < cfg.thresholds["dust"]).all()
    assert (_dust(dusty) >= cfg.thresholds["dust"]).all()
    grade = quality.grade(quality.measure(dusty), cfg)
    assert all("artefact" in QualityReport.from_row(row).reasons for row in grade.tensor())


def test_measure_ignores_spots_when_green_darkens_far_more_than_red(fundus_jpeg) -> None:
    clean = _planes([fundus_jpeg(seed) for seed in (1, 2)])
    bleeding = _paint_spots(clean, _rim_centres(10, 0.3), (0.6, 0.25, 0.3))  # haemorrhage-like hue
    neutral = _paint_spots(clean, _rim_centres(10, 0.3), (0.6, 0.6, 0.6))
    threshold = quality.default_quality_cfg().thresholds["dust"]
    assert (_dust(bleeding) < threshold).all()
    assert (_dust(neutral) >= threshold).all()


def test_measure_ignores_vignetting_when_the_field_darkens_smoothly_towards_the_rim(fundus_jpeg) -> None:
    clean = _planes([fundus_jpeg(seed) for seed in (1, 2)])
    size = clean.shape[2]
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    r = np.hypot(xs - size / 2, ys - size / 2) / (0.48 * size)
    shade = 1.0 - 0.55 * np.clip(r, 0.0, 1.0) ** 2.5  # a strong camera vignette: the rim at 45%
    vignetted = np.rint(clean * shade).astype(np.uint8)
    assert (_dust(vignetted) < quality.default_quality_cfg().thresholds["dust"]).all()


def test_measure_exposure_follows_exposure_when_only_green_and_blue_change(fundus_jpeg) -> None:
    clean = _planes([fundus_jpeg(1)])
    column = quality.MEASURES.index("exposure")
    pigmented = clean.copy()
    pigmented[:, 1:] = (pigmented[:, 1:] * 0.7).astype(np.uint8)  # darker pigment: green and blue only
    dim = (clean * 0.35).astype(np.uint8)  # every channel: from a bright photograph to below any clean one
    exposure = quality.measure(np.concatenate([clean, pigmented, dim]))[:, column]
    assert exposure[1] == exposure[0]
    assert exposure[2] < quality.default_quality_cfg().thresholds["exposure"] < exposure[0]


def test_measure_rows_do_not_depend_on_the_batch_when_images_are_mixed(fundus_jpeg) -> None:
    clean = _planes([fundus_jpeg(seed) for seed in (1, 2, 3)])
    batch = np.concatenate([clean, _paint_spots(clean[:2], _rim_centres(8, 0.42), (0.5, 0.5, 0.5))])
    together = quality.measure(batch)
    alone = np.concatenate([quality.measure(batch[i : i + 1]) for i in range(len(batch))])
    reversed_order = quality.measure(batch[::-1])[::-1]
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_array_equal(together, reversed_order)


def test_report_shows_where_the_measure_lies_when_a_kind_misses_its_target() -> None:
    from predilect.training.gradability import Measured, calibrate, evaluate, report_markdown

    rng = np.random.default_rng(2)
    clean = _clean_rows(rng, 200)
    blurred = clean[:40].copy()
    blurred[:20, quality.MEASURES.index("blur")] *= 2.0  # strength 1: clearly blurred
    measured = Measured(
        kinds=["none"] * 200 + ["blur"] * 40,
        strengths=[0.0] * 200 + [1.0] * 20 + [0.25] * 20,  # strength 0.25 left as sharp as the clean images
        cameras=["a"] * 100 + ["b"] * 140,
        paths=[""] * 240,
        measures=np.concatenate([clean, blurred]),
        refused=np.zeros(240, dtype=bool),
    )
    cfg = calibrate(measured)
    result = evaluate(measured, cfg)
    spread = result.spread["blur"]
    assert {"clean", "clean a", "clean b", "blur 0.25", "blur 1.00"} <= set(spread)
    low_cost = spread["blur 0.25"].clean_cost
    assert spread["blur 1.00"].failing == 1.0 and spread["blur 0.25"].failing < 0.2
    assert spread["clean"].low <= spread["blur 0.25"].median <= spread["clean"].high
    assert spread["blur 1.00"].clean_cost == 0.0 and low_cost is not None and low_cost > 0.5, "inseparable"
    assert spread["clean a"].clean_cost is None
    text = report_markdown(result, result, cfg, header=["# t"])
    assert "Where `blur` lies for check `blur`" in text and "Where `dust` lies" not in text


@pytest.mark.parametrize("size", [32, 33, 57, 224])
def test_measure_returns_finite_rows_when_square_is_black_white_or_noise(size: int) -> None:
    rng = np.random.default_rng(size)
    squares = np.stack(
        [
            np.zeros((3, size, size), np.uint8),
            np.full((3, size, size), 255, np.uint8),
            rng.integers(0, 256, (3, size, size)).astype(np.uint8),
        ]
    )
    rows = quality.measure(squares)
    assert rows.shape == (3, len(quality.MEASURES)) and np.isfinite(rows).all()
    assert rows[0, quality.MEASURES.index("dust")] == 0.0 and rows[0, quality.MEASURES.index("exposure")] == 0.0


@pytest.mark.parametrize("size", [128, 224])
def test_measure_reads_no_dust_when_field_fills_the_square_to_its_edge(size: int) -> None:
    # The demo serves 128-px squares cut from a field as wide as the crop: the field's edge at the
    # square's border once read as a ring of neutral shadows (every clean demo image "dusty").
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    r = np.hypot(xs - size / 2, ys - size / 2) / (size / 2)
    fall_off = np.clip((1.02 - r) / 0.06, 0.0, 1.0) * (1.0 - 0.3 * np.clip(r, 0.0, 1.0) ** 2)
    planes = np.stack([np.rint(level * fall_off) for level in (205, 95, 40)])[None].astype(np.uint8)
    assert _dust(planes)[0] == 0.0
