"""The assembled CPU-profile repository: every model written, wired consistently, options applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from predilect import contract
from predilect.catalog import DEFAULT_CATALOG
from predilect.errors import ConfigError
from predilect.preprocess import PreprocessCfg
from predilect.quality import default_quality_cfg
from predilect.referral import ReferralRules
from predilect.serving import configs
from predilect.serving.assemble_cli import main
from predilect.serving.repository import ModelMetadataError, assemble, read_served_model
from predilect.serving.triton_config import read_config

SPLIT_MODELS = (contract.PREPROCESS_MODEL, contract.CLASSIFIER_MODEL, contract.POSTPROCESS_MODEL, contract.ENSEMBLE)
FUSED_MODELS = (contract.FUSED_MODEL, contract.ENSEMBLE)
LAYOUT_MODELS = {"split": SPLIT_MODELS, "fused": FUSED_MODELS}


@pytest.fixture(scope="module")
def split_repository(model_repository: Path) -> Path:
    assert read_config(model_repository / contract.PREPROCESS_MODEL / contract.CONFIG_FILENAME)
    return model_repository


@pytest.fixture(scope="module")
def fused_repository(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: Path) -> Path:
    options = configs.ServingOptions(max_batch_size=16)
    return assemble(tiny_onnx, tmp_path_factory.mktemp("fused") / "model_repository", options)


@pytest.fixture(params=["fused", "split"])
def any_repository(request: pytest.FixtureRequest, fused_repository: Path, split_repository: Path) -> Path:
    return fused_repository if request.param == "fused" else split_repository


def _load(repository: Path) -> dict[str, mc.ModelConfig]:
    return {p.name: read_config(p / contract.CONFIG_FILENAME) for p in repository.iterdir()}


def _tensors(config: mc.ModelConfig, kind: str) -> dict[str, tuple[int, list[int]]]:
    return {t.name: (t.data_type, list(t.dims)) for t in getattr(config, kind)}


def test_assemble_writes_every_model_when_given_exported_model(split_repository: Path) -> None:
    loaded = _load(split_repository)
    assert sorted(loaded) == sorted(SPLIT_MODELS)
    for name, config in loaded.items():
        assert config.name == name
    for name in (contract.PREPROCESS_MODEL, contract.CLASSIFIER_MODEL, contract.POSTPROCESS_MODEL):
        shim = (split_repository / name / "1" / "model.py").read_text()
        assert f"predilect.serving.backends.{name} import TritonPythonModel" in shim
    assert (split_repository / contract.CLASSIFIER_MODEL / "1" / "model.onnx").is_file()


def test_assemble_writes_fused_model_and_one_step_ensemble_when_layout_fused(fused_repository: Path) -> None:
    loaded = _load(fused_repository)
    assert sorted(loaded) == sorted(FUSED_MODELS)
    shim = (fused_repository / contract.FUSED_MODEL / "1" / "model.py").read_text()
    assert "predilect.serving.backends.fused import TritonPythonModel" in shim
    assert (fused_repository / contract.FUSED_MODEL / "1" / "model.onnx").is_file()
    fused, ensemble = loaded[contract.FUSED_MODEL], loaded[contract.ENSEMBLE]
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [contract.FUSED_MODEL]
    assert fused.input[0].allow_ragged_batch and fused.backend == "python"
    assert fused.instance_group[0].count == configs.ServingOptions().fused_instances


def test_ensemble_steps_reference_existing_models_and_tensors_when_assembled(any_repository: Path) -> None:
    loaded = _load(any_repository)
    ensemble = loaded[contract.ENSEMBLE]
    # Ensemble tensor name -> (data_type, dims) of whoever provides it, starting with the ensemble inputs.
    available = _tensors(ensemble, "input")
    for step in ensemble.ensemble_scheduling.step:
        model = loaded[step.model_name]
        inputs, outputs = _tensors(model, "input"), _tensors(model, "output")
        assert set(step.input_map) == set(inputs), f"{step.model_name}: every model input is fed"
        for model_tensor, ensemble_tensor in step.input_map.items():
            assert ensemble_tensor in available, f"{ensemble_tensor} is consumed before it is produced"
            assert available[ensemble_tensor] == inputs[model_tensor]
        for model_tensor, ensemble_tensor in step.output_map.items():
            available[ensemble_tensor] = outputs[model_tensor]
    for name, spec in _tensors(ensemble, "output").items():
        assert available.get(name) == spec


def test_configs_match_contract_when_assembled(split_repository: Path) -> None:
    loaded = _load(split_repository)
    size, classes = PreprocessCfg().size, len(DEFAULT_CATALOG)
    ensemble = loaded[contract.ENSEMBLE]
    assert ensemble.platform == "ensemble"
    assert _tensors(ensemble, "input") == {contract.IMAGE: (mc.TYPE_UINT8, [-1])}
    from serving_fixtures import TINY_GRID as grid

    quality = (mc.TYPE_FP32, [1 + len(contract.QUALITY_REASONS)])
    measures = (mc.TYPE_FP32, [len(contract.QUALITY_MEASURES)])
    assert _tensors(ensemble, "output") == {
        contract.PROBABILITIES: (mc.TYPE_FP32, [classes]),
        contract.QUALITY: quality,
        contract.QUALITY_MEASURES_TENSOR: measures,
        contract.FINDINGS: (mc.TYPE_BOOL, [classes]),
        contract.REFERRAL: (mc.TYPE_INT32, [1]),
        contract.FIELD_BOX: (mc.TYPE_FP32, [4]),
        contract.HEATMAPS: (mc.TYPE_FP32, [classes, grid, grid]),
    }
    assert _tensors(loaded[contract.PREPROCESS_MODEL], "output") == {
        contract.PIXELS: (mc.TYPE_FP32, [3, size, size]),
        contract.QUALITY: quality,
        contract.QUALITY_MEASURES_TENSOR: measures,
        contract.FIELD_BOX: (mc.TYPE_FP32, [4]),
    }
    assert loaded[contract.PREPROCESS_MODEL].input[0].allow_ragged_batch
    assert _tensors(loaded[contract.CLASSIFIER_MODEL], "output") == {
        contract.LOGITS: (mc.TYPE_FP32, [classes]),
        contract.ATTENTION: (mc.TYPE_FP32, [classes, grid, grid]),
    }
    for name in (contract.PREPROCESS_MODEL, contract.CLASSIFIER_MODEL, contract.POSTPROCESS_MODEL):
        config = loaded[name]
        assert config.backend == "python"
        assert config.max_batch_size == ensemble.max_batch_size == 16
        assert config.HasField("dynamic_batching")
        assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]


def test_ensemble_parameters_describe_exported_model_when_assembled(any_repository: Path, tiny_onnx: Path) -> None:
    params = {k: v.string_value for k, v in _load(any_repository)[contract.ENSEMBLE].parameters.items()}
    served = read_served_model(tiny_onnx)
    rules = ReferralRules.from_catalog(DEFAULT_CATALOG, default_quality_cfg().to_dict())
    assert params == {
        contract.KEY_CATALOG: DEFAULT_CATALOG.to_json(),
        contract.KEY_PREPROCESS: PreprocessCfg().to_json(),
        contract.KEY_MODEL_NAME: "uopsl-tiny",
        contract.KEY_MODEL_VERSION: served.model_version,
        contract.KEY_RULES: rules.to_json(),
        contract.KEY_RULES_DIGEST: rules.digest(),
        contract.KEY_CATALOG_DIGEST: DEFAULT_CATALOG.digest(),
    }
    assert served.model_version.startswith("1+") and len(served.model_version) == 10


def test_assemble_sets_thread_and_instance_options_when_given(tiny_onnx: Path, tmp_path: Path) -> None:
    options = configs.ServingOptions(
        max_batch_size=8,
        max_queue_delay_us=500,
        preprocess_instances=2,
        classifier_instances=3,
        decode_threads=3,
        ort_threads=4,
        layout="split",
    )
    repository = assemble(tiny_onnx, tmp_path / "repo", options)
    loaded = _load(repository)
    pre, cls = loaded[contract.PREPROCESS_MODEL], loaded[contract.CLASSIFIER_MODEL]
    assert pre.parameters[contract.KEY_DECODE_THREADS].string_value == "3"
    assert cls.parameters[contract.KEY_ORT_THREADS].string_value == "4"
    assert (pre.instance_group[0].count, cls.instance_group[0].count) == (2, 3)
    assert pre.dynamic_batching.max_queue_delay_microseconds == 500
    assert {c.max_batch_size for c in loaded.values()} == {8}


def test_assemble_raises_model_metadata_error_when_metadata_missing(tmp_path: Path) -> None:
    from serving_fixtures import build_tiny_onnx

    bare = build_tiny_onnx(tmp_path / "bare.onnx", metadata=False)
    with pytest.raises(ModelMetadataError, match=contract.KEY_CATALOG):
        assemble(bare, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_assemble_replaces_repository_when_out_dir_holds_previous_one(tiny_onnx: Path, tmp_path: Path) -> None:
    out = assemble(tiny_onnx, tmp_path / "repo")
    (out / "stale_model").mkdir()
    assemble(tiny_onnx, out)
    assert not (out / "stale_model").exists()


def test_assemble_raises_file_exists_error_when_out_dir_is_foreign(tiny_onnx: Path, tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a model repository"):
        assemble(tiny_onnx, tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_main_returns_zero_when_assembling_and_two_when_metadata_missing(tiny_onnx: Path, tmp_path: Path) -> None:
    from serving_fixtures import build_tiny_onnx

    assert (
        main(["--onnx", str(tiny_onnx), "--out", str(tmp_path / "repo"), "--ort-threads", "1", "--layout", "split"])
        == 0
    )
    config = read_config(tmp_path / "repo" / contract.CLASSIFIER_MODEL / contract.CONFIG_FILENAME)
    assert config.parameters[contract.KEY_ORT_THREADS].string_value == "1"
    bare = build_tiny_onnx(tmp_path / "bare.onnx", metadata=False)
    assert main(["--onnx", str(bare), "--out", str(tmp_path / "other")]) == 2


@pytest.mark.parametrize(
    "option",
    [
        "max_batch_size",
        "preprocess_instances",
        "classifier_instances",
        "decode_threads",
        "ort_threads",
        "fused_instances",
    ],
)
def test_serving_options_raise_value_error_when_count_not_positive(option: str) -> None:
    count: dict[str, Any] = {option: 0}
    with pytest.raises(ValueError, match=option):
        configs.ServingOptions(**count)


@pytest.mark.parametrize(("option", "value"), [("layout", "merged"), ("precision", "fp16")])
def test_serving_options_raise_config_error_when_choice_unknown(option: str, value: str) -> None:
    choice: dict[str, Any] = {option: value}
    with pytest.raises(ValueError, match=option):
        configs.ServingOptions(**choice)


def test_assemble_raises_model_metadata_error_when_int8_model_missing(tiny_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelMetadataError, match="predilect quantize"):
        assemble(tiny_onnx, tmp_path / "repo", configs.ServingOptions(precision="int8"))


@pytest.mark.parametrize("layout", ["fused", "split"])
def test_first_step_has_bounded_reject_queue_when_assembled_with_defaults(
    layout: str, tiny_onnx: Path, tmp_path: Path
) -> None:
    loaded = _load(assemble(tiny_onnx, tmp_path / "repo", configs.ServingOptions(layout=layout)))
    first = loaded[contract.ENSEMBLE].ensemble_scheduling.step[0].model_name
    policy = loaded[first].dynamic_batching.default_queue_policy
    defaults = configs.ServingOptions()
    assert policy.max_queue_size == defaults.max_queue_size > 0
    assert policy.default_timeout_microseconds == defaults.queue_timeout_us > 0
    assert policy.timeout_action == mc.ModelQueuePolicy.REJECT and policy.allow_timeout_override
    for name, config in loaded.items():
        if name not in (first, contract.ENSEMBLE):  # later steps never see more than the first lets through
            assert not config.dynamic_batching.HasField("default_queue_policy"), name


def test_serving_options_leave_queue_unbounded_when_both_bounds_are_zero() -> None:
    assert configs.ServingOptions(max_queue_size=0, queue_timeout_us=0).first_step_queue() is None
    with pytest.raises(ConfigError):
        configs.ServingOptions(max_queue_size=-1)
