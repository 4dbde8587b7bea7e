"""The served layouts: ensembles derived from ordered steps, golden configs, typed round trip.

The golden files (``tests/test_topology/*.pbtxt``) were rendered by the hand-wired ensembles
that the derived ones replaced, so they pin today's configs byte for byte, with the served
model's JSON parameters (catalog, rules, preprocessing and their digests) blanked: those are
the exported model's, tested in tests/test_configs.py. After an intended change to a layout,
``pytest tests/test_topology.py --force-regen`` rewrites them; review the diff.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from predilect import contract
from predilect.catalog import DEFAULT_CATALOG
from predilect.preprocess import PreprocessCfg
from predilect.serving.configs import ServedModel, ServingOptions
from predilect.serving.gpu_profile import GpuServingOptions
from predilect.serving.topology import Step, Topology, TopologyError, cpu_layout, gpu_layout
from predilect.serving.triton_config import (
    PythonModelDef,
    TensorDef,
    from_model_config,
    parse_pbtxt,
    to_model_config,
    to_pbtxt,
)

SERVED_KEYS = (
    contract.KEY_CATALOG,
    contract.KEY_CATALOG_DIGEST,
    contract.KEY_PREPROCESS,
    contract.KEY_RULES,
    contract.KEY_RULES_DIGEST,
)


def _served(grid: int | None, size: int = 224) -> ServedModel:
    return ServedModel(DEFAULT_CATALOG, PreprocessCfg(size=size), "uopsl-tiny", "1+deadbeef", attention_grid=grid)


# Each profile with the model's attention and without, at default and at other options; the
# 128-px GPU case adds the QUALITY_SQUARE tensor.
CASES: dict[str, Callable[[], Topology]] = {
    "fused": lambda: cpu_layout(_served(14)),
    "fused-noattn": lambda: cpu_layout(
        _served(None),
        ServingOptions(fused_instances=3, preferred_batch_sizes=(4, 8), max_queue_size=0, queue_timeout_us=0),
    ),
    "split": lambda: cpu_layout(
        _served(14),
        ServingOptions(
            layout="split",
            preprocess_instances=2,
            classifier_instances=3,
            preferred_batch_sizes=(4, 8),
            decode_threads=3,
            ort_threads=2,
        ),
    ),
    "split-noattn": lambda: cpu_layout(
        _served(None, 128), ServingOptions(layout="split", max_queue_size=0, queue_timeout_us=0)
    ),
    "gpu": lambda: gpu_layout(_served(14), GpuServingOptions(), warmup_image_bytes=12345),
    "gpu-quality-square": lambda: gpu_layout(
        _served(None, 128),
        GpuServingOptions(max_batch_size=8, preferred_batch_sizes=(2, 4), validate_instances=1, classifier_instances=2),
        warmup_image_bytes=999,
    ),
}
FUSED = (contract.FUSED_MODEL, contract.ENSEMBLE)
SPLIT = (contract.PREPROCESS_MODEL, contract.CLASSIFIER_MODEL, contract.POSTPROCESS_MODEL, contract.ENSEMBLE)
GPU = (contract.VALIDATE_MODEL, *SPLIT)
MODELS = {case: GPU if case.startswith("gpu") else SPLIT if case.startswith("split") else FUSED for case in CASES}
CASE_MODELS = [(case, name) for case, names in MODELS.items() for name in names]


def _definition(case: str, name: str) -> Any:
    (definition,) = (d for d in CASES[case]().models() if d.name == name)
    return definition


def _blank_served_parameters(text: str) -> str:
    config = parse_pbtxt(text)
    for key in SERVED_KEYS:
        if key in config.parameters:
            config.parameters[key].string_value = "<served>"
    return to_pbtxt(config)


@pytest.mark.parametrize("case", sorted(CASES))
def test_layout_lists_models_in_step_order_when_built(case: str) -> None:
    assert [d.name for d in CASES[case]().models()] == list(MODELS[case])


@pytest.mark.parametrize(("case", "name"), CASE_MODELS)
def test_layout_renders_golden_config_when_built(case: str, name: str, file_regression) -> None:
    text = to_pbtxt(to_model_config(_definition(case, name)))
    file_regression.check(_blank_served_parameters(text), basename=f"{case}.{name}", extension=".pbtxt")


@pytest.mark.parametrize(("case", "name"), CASE_MODELS)
def test_layout_model_round_trips_through_pbtxt_when_parsed_back(case: str, name: str) -> None:
    definition = _definition(case, name)
    text = to_pbtxt(to_model_config(definition))
    assert from_model_config(parse_pbtxt(text)) == definition
    assert to_pbtxt(parse_pbtxt(text)) == text


def _model(name: str, inputs: tuple[TensorDef, ...], outputs: tuple[TensorDef, ...], batch: int = 4) -> PythonModelDef:
    return PythonModelDef(name=name, inputs=inputs, outputs=outputs, max_batch_size=batch, max_queue_delay_us=0)


def _tensor(name: str, *dims: int, data_type: str = "TYPE_FP32") -> TensorDef:
    return TensorDef(name, data_type, dims or (2,))


def _layout(*steps: Step, inputs: tuple[str, ...] = ("X",), outputs: tuple[str, ...] = ("Z",)) -> Topology:
    return Topology(
        name="pipeline",
        inputs=tuple(_tensor(n) for n in inputs),
        outputs=tuple(_tensor(n) for n in outputs),
        steps=steps,
        max_batch_size=4,
    )


def _maps(layout: Topology) -> list[tuple[str, dict[str, str], dict[str, str]]]:
    return [(s.model_name, dict(s.input_map), dict(s.output_map)) for s in layout.ensemble().steps]


def test_ensemble_wires_inputs_by_name_and_names_inner_tensors_in_lower_case_when_derived() -> None:
    first = _model("first", (_tensor("X"),), (_tensor("Y"),))
    second = _model("second", (_tensor("Y"), _tensor("X")), (_tensor("Z"),))
    assert _maps(_layout(Step(first), Step(second))) == [
        ("first", {"X": "X"}, {"Y": "y"}),
        ("second", {"Y": "y", "X": "X"}, {"Z": "Z"}),
    ]


def test_ensemble_feeds_input_from_tensor_of_another_name_when_step_declares_inputs_from() -> None:
    check = _model("check", (_tensor("X"),), (_tensor("CHECKED"),))
    use = _model("use", (_tensor("X"),), (_tensor("Z"),))
    assert _maps(_layout(Step(check), Step(use, inputs_from={"X": "CHECKED"})))[1] == (
        "use",
        {"X": "checked"},
        {"Z": "Z"},
    )
    assert _maps(_layout(Step(check), Step(use)))[1] == ("use", {"X": "X"}, {"Z": "Z"})


def test_ensemble_reads_latest_producer_when_two_steps_make_same_name() -> None:
    make = _model("make", (_tensor("X"),), (_tensor("Y"),))
    refine = _model("refine", (_tensor("Y"),), (_tensor("Y"),))
    finish = _model("finish", (_tensor("Y"),), (_tensor("Z"),))
    assert _maps(_layout(Step(make), Step(refine), Step(finish))) == [
        ("make", {"X": "X"}, {"Y": "y"}),
        ("refine", {"Y": "y"}, {"Y": "refine_y"}),
        ("finish", {"Y": "refine_y"}, {"Z": "Z"}),
    ]


def test_ensemble_maps_no_output_when_no_later_step_or_ensemble_output_reads_it() -> None:
    step = _model("step", (_tensor("X"),), (_tensor("Z"), _tensor("SPARE")))
    assert _maps(_layout(Step(step))) == [("step", {"X": "X"}, {"Z": "Z"})]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ((Step(_model("s", (_tensor("Y"),), (_tensor("Z"),))),), "reads Y, which neither"),
        ((Step(_model("s", (_tensor("X", 3),), (_tensor("Z"),))),), r"TYPE_FP32\[3\], its source X is TYPE_FP32\[2\]"),
        ((Step(_model("s", (_tensor("X"),), (_tensor("Z"),)), inputs_from={"W": "X"}),), "names no input"),
        ((Step(_model("s", (_tensor("X"),), (_tensor("Y"),))),), "output Z is produced by no step"),
        ((Step(_model("s", (_tensor("X"),), (_tensor("Z", 5),))),), "step s makes TYPE_FP32"),
        ((Step(_model("s", (_tensor("X"),), (_tensor("Z"),), batch=2)),), "max_batch_size 2 < the ensemble's 4"),
    ],
    ids=["unproduced", "dims", "unknown-alias", "no-producer", "output-dims", "batch"],
)
def test_ensemble_raises_topology_error_when_steps_cannot_be_wired(steps: tuple[Step, ...], message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        _layout(*steps).ensemble()
