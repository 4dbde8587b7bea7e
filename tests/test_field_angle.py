"""Angular normalisation: a camera's field angle scales the crop so the model sees one retinal scale."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from predilect import contract
from predilect.errors import ConfigError
from predilect.manifest import ManifestError, Record, field_angle_of
from predilect.preprocess import InvalidImageError, PreprocessCfg, Preprocessor
from predilect.preprocess.config import check_field_angle
from predilect.serving.server import TritonServer


def _field_photograph(*, width: int = 1200, height: int = 900, marker: float = 0.2, fill: bool = False) -> bytes:
    """A lit field (a circle of 0.9 frame heights, or the whole frame with ``fill``) with a white central
    square of ``marker`` field diameters: the structure whose size on the model square is measured."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    cx, cy = width / 2, height / 2
    diameter = float(min(width, height)) if fill else 0.9 * height
    if fill:
        draw.rectangle((0, 0, width, height), fill=(170, 80, 40))
    else:
        draw.ellipse((cx - diameter / 2, cy - diameter / 2, cx + diameter / 2, cy + diameter / 2), fill=(170, 80, 40))
    half = marker * diameter / 2
    draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=(255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _marker_share(pixels: np.ndarray, cfg: PreprocessCfg) -> float:
    """The white marker's width over the model square's side (rows through the centre)."""
    red = pixels[0] * cfg.std[0] + cfg.mean[0]
    row = red[red.shape[0] // 2]
    green = pixels[1, pixels.shape[1] // 2] * cfg.std[1] + cfg.mean[1]
    return float(np.count_nonzero((row > 0.9) & (green > 0.9))) / row.shape[0]


def _lit_share(pixels: np.ndarray, cfg: PreprocessCfg) -> float:
    red = pixels[0] * cfg.std[0] + cfg.mean[0]
    row = red[red.shape[0] // 2]
    return float(np.count_nonzero(row > 0.2)) / row.shape[0]


@pytest.fixture(scope="module")
def preprocessor() -> Preprocessor:
    return Preprocessor(PreprocessCfg(size=128, quality_size=128), max_batch_size=4, num_threads=1)


def test_crop_scale_is_model_angle_over_camera_angle_when_angle_given():
    cfg = PreprocessCfg()
    assert cfg.crop_scale(133.0) == pytest.approx(45.0 / 133.0)
    assert cfg.crop_scale(None) == 1.0
    assert PreprocessCfg(field_angle_deg=None).crop_scale(133.0) == 1.0


def test_preprocess_cfg_reads_older_crop_when_json_has_no_field_angle():
    data = json.loads(PreprocessCfg().to_json())
    del data["field_angle_deg"]
    assert PreprocessCfg.from_json(json.dumps(data)).field_angle_deg is None
    assert PreprocessCfg.from_json(PreprocessCfg().to_json()).field_angle_deg == 45.0


def test_preprocess_cfg_refuses_field_angle_when_outside_cameras_range():
    with pytest.raises(ConfigError, match="field_angle_deg"):
        PreprocessCfg(field_angle_deg=5.0)


@pytest.mark.parametrize("value", [True, "wide", math.nan, math.inf, 9.0, 221.0, [45], None])
def test_check_field_angle_refuses_value_when_not_a_cameras_angle(value):
    with pytest.raises(ValueError, match="field angle"):
        check_field_angle(value)


def test_check_field_angle_reads_number_when_text_or_int():
    assert check_field_angle("133") == 133.0
    assert check_field_angle(45) == 45.0


def test_preprocessor_magnifies_posterior_pole_when_camera_wider(preprocessor):
    photo = _field_photograph()
    plain, wide = preprocessor.run([photo, photo], field_angles_deg=[None, 90.0]).per_payload()
    assert _marker_share(plain, preprocessor.cfg) == pytest.approx(0.2, abs=0.03)
    assert _marker_share(wide, preprocessor.cfg) == pytest.approx(0.4, abs=0.03)  # 90 / 45 times larger
    assert _lit_share(wide, preprocessor.cfg) == 1.0  # the crop lies inside the field


def test_preprocessor_places_narrow_field_on_black_when_camera_narrower(preprocessor):
    (narrow,) = preprocessor.run([_field_photograph()], field_angles_deg=[22.5]).per_payload()
    assert _lit_share(narrow, preprocessor.cfg) == pytest.approx(0.5, abs=0.03)
    assert _marker_share(narrow, preprocessor.cfg) == pytest.approx(0.1, abs=0.02)


def test_preprocessor_box_spans_crop_when_field_angle_given(preprocessor):
    done = preprocessor.run([_field_photograph(), _field_photograph()], field_angles_deg=[None, 90.0])
    (left, top, right, bottom), (wleft, wtop, wright, wbottom) = done.boxes
    assert (right - left) * 1200 == pytest.approx(810, abs=4)  # the field's 0.9 x 900 px diameter
    assert (wright - wleft) * 1200 == pytest.approx(405, abs=4)  # half of it: 45 of 90 degrees
    assert (wleft + wright) / 2 == pytest.approx(0.5) and (wtop + wbottom) / 2 == pytest.approx(0.5)


def test_preprocessor_takes_circumscribed_field_when_field_fills_frame(preprocessor):
    done = preprocessor.run([_field_photograph(width=800, height=800, fill=True)])
    (left, _, right, _) = done.boxes[0]
    assert (right - left) * 800 == pytest.approx(800 * math.sqrt(2), abs=3)
    legacy = Preprocessor(PreprocessCfg(size=128, quality_size=128, field_angle_deg=None), num_threads=1)
    old_box = legacy.run([_field_photograph(width=800, height=800, fill=True)]).boxes[0]
    assert old_box is not None
    (old_left, _, old_right, _) = old_box
    assert (old_right - old_left) * 800 == pytest.approx(800, abs=2)  # older checkpoints keep the lit extent


def test_preprocessor_keeps_circle_crop_when_text_burned_into_black_corner(preprocessor):
    image = Image.open(io.BytesIO(_field_photograph(width=900, height=900))).convert("RGB")
    ImageDraw.Draw(image).text((4, 880), "2024-01-01 OD", fill=(255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    (left, _, right, _) = preprocessor.run([buffer.getvalue()]).boxes[0]
    assert (right - left) * 900 < 900  # the circle, not the frame's diagonal


def test_preprocessor_decodes_finer_when_crop_is_posterior_pole():
    cfg = PreprocessCfg(size=128, quality_size=128)
    from predilect.preprocess.decoders.pil_draft import draft_field
    from predilect.preprocess.sniff import inspect_image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(_field_photograph(width=2400, height=1800))).save(buffer, format="JPEG", quality=90)
    data = np.frombuffer(buffer.getvalue(), np.uint8)
    header = inspect_image(data, cfg)
    assert draft_field(data, cfg, header).side_px < 2 * 128 * 2  # 1/8 scale: 1620 / 8 px
    assert draft_field(data, cfg, header, field_angle_deg=133.0).side_px >= 128  # never upsampled


def test_dali_cpu_crops_like_pil_draft_when_field_angle_given():
    pytest.importorskip("nvidia.dali")
    cfg = PreprocessCfg(size=128, quality_size=128, decoder="dali_cpu")
    photo = _field_photograph()
    dali = Preprocessor(cfg, max_batch_size=2, num_threads=1).run([photo], field_angles_deg=[90.0])
    pil = Preprocessor(PreprocessCfg(size=128, quality_size=128), num_threads=1).run([photo], field_angles_deg=[90.0])
    assert dali.boxes == pil.boxes
    assert _marker_share(dali.pixels[0], cfg) == pytest.approx(0.4, abs=0.03)


def test_preprocessor_refuses_angles_when_count_differs(preprocessor):
    with pytest.raises(ValueError, match="field angles"):
        preprocessor.run([_field_photograph()], field_angles_deg=[None, 45.0])


def test_request_field_angle_reads_parameter_when_sent_and_rejects_when_not_an_angle():
    from predilect.serving.backends.preprocess import request_field_angle

    assert request_field_angle(None) is None
    assert request_field_angle(json.dumps({contract.REQUEST_CAMERA: "x"})) is None
    assert request_field_angle(json.dumps({contract.REQUEST_FIELD_ANGLE_DEG: 133.0})) == 133.0
    refused = request_field_angle(json.dumps({contract.REQUEST_FIELD_ANGLE_DEG: 1000}))
    assert isinstance(refused, InvalidImageError) and contract.REQUEST_FIELD_ANGLE_DEG in str(refused)


def test_field_angle_of_reads_column_when_set_and_names_record_when_bad(tmp_path: Path):
    assert field_angle_of(Record(tmp_path / "a.jpg", frozenset())) is None
    assert field_angle_of(Record(tmp_path / "a.jpg", frozenset(), extra={"field_angle_deg": "133"})) == 133.0
    with pytest.raises(ManifestError, match="a.jpg"):
        field_angle_of(Record(tmp_path / "a.jpg", frozenset(), extra={"field_angle_deg": "wide"}))


def test_dicom_field_angle_reads_horizontal_field_of_view_when_present():
    pydicom = pytest.importorskip("pydicom")
    from predilect.dicom.reader import field_angle

    dataset = pydicom.Dataset()
    assert field_angle(dataset) is None
    dataset.HorizontalFieldOfView = 133.0
    assert field_angle(dataset) == 133.0
    dataset.HorizontalFieldOfView = 500.0
    assert field_angle(dataset) is None  # not a fundus camera's angle: the model's is assumed


def test_client_refuses_field_angle_when_not_a_cameras_angle():
    from predilect.client import ScreeningClient
    from predilect.client.errors import ClientConfigError

    with pytest.raises(ClientConfigError, match="field_angle_deg"):
        ScreeningClient("localhost:1", field_angle_deg=400.0)


def test_narrow_augmentation_masks_outside_field_and_sends_its_angle():
    from predilect.training.datasets.augment import narrow_diameter, reshape_field, shot_field_angle

    square = np.full((100, 100, 3), 200, np.uint8)
    out = reshape_field(square, "narrow", (0.0, 0.5, 0.5))  # the narrowest: 0.4 field diameters
    assert out[50, 50].tolist() == [200, 200, 200] and out[50, 5].tolist() == [0, 0, 0]
    assert np.count_nonzero(out[50, :, 0]) == pytest.approx(40, abs=2)
    assert narrow_diameter(0.0) == 0.4

    class _Shot:
        shape, shape_draws = "narrow", (0.5, 0.0, 0.0)

    assert shot_field_angle(_Shot(), 45.0) == pytest.approx(45.0 * 0.7)
    assert shot_field_angle(_Shot(), None) is None


def test_served_crop_follows_field_angle_when_client_sends_it(
    layout_server: TritonServer, fundus_jpeg: Callable[[int], bytes]
):
    from predilect.client import ScreeningClient

    photo = fundus_jpeg(3)
    with ScreeningClient(layout_server.grpc_url, timeout_s=60) as plain:
        base = plain.screen(photo)
    with ScreeningClient(layout_server.grpc_url, timeout_s=60, field_angle_deg=90.0) as wide:
        result = wide.screen(photo)
    assert base.field_box is not None and result.field_box is not None
    width = base.field_box[2] - base.field_box[0]
    assert result.field_box[2] - result.field_box[0] == pytest.approx(width / 2, rel=0.02)
    # A third-party caller (plain tritonclient) sending an angle no camera has gets its own refusal.
    from tritonclient.grpc import InferenceServerClient, InferInput
    from tritonclient.utils import InferenceServerException

    array = np.frombuffer(photo, np.uint8)[None]
    tensor = InferInput(contract.IMAGE, list(array.shape), "UINT8")
    tensor.set_data_from_numpy(array)
    caller = InferenceServerClient(layout_server.grpc_url)
    try:
        with pytest.raises(InferenceServerException, match="field angle"):
            caller.infer(plain.model_name, [tensor], parameters={contract.REQUEST_FIELD_ANGLE_DEG: 5000.0})
    finally:
        caller.close()


def test_read_labelled_reads_field_angle_when_column_set_and_names_line_when_bad(tmp_path: Path):
    from predilect.client.site_calibration import LabelledManifestError, read_labelled

    (tmp_path / "a.png").write_bytes(_field_photograph(width=200, height=150))
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("path,gradable,camera,field_angle_deg\na.png,1,Wide,133\na.png,1,Desk,\n")
    wide, desk = read_labelled(labelled)
    assert wide.field_angle_deg == 133.0 and desk.field_angle_deg is None
    labelled.write_text("path,gradable,field_angle_deg\na.png,1,900\n")
    with pytest.raises(LabelledManifestError, match=r"labelled.csv:2: field_angle_deg"):
        read_labelled(labelled)


def test_preprocessor_refuses_image_when_narrow_angle_would_pad_past_pixel_limit():
    cfg = PreprocessCfg(size=128, quality_size=128, max_pixels=4_000_000)
    photo = _field_photograph()  # 1200 x 900, a field of 810 px: 10 degrees would pad it to 3645 px a side
    narrow, normal = Preprocessor(cfg, num_threads=1).run([photo, photo], field_angles_deg=[10.0, 45.0]).errors
    assert isinstance(narrow, InvalidImageError) and "field angle of 10 degrees" in str(narrow)
    assert normal is None
