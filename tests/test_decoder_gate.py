"""The decoder gate: serving nvJPEG in place of the training decoder is measured, recorded, refused past tolerance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from serving_fixtures import build_tiny_onnx, make_fundus_jpeg

from predilect import contract
from predilect.build.decoder_gate import DecoderGateError, GateImages, gate_decoder, gate_repository
from predilect.errors import UserError
from predilect.preprocess import PreprocessCfg
from predilect.serving import triton_config
from predilect.serving.dali_pipeline import DaliParams
from predilect.serving.gpu_profile import GpuServingOptions, assemble_gpu, synthetic_gate_images

HAS_GPU = Path("/dev/nvidiactl").exists()


def _images(n: int = 4) -> GateImages:
    sizes = [(640, 480), (1024, 768), (1600, 1200), (480, 640)]
    payloads = tuple(make_fundus_jpeg(seed, size=sizes[seed % len(sizes)]) for seed in range(n))
    return GateImages(payloads, None, "fixture photographs")


def _damaged(jpeg: bytes) -> bytes:
    """Scan data overwritten after the headers: libjpeg-turbo's strict decode refuses it, DALI's fills it in."""
    damaged = bytearray(jpeg)
    scan = damaged.index(b"\xff\xda") + 40
    damaged[scan : scan + 64] = bytes(range(64))
    return bytes(damaged)


@pytest.fixture(scope="module")
def gpu_repository(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return assemble_gpu(tiny_onnx, tmp_path_factory.mktemp("gate") / "repo")


def test_gate_decoder_reports_agreement_when_dali_cpu_twin_checks_within_tolerance(tiny_onnx: Path) -> None:
    report = gate_decoder(
        PreprocessCfg(), served="dali_mixed", images=_images(), reference_onnx=tiny_onnx, check_with="dali_cpu"
    )
    assert report.passed and report.images == 4 and report.rejected_by_one == 0
    assert (report.trained_with, report.served, report.checked_with) == ("pil_draft", "dali_mixed", "dali_cpu")
    assert report.max_abs_dpixel > 0.0 and 0.0 <= report.max_abs_dp <= report.tolerance_dp
    assert report.auroc_change is None  # no labels: max |dp| only


def test_gate_decoder_raises_user_error_when_difference_exceeds_tolerance(tiny_onnx: Path) -> None:
    with pytest.raises(DecoderGateError, match="decoder gate fails.*pil_draft") as caught:
        gate_decoder(
            PreprocessCfg(),
            served="dali_mixed",
            images=_images(2),
            reference_onnx=tiny_onnx,
            check_with="dali_cpu",
            tolerance_dp=0.0,
        )
    assert isinstance(caught.value, UserError)


def test_gate_decoder_screens_damaged_image_like_training_decoder_when_field_measured_on_host(
    tiny_onnx: Path,
) -> None:
    # Every DALI decoder measures the field of view on the host with the training decoder's strict
    # decode before the pipeline runs, so scan data that decoder refuses is refused by the served one
    # too, with the same words: the gate sees one image, refused by neither alone.
    from predilect.preprocess import Preprocessor

    good = make_fundus_jpeg(0, size=(640, 480))
    images = GateImages((good, _damaged(good)), None, "one damaged photograph")
    report = gate_decoder(
        PreprocessCfg(), served="dali_mixed", images=images, reference_onnx=tiny_onnx, check_with="dali_cpu"
    )
    assert report.passed and report.images == 1 and report.rejected_by_one == 0
    answers = [
        Preprocessor(PreprocessCfg(decoder=d)).run(list(images.payloads)).errors for d in ("pil_draft", "dali_cpu")
    ]
    assert answers[0][0] is None and str(answers[0][1]) == str(answers[1][1]) != "None"


def test_gate_images_round_trip_when_saved_without_pickles(tmp_path: Path) -> None:
    images = GateImages((b"\xff\xd8one", b"", b"three"), np.eye(3, dtype=np.float32), "here")
    images.save(tmp_path / "gate.npz")
    loaded = GateImages.load(tmp_path / "gate.npz")
    assert loaded.payloads == images.payloads and loaded.source == "here"
    np.testing.assert_array_equal(loaded.labels, images.labels)
    GateImages((b"x",), None, "unlabelled").save(tmp_path / "unlabelled.npz")
    assert GateImages.load(tmp_path / "unlabelled.npz").labels is None


def test_assemble_gpu_records_served_decoder_and_gate_when_checkpoint_trained_with_pil_draft(
    gpu_repository: Path,
) -> None:
    preprocess = gpu_repository / contract.PREPROCESS_MODEL
    params = DaliParams.beside(preprocess / contract.TRITON_VERSION / contract.DALI_FILENAME)
    assert params.preprocess.decoder == "pil_draft" and params.decoder == "dali_mixed"
    assert params.served.decoder == "dali_mixed"
    raw = json.loads((preprocess / contract.TRITON_VERSION / contract.DALI_PARAMS_FILENAME).read_text())
    assert raw[contract.KEY_SERVED_DECODER] == "dali_mixed" and raw[contract.KEY_DECODER_GATE]["passed"] is True
    assert raw[contract.KEY_DECODER_GATE]["checked_with"] == "dali_cpu"
    gate = GateImages.load(preprocess / contract.DECODER_GATE_SET_FILENAME)
    assert gate.payloads == synthetic_gate_images().payloads and "synthetic" in gate.source
    ensemble = triton_config.read_config(gpu_repository / contract.ENSEMBLE / contract.CONFIG_FILENAME)
    served = {key: value.string_value for key, value in ensemble.parameters.items()}
    assert served[contract.KEY_SERVED_DECODER] == "dali_mixed"
    assert json.loads(served[contract.KEY_DECODER_GATE]) == raw[contract.KEY_DECODER_GATE]


def test_assemble_gpu_refuses_and_writes_nothing_when_decoder_gate_fails(tiny_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(DecoderGateError):
        assemble_gpu(tiny_onnx, tmp_path / "repo", GpuServingOptions(decoder_tolerance_dp=0.0))
    assert not (tmp_path / "repo").exists()


def test_assemble_gpu_records_no_gate_when_checkpoint_trained_with_served_decoder(tmp_path: Path) -> None:
    onnx_path = build_tiny_onnx(tmp_path / "model.onnx", cfg=PreprocessCfg(decoder="dali_mixed"))
    repo = assemble_gpu(onnx_path, tmp_path / "repo")
    raw = json.loads(
        (repo / contract.PREPROCESS_MODEL / contract.TRITON_VERSION / contract.DALI_PARAMS_FILENAME).read_text()
    )
    assert raw[contract.KEY_SERVED_DECODER] == "dali_mixed" and contract.KEY_DECODER_GATE not in raw
    assert not (repo / contract.PREPROCESS_MODEL / contract.DECODER_GATE_SET_FILENAME).exists()
    assert gate_repository(repo) is None


def test_gate_repository_reruns_recorded_gate_when_cpu_twin_checks(gpu_repository: Path) -> None:
    raw = json.loads(
        (
            gpu_repository / contract.PREPROCESS_MODEL / contract.TRITON_VERSION / contract.DALI_PARAMS_FILENAME
        ).read_text()
    )
    report = gate_repository(gpu_repository, check_with="dali_cpu", device_id=None)
    assert report is not None and json.loads(report.to_json()) == raw[contract.KEY_DECODER_GATE]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="the served decoder (nvJPEG, dali_mixed) needs a GPU")
def test_gate_repository_passes_with_nvjpeg_when_gpu_present(gpu_repository: Path) -> None:
    report = gate_repository(gpu_repository, device_id=0)
    assert report is not None and report.passed and report.checked_with == "dali_mixed"
    assert report.images == len(synthetic_gate_images().payloads)
