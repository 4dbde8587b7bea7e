"""A real fundus photograph: scikit-image's ``retina.jpg`` (Wikimedia Commons, shipped inside the wheel, read from
disk, no network), graded as a grader would and screened through the real tritonserver.

A smoke test of the rules on one real camera's picture -- a full circle with an orientation notch -- and on
what a site's other cameras do to such a picture (a 3:2 frame cutting the circle, a frame-filling crop,
a burned-in date, pale and pigmented fundi, colour casts, a red-free capture, a thumbnail): not a calibration set.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from predilect import contract, quality
from predilect.client.results import QualityReport
from predilect.preprocess import PreprocessCfg, Preprocessor

CFG = PreprocessCfg()


def retina_path() -> Path:
    import skimage.data

    path = Path(skimage.data.__file__).parent / "retina.jpg"
    assert path.is_file(), "scikit-image's wheel ships data/retina.jpg"
    return path


@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    with Image.open(retina_path()) as image:
        return np.asarray(image.convert("RGB"))


def _jpeg(pixels: np.ndarray, quality_level: int = 92) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality_level)
    return buffer.getvalue()


def _reasons(payloads: list[bytes]) -> list[list[str]]:
    done = Preprocessor(CFG, max_batch_size=8).run(payloads, quality=True)
    assert done.errors == [None] * len(payloads)
    frames = quality.frames_of(CFG.quality_size, done.boxes, done.frames)
    measures = quality.measure(quality.planes_from_pixels(done.pixels, CFG.mean, CFG.std), frames=frames)
    return [
        QualityReport.from_row(row).reasons for row in quality.grade(measures, quality.default_quality_cfg()).tensor()
    ]


def _field(retina: np.ndarray) -> np.ndarray:
    return retina.max(axis=2) > 20


def _cut_3_2(retina: np.ndarray) -> np.ndarray:
    """The circle in a 3:2 frame that cuts a tenth of its height at the top and at the bottom."""
    side = retina.shape[0]
    cut = side // 10
    frame = np.zeros((side - 2 * cut, (side - 2 * cut) * 3 // 2, 3), np.uint8)
    left = (frame.shape[1] - side) // 2
    frame[:, left : left + side] = retina[cut : side - cut]
    return frame


def _with_date(pixels: np.ndarray) -> np.ndarray:
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    draw.text((20, pixels.shape[0] - 40), "2026-11-30 10:42 OD  ID 000123", fill=(255, 255, 255))
    draw.rectangle((20, 20, 220, 60), fill=(200, 200, 200))
    return np.asarray(image)


def _tinted(retina: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    out = np.clip(retina.astype(np.float64) * np.array(gains), 0, 255).astype(np.uint8)
    out[~_field(retina)] = 0
    return out


def test_grade_passes_real_fundus_when_field_is_circle_cut_cropped_or_captioned(retina: np.ndarray) -> None:
    wide = np.zeros((retina.shape[0], retina.shape[1] * 3 // 2, 3), np.uint8)
    left = (wide.shape[1] - retina.shape[1]) // 2
    wide[:, left : left + retina.shape[1]] = retina
    centre = retina.shape[0] // 2
    variants = {
        "as shipped (circle with a notch)": retina,
        "3:2 frame cutting the circle": _cut_3_2(retina),
        "frame-filling crop": retina[centre - 330 : centre + 330, centre - 500 : centre + 500],
        "burned-in date beside the field": _with_date(wide),
        "JPEG quality 40 at 640 px": np.asarray(Image.fromarray(retina).resize((640, 640), Image.Resampling.LANCZOS)),
        "thumbnail, 250 px": np.asarray(Image.fromarray(retina).resize((250, 250), Image.Resampling.LANCZOS)),
    }
    qualities = {name: 40 if "JPEG" in name else 92 for name in variants}
    reasons = _reasons([_jpeg(v, qualities[name]) for name, v in variants.items()])
    assert dict(zip(variants, reasons, strict=True)) == {name: [] for name in variants}


def test_grade_passes_real_fundus_when_colour_varies_as_eyes_and_cameras_do(retina: np.ndarray) -> None:
    variants = {
        "pale (fair fundus, cool flash)": _tinted(retina, (0.95, 1.25, 1.45)),
        "dark-pigmented": _tinted(retina, (0.8, 0.6, 0.55)),
        "warm cast": _tinted(retina, (1.05, 0.85, 0.7)),
        "cool cast": _tinted(retina, (0.9, 1.0, 1.15)),
    }
    reasons = _reasons([_jpeg(v) for v in variants.values()])
    assert dict(zip(variants, reasons, strict=True)) == {name: [] for name in variants}


def test_grade_names_red_free_and_greyscale_as_monochrome_when_one_colour(retina: np.ndarray) -> None:
    green = retina[..., 1]
    red_free_tinted = np.zeros_like(retina)
    red_free_tinted[..., 1] = green
    variants = [
        np.stack([green] * 3, axis=-1),  # red-free, stored as grey
        red_free_tinted,  # red-free, stored green
        np.stack([retina.mean(axis=2).astype(np.uint8)] * 3, axis=-1),  # a colour photograph made grey
    ]
    for reasons in _reasons([_jpeg(v) for v in variants]):
        assert "monochrome" in reasons and "wrong_image_type" not in reasons


def test_grade_flags_too_small_and_focus_when_field_too_few_pixels_or_defocused(retina: np.ndarray) -> None:
    small = np.asarray(Image.fromarray(retina).resize((160, 160), Image.Resampling.LANCZOS))
    blurred = np.asarray(Image.fromarray(retina).filter(ImageFilter.GaussianBlur(8)))
    shifted = np.zeros_like(retina)
    shifted[:, 300:] = retina[:, :-300]  # the camera not aligned: a third of the field off the square
    too_small, defocused, off_centre = _reasons([_jpeg(small), _jpeg(blurred), _jpeg(shifted)])
    assert too_small == ["too_small"] and "focus" in defocused and off_centre == ["field_of_view"]


def test_served_result_grades_real_fundus_and_never_screens_red_free_when_layout(layout_server, retina) -> None:
    from predilect.client import ScreeningClient

    with ScreeningClient(layout_server.grpc_url, timeout_s=60) as client:
        real = client.screen(retina_path())
        red_free = client.screen(_jpeg(np.stack([retina[..., 1]] * 3, axis=-1)))
    assert real.gradable and real.decision != "ungradable" and real.probabilities is not None, real.quality
    assert real.quality.measures is not None and real.quality.measures["masked"] == 1.0
    assert not red_free.gradable and red_free.decision == "ungradable" and red_free.probabilities is None
    assert "monochrome" in red_free.quality.reasons and not red_free.positive
    assert contract.QUALITY_REASONS.index("monochrome") >= 0
