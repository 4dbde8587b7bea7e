"""Gradability on a square of its own: quality is measured at the calibrated size whatever
the model's input side, from the same decoded frame and crop; sizes that disagree are refused."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from PIL import Image

from predilect import contract, quality
from predilect.catalog import DEFAULT_CATALOG
from predilect.client.results import QualityReport
from predilect.errors import ConfigError, UserError
from predilect.preprocess import InvalidImageError, PreprocessCfg, Preprocessor
from predilect.serving import configs
from predilect.serving.backends.screening import Screening

SMALL = PreprocessCfg(size=128)  # the demo model's input; quality_size stays 224
LARGE = PreprocessCfg()
GRADED_ON_224_ONLY = 26
"""``make_fundus_jpeg`` seed of a clean image that the old 128-px measure flags (dust) and the 224-px one passes."""


def _old_128_px_rows(payloads: list[bytes]) -> np.ndarray:
    """QUALITY rows as the code before the quality square graded a 128-px model: its own input, 224-px thresholds."""
    before = PreprocessCfg(size=128, quality_size=128)  # decodes for 128 and grades the model input
    pixels = Preprocessor(before, num_threads=1).run(payloads).pixels_or_raise()
    planes = quality.planes_from_pixels(pixels, before.mean, before.std)
    return quality.grade(
        quality.measure(planes, fov_threshold=before.fov_threshold), quality.default_quality_cfg()
    ).tensor()


def _rows_on_224_px_square(payloads: list[bytes]) -> np.ndarray:
    """QUALITY rows of a 224-px model (its input is the quality square), computed in process."""
    done = Preprocessor(LARGE, num_threads=1).run(payloads)
    return quality.assess_pixels(
        done.pixels_or_raise(),
        quality.default_quality_cfg(),
        mean=LARGE.mean,
        std=LARGE.std,
        fov_threshold=LARGE.fov_threshold,
        frames=quality.frames_of(LARGE.quality_size, done.boxes, done.frames),
    ).quality


# ----------------------------------------------------------------------------- configuration


def test_preprocess_cfg_loads_quality_size_224_when_json_predates_it() -> None:
    old = json.loads(PreprocessCfg(size=128).to_json())
    del old["quality_size"]
    cfg = PreprocessCfg.from_json(json.dumps(old))
    assert cfg.quality_size == 224 and cfg.size == 128 and cfg.separate_quality_square and cfg.decode_px == 224


def test_preprocess_cfg_raises_when_quality_size_below_measures_minimum() -> None:
    with pytest.raises(ValueError, match="quality_size"):
        PreprocessCfg(quality_size=31)


def test_quality_cfg_loads_size_224_when_json_predates_it() -> None:
    data = quality.default_quality_cfg().to_dict()
    assert data["size"] == 224
    del data["size"]
    assert quality.QualityCfg.from_dict(data).size == 224


@pytest.mark.parametrize("size", ["224", 12.5, True, 16])
def test_quality_cfg_raises_user_error_when_size_not_pixels(size: object) -> None:
    data = {**quality.default_quality_cfg().to_dict(), "size": size}
    with pytest.raises(quality.QualityConfigError, match="size"):
        quality.QualityCfg.from_dict(data)


def test_calibrate_records_square_size_when_measured_at_quality_size() -> None:
    from predilect.training.gradability import Measured, calibrate

    rng = np.random.default_rng(3)
    measures = rng.normal(1.0, 0.05, size=(40, len(quality.MEASURES))).clip(0.01)
    measured = Measured(
        kinds=["none"] * 40,
        strengths=[0.0] * 40,
        cameras=["a"] * 40,
        paths=[""] * 40,
        measures=measures,
        refused=np.zeros(40, dtype=bool),
        size=160,
    )
    assert calibrate(measured).size == 160


def test_served_model_raises_config_error_when_quality_calibrated_at_other_size() -> None:
    with pytest.raises(ConfigError, match="224-px squares cannot grade the 128-px"):
        configs.ServedModel(DEFAULT_CATALOG, PreprocessCfg(size=128, quality_size=128), "tiny", "1")
    at_128 = dataclasses.replace(quality.default_quality_cfg(), size=128)
    served = configs.ServedModel(
        DEFAULT_CATALOG, PreprocessCfg(size=128, quality_size=128), "tiny", "1", quality=at_128
    )
    assert json.loads(served.rules.to_json())["quality"]["size"] == 128


def test_screening_raises_user_error_at_initialize_when_repository_sizes_disagree() -> None:
    # What every grading model's initialize runs on its config parameters: a repository edited (or
    # assembled by an older version) so that preprocess and calibration disagree fails to load.
    served = configs.ServedModel(DEFAULT_CATALOG, SMALL, "tiny", "1")
    params = configs.screening_parameters(served)
    params[contract.KEY_PREPROCESS] = PreprocessCfg(size=128, quality_size=160).to_json()
    with pytest.raises(quality.QualitySizeError, match="160-px") as raised:
        Screening.from_parameters(params)
    assert isinstance(raised.value, UserError) and "\n" not in str(raised.value)


def test_assemble_cli_refuses_with_one_line_when_quality_calibrated_at_other_size(tmp_path, capsys) -> None:
    from serving_fixtures import build_tiny_onnx

    from predilect.serving.assemble_cli import main

    onnx_path = build_tiny_onnx(tmp_path / "model.onnx", cfg=PreprocessCfg(size=128, quality_size=128))
    assert main(["--onnx", str(onnx_path), "--out", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "quality_size=128" in err and "Traceback" not in err
    assert not (tmp_path / "repo").exists()
    calibration = tmp_path / "quality_128.json"
    calibration.write_text(json.dumps({**quality.default_quality_cfg().to_dict(), "size": 128}), encoding="utf-8")
    argv = ["--onnx", str(onnx_path), "--out", str(tmp_path / "repo"), "--quality", str(calibration)]
    assert main(argv) == 0  # thresholds calibrated at the model's quality size are served


def test_assess_planes_raises_when_square_not_calibrated_size() -> None:
    with pytest.raises(ValueError, match="calibrated at 224"):
        quality.assess_planes(np.zeros((1, 3, 128, 128), np.uint8), quality.default_quality_cfg(), fov_threshold=20)


# ----------------------------------------------------------------------------- preprocessing


def test_preprocessor_quality_square_equals_224_px_model_square_when_model_input_is_128_px(fundus_jpeg) -> None:
    payloads = [fundus_jpeg(seed) for seed in (1, 2)] + [b"not an image", fundus_jpeg(3)]
    done = Preprocessor(SMALL, max_batch_size=2, num_threads=2).run(payloads, quality=True)
    assert [e is None for e in done.errors] == [True, True, False, True]
    assert done.pixels.shape == (3, 3, 128, 128) and done.quality_planes is not None
    assert done.quality_planes.shape == (3, 3, 224, 224) and done.quality_planes.dtype == np.uint8
    good = [payloads[i] for i in (0, 1, 3)]
    model_224 = Preprocessor(LARGE, num_threads=1).run(good).pixels_or_raise()
    np.testing.assert_array_equal(done.quality_planes, quality.planes_from_pixels(model_224, LARGE.mean, LARGE.std))
    # The model input does not depend on whether the quality square was asked for.
    np.testing.assert_array_equal(done.pixels, Preprocessor(SMALL, num_threads=1).run(good).pixels_or_raise())
    assert done.boxes == Preprocessor(SMALL, num_threads=1).run(payloads).boxes


def test_preprocessor_cuts_no_quality_square_when_model_input_has_quality_size(fundus_jpeg) -> None:
    done = Preprocessor(LARGE, num_threads=1).run([fundus_jpeg(1)], quality=True)
    assert done.quality_planes is None and done.pixels.shape == (1, 3, 224, 224)


def test_preprocessor_gives_empty_quality_planes_when_every_payload_rejected() -> None:
    done = Preprocessor(SMALL, num_threads=1).run([b"junk", b""], quality=True)
    assert all(isinstance(e, InvalidImageError) for e in done.errors)
    assert done.quality_planes is not None and done.quality_planes.shape == (0, 3, 224, 224)


def test_dali_cpu_decoder_quality_square_matches_pixels_order_when_batch_has_rejected_image(fundus_jpeg) -> None:
    cfg = dataclasses.replace(SMALL, decoder="dali_cpu")
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240)).save(buffer, format="JPEG")  # no field of view: rejected after decoding
    payloads = [fundus_jpeg(1), buffer.getvalue(), fundus_jpeg(2)]
    done = Preprocessor(cfg, max_batch_size=4, num_threads=1).run(payloads, quality=True)
    assert isinstance(done.errors[1], InvalidImageError) and done.quality_planes is not None
    assert len(done.quality_planes) == len(done.pixels) == 2
    alone = Preprocessor(cfg, max_batch_size=4, num_threads=1).run([payloads[2]], quality=True)
    assert alone.quality_planes is not None
    np.testing.assert_array_equal(done.quality_planes[1], alone.quality_planes[0])


# ----------------------------------------------------------------------------- grading in the layouts


def test_split_preprocess_grades_224_px_square_when_model_input_is_128_px(fundus_jpeg) -> None:
    from predilect.serving.backends.preprocess import preprocess_and_grade

    payloads = [fundus_jpeg(seed) for seed in (0, GRADED_ON_224_ONLY)]
    screening = Screening.from_parameters(
        configs.screening_parameters(configs.ServedModel(DEFAULT_CATALOG, SMALL, "t", "1"))
    )
    out = preprocess_and_grade(
        Preprocessor(SMALL, num_threads=1), screening, [np.frombuffer(p, np.uint8)[np.newaxis] for p in payloads]
    )
    got = np.concatenate([o[contract.QUALITY] for o in out if not isinstance(o, InvalidImageError)])
    np.testing.assert_array_equal(got, _rows_on_224_px_square(payloads))
    assert out[0][contract.PIXELS].shape == (1, 3, 128, 128)  # type: ignore[index]


def test_screening_refuses_to_grade_model_input_when_quality_square_is_separate() -> None:
    screening = Screening.from_parameters(
        configs.screening_parameters(configs.ServedModel(DEFAULT_CATALOG, SMALL, "t", "1"))
    )
    with pytest.raises(ValueError, match="224-px square"):
        screening.quality(np.zeros((1, 3, 128, 128), np.float32))


@pytest.fixture(scope="module")
def fused_128_server(tritonserver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from serving_fixtures import build_tiny_onnx

    from predilect.serving.configs import ServingOptions
    from predilect.serving.repository import assemble

    work = tmp_path_factory.mktemp("fused128")
    onnx_path = build_tiny_onnx(work / "model.onnx", cfg=SMALL)
    options = ServingOptions(max_batch_size=8, fused_instances=1, max_queue_size=0, queue_timeout_us=0)
    repository = assemble(onnx_path, work / "repo", options)
    with tritonserver.on_free_ports(
        model_repository=repository, log_path=work / "tritonserver.log", startup_timeout_s=180
    ) as server:
        yield server


def test_served_quality_of_128_px_model_equals_quality_on_224_px_square_when_fused(
    fused_128_server, fundus_jpeg: Callable[[int], bytes]
) -> None:
    import tritonclient.grpc as grpcclient

    payloads = [fundus_jpeg(seed) for seed in (0, 5, GRADED_ON_224_ONLY)]
    served = []
    with grpcclient.InferenceServerClient(fused_128_server.grpc_url) as client:
        for payload in payloads:
            data = np.frombuffer(payload, np.uint8)[np.newaxis]
            tensor = grpcclient.InferInput(contract.IMAGE, list(data.shape), "UINT8")
            tensor.set_data_from_numpy(data)
            outputs = [
                grpcclient.InferRequestedOutput(contract.QUALITY),
                grpcclient.InferRequestedOutput(contract.REFERRAL),
            ]
            served.append(client.infer(contract.ENSEMBLE, [tensor], outputs=outputs).as_numpy(contract.QUALITY)[0])
    expected = _rows_on_224_px_square(payloads)
    np.testing.assert_array_equal(np.stack(served), expected)
    # Every clean image is gradable on the 224-px square; graded on the 128-px model input they are not all.
    assert all(row[0] > 0.5 and not row[1:].any() for row in served)
    old = _old_128_px_rows(payloads)
    assert any(QualityReport.from_row(row).reasons for row in old)


def test_old_128_px_grading_differs_from_served_when_same_clean_images(fundus_jpeg) -> None:
    # Guards the integration test above against a vacuous pass: the two gradings do disagree here.
    payloads = [fundus_jpeg(seed) for seed in (0, 5, GRADED_ON_224_ONLY)]
    assert not np.array_equal(_old_128_px_rows(payloads), _rows_on_224_px_square(payloads))
