"""Typed Triton model configs: render to config.pbtxt and parse back to the same definition."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from predilect.serving.triton_config import (
    BackendModelDef,
    EnsembleDef,
    EnsembleStepDef,
    ModelDef,
    PythonModelDef,
    QueuePolicyDef,
    TensorDef,
    UnsupportedConfigError,
    WarmupDef,
    WarmupInputDef,
    from_model_config,
    parse_pbtxt,
    to_model_config,
    to_pbtxt,
)

IMAGE_IN = TensorDef("IN", "TYPE_UINT8", (-1,), allow_ragged_batch=True)
SCORES = TensorDef("OUT", "TYPE_FP32", (3, 4))

DEFINITIONS: dict[str, ModelDef] = {
    "python": PythonModelDef(
        name="py",
        inputs=(IMAGE_IN,),
        outputs=(SCORES,),
        max_batch_size=8,
        max_queue_delay_us=100,
        instance_count=2,
        parameters={"threads": "3"},
        preferred_batch_sizes=(2, 8),
        queue_policy=QueuePolicyDef(max_queue_size=4, default_timeout_us=10, allow_timeout_override=True),
        warmup=(WarmupDef("w", batch_size=2, inputs={"IN": WarmupInputDef("TYPE_UINT8", (16,), source="random")}),),
    ),
    "backend-unbatched": BackendModelDef(
        name="onnx",
        platform="onnxruntime_onnx",
        inputs=(TensorDef("X", "TYPE_FP16", (3, 8, 8)),),
        outputs=(TensorDef("Y", "TYPE_BOOL", (1,)),),
        max_batch_size=0,
        dynamic_batching=False,
        instance_kind="KIND_GPU",
        gpus=(0, 1),
        default_model_filename="net.onnx",
        warmup=(WarmupDef("zeros", batch_size=1, inputs={"X": WarmupInputDef("TYPE_FP16", (3, 8, 8))}, count=3),),
    ),
    "backend-batched": BackendModelDef(
        name="dali",
        backend="dali",
        inputs=(IMAGE_IN,),
        outputs=(SCORES,),
        max_batch_size=4,
        max_queue_delay_us=0,
        instance_kind="KIND_GPU",
        queue_policy=QueuePolicyDef(timeout_action="DELAY"),
        warmup=(
            WarmupDef("file", batch_size=1, inputs={"IN": WarmupInputDef("TYPE_UINT8", (7,), "file", "sample.jpg")}),
        ),
    ),
    "ensemble": EnsembleDef(
        name="pipe",
        inputs=(TensorDef("IN", "TYPE_UINT8", (-1,)),),
        outputs=(SCORES,),
        steps=(EnsembleStepDef("dali", {"IN": "IN"}, {"OUT": "OUT"}),),
        max_batch_size=4,
        parameters={"about": "{}"},
    ),
}


@pytest.mark.parametrize("kind", sorted(DEFINITIONS))
def test_definition_round_trips_through_pbtxt_when_parsed_back(kind: str) -> None:
    definition = DEFINITIONS[kind]
    text = to_pbtxt(to_model_config(definition))
    parsed = parse_pbtxt(text)
    assert parsed == to_model_config(definition)
    assert from_model_config(parsed) == definition
    assert to_pbtxt(parsed) == text


@pytest.mark.parametrize(
    "extra",
    [
        "version_policy { latest { num_versions: 2 } }",
        "instance_group { kind: KIND_CPU count: 1 }",
        "sequence_batching { }",
        'output { name: "LABELS" data_type: TYPE_STRING dims: 1 label_filename: "labels.txt" }',
    ],
    ids=["version-policy", "second-instance-group", "sequence-batching", "label-file"],
)
def test_from_model_config_raises_unsupported_config_error_when_config_sets_unmodelled_field(extra: str) -> None:
    config = to_model_config(DEFINITIONS["python"])
    text_format.Merge(extra, config)
    with pytest.raises(UnsupportedConfigError, match="'py'"):
        from_model_config(config)


def test_from_model_config_raises_unsupported_config_error_when_step_pins_a_version() -> None:
    config = to_model_config(DEFINITIONS["ensemble"])
    config.ensemble_scheduling.step[0].model_version = 2
    with pytest.raises(UnsupportedConfigError, match="'pipe'"):
        from_model_config(config)


def test_parse_pbtxt_raises_parse_error_when_text_is_not_a_model_config() -> None:
    with pytest.raises(text_format.ParseError):
        parse_pbtxt('name: "x"\nnot_a_field: 3\n')


def test_backend_model_def_raises_value_error_when_batcher_set_without_dynamic_batching() -> None:
    with pytest.raises(ValueError, match="without dynamic batching"):
        BackendModelDef(
            name="m", platform="tensorrt_plan", inputs=(), outputs=(), max_batch_size=1, dynamic_batching=False,
            preferred_batch_sizes=(1,),
        )  # fmt: skip


def test_to_model_config_raises_value_error_when_output_is_ragged() -> None:
    with pytest.raises(ValueError, match="ragged batching is for inputs"):
        to_model_config(
            PythonModelDef(name="m", inputs=(), outputs=(IMAGE_IN,), max_batch_size=1, max_queue_delay_us=0)
        )
