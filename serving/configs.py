"""Typed definitions of the served models, rendered to Triton ``config.pbtxt``.

Every config in the model repository is generated here: a small dataclass per model ->
``model_config_pb2.ModelConfig`` -> protobuf text. Nothing writes pbtxt by hand, so the
ensemble's wiring and the composing models' tensors cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from predilect import contract
from predilect.catalog import Catalog
from predilect.errors import ConfigError
from predilect.preprocess import PreprocessCfg


@dataclass(frozen=True)
class TensorDef:
    """One input or output; ``dims`` exclude the batch dimension (-1: variable)."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    allow_ragged_batch: bool = False

    def __post_init__(self) -> None:
        if self.data_type not in mc.DataType.keys():  # noqa: SIM118 - a protobuf enum wrapper, not a dict
            raise ValueError(f"unknown Triton data type {self.data_type!r} for tensor {self.name!r}")
        if not self.dims or any(d == 0 or d < -1 for d in self.dims):
            raise ValueError(f"tensor {self.name!r} needs dims > 0 or -1, got {self.dims}")


_TIMEOUT_ACTIONS = ("REJECT", "DELAY")
_INSTANCE_KINDS = ("KIND_CPU", "KIND_GPU")
_WARMUP_SOURCES = ("zero", "random", "file")


@dataclass(frozen=True)
class QueuePolicyDef:
    """A dynamic batcher's queue policy: bound the queue and the wait, so overload fails fast.

    ``max_queue_size`` 0 and ``default_timeout_us`` 0 mean unbounded, as in Triton.
    """

    max_queue_size: int = 0
    default_timeout_us: int = 0
    timeout_action: str = "REJECT"
    allow_timeout_override: bool = False

    def __post_init__(self) -> None:
        if self.max_queue_size < 0 or self.default_timeout_us < 0:
            raise ValueError(
                f"queue size and timeout must be >= 0, got {self.max_queue_size}, {self.default_timeout_us}"
            )
        if self.timeout_action not in _TIMEOUT_ACTIONS:
            raise ValueError(f"timeout_action must be one of {_TIMEOUT_ACTIONS}, got {self.timeout_action!r}")


@dataclass(frozen=True)
class WarmupInputDef:
    """One input of a warm-up sample: zeros, random data, or a file in the model's ``warmup/`` folder."""

    data_type: str
    dims: tuple[int, ...]
    source: str = "zero"
    input_data_file: str = ""

    def __post_init__(self) -> None:
        if self.source not in _WARMUP_SOURCES:
            raise ValueError(f"warm-up source must be one of {_WARMUP_SOURCES}, got {self.source!r}")
        if (self.source == "file") != bool(self.input_data_file):
            raise ValueError("a warm-up input names input_data_file exactly when its source is 'file'")
        if not self.dims or any(d < 1 for d in self.dims):
            raise ValueError(f"warm-up dims must be concrete (>= 1), got {self.dims}")


@dataclass(frozen=True)
class WarmupDef:
    """A ``model_warmup`` sample: run at load, before the model reports ready."""

    name: str
    batch_size: int
    inputs: Mapping[str, WarmupInputDef]
    count: int = 1


@dataclass(frozen=True)
class PythonModelDef:
    """A Python-backend model with dynamic batching on CPU instances."""

    name: str
    inputs: tuple[TensorDef, ...]
    outputs: tuple[TensorDef, ...]
    max_batch_size: int
    max_queue_delay_us: int
    instance_count: int = 1
    parameters: Mapping[str, str] = field(default_factory=dict)
    preferred_batch_sizes: tuple[int, ...] = ()
    queue_policy: QueuePolicyDef | None = None
    warmup: tuple[WarmupDef, ...] = ()


@dataclass(frozen=True)
class BackendModelDef:
    """Any other backend or platform (``backend="dali"``, ``platform="tensorrt_plan"``, ...).

    Dynamic batching is on unless ``dynamic_batching`` is False; ``instance_kind`` places the
    instances (``KIND_GPU`` with ``gpus`` empty: every visible GPU).
    """

    name: str
    inputs: tuple[TensorDef, ...]
    outputs: tuple[TensorDef, ...]
    max_batch_size: int
    backend: str = ""
    platform: str = ""
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    dynamic_batching: bool = True
    instance_kind: str = "KIND_CPU"
    instance_count: int = 1
    gpus: tuple[int, ...] = ()
    queue_policy: QueuePolicyDef | None = None
    warmup: tuple[WarmupDef, ...] = ()
    parameters: Mapping[str, str] = field(default_factory=dict)
    default_model_filename: str = ""

    def __post_init__(self) -> None:
        if bool(self.backend) == bool(self.platform):
            raise ValueError(f"model {self.name!r} names exactly one of backend and platform")
        if self.instance_kind not in _INSTANCE_KINDS:
            raise ValueError(f"instance_kind must be one of {_INSTANCE_KINDS}, got {self.instance_kind!r}")
        if self.gpus and self.instance_kind != "KIND_GPU":
            raise ValueError(f"model {self.name!r}: gpus are for KIND_GPU instances")


@dataclass(frozen=True)
class EnsembleStepDef:
    """One ensemble step; maps are ``{model tensor name: ensemble tensor name}``."""

    model_name: str
    input_map: Mapping[str, str]
    output_map: Mapping[str, str]


@dataclass(frozen=True)
class EnsembleDef:
    """An ensemble: a pipeline of steps, with its parameters served to clients."""

    name: str
    inputs: tuple[TensorDef, ...]
    outputs: tuple[TensorDef, ...]
    steps: tuple[EnsembleStepDef, ...]
    max_batch_size: int
    parameters: Mapping[str, str] = field(default_factory=dict)


ModelDef = Union[PythonModelDef, BackendModelDef, EnsembleDef]


@dataclass(frozen=True)
class ServingOptions:
    """Knobs of the served pipeline; everything else follows from the exported model.

    The defaults are the CPU profile's, tuned on 2 cores by ``benchmarks/sweep.py``
    (``benchmarks/results/sweep-2core*.json``); ``predilect assemble`` takes one option per field.
    """

    max_batch_size: int = field(default=16, metadata={"help": "largest dynamic batch of every model"})
    max_queue_delay_us: int = field(default=2_000, metadata={"help": "dynamic batcher wait for more requests, in us"})
    preprocess_instances: int = field(default=1, metadata={"help": "preprocess model instances"})
    classifier_instances: int = field(default=1, metadata={"help": "classifier model instances"})
    decode_threads: int = field(default=2, metadata={"help": "decode threads per preprocess instance"})
    # 2 cores: the decode pool already takes both, so ONNX Runtime gets one.
    ort_threads: int = field(default=1, metadata={"help": "ONNX Runtime intra-op threads per classifier instance"})
    preferred_batch_sizes: tuple[int, ...] = field(default=(), metadata={"help": "dynamic batcher preferred sizes"})

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "preprocess_instances", "classifier_instances", "decode_threads", "ort_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue_delay_us < 0:
            raise ConfigError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        if any(not 1 <= b <= self.max_batch_size for b in self.preferred_batch_sizes):
            raise ConfigError(f"preferred_batch_sizes must lie in 1..max_batch_size, got {self.preferred_batch_sizes}")


@dataclass(frozen=True)
class ServedModel:
    """What the ensemble advertises: the exported model's identity and its constants."""

    catalog: Catalog
    preprocess: PreprocessCfg
    model_name: str
    model_version: str

    def parameters(self) -> dict[str, str]:
        return {
            contract.KEY_CATALOG: self.catalog.to_json(),
            contract.KEY_PREPROCESS: self.preprocess.to_json(),
            contract.KEY_MODEL_NAME: self.model_name,
            contract.KEY_MODEL_VERSION: self.model_version,
        }


def fundus_screen_models(served: ServedModel, options: ServingOptions = ServingOptions()) -> list[ModelDef]:
    """The four model definitions of the screening pipeline, composing models first."""
    size, classes = served.preprocess.size, len(served.catalog)
    image = TensorDef(contract.IMAGE, "TYPE_UINT8", (-1,))
    pixels = TensorDef(contract.PIXELS, "TYPE_FP32", (3, size, size))
    logits = TensorDef(contract.LOGITS, "TYPE_FP32", (classes,))
    probabilities = TensorDef(contract.PROBABILITIES, "TYPE_FP32", (classes,))
    batching = {
        "max_batch_size": options.max_batch_size,
        "max_queue_delay_us": options.max_queue_delay_us,
        "preferred_batch_sizes": options.preferred_batch_sizes,
    }
    preprocess = PythonModelDef(
        name=contract.PREPROCESS_MODEL,
        # Encoded images differ in length: ragged batching lets the batcher group them anyway.
        inputs=(TensorDef(contract.IMAGE, "TYPE_UINT8", (-1,), allow_ragged_batch=True),),
        outputs=(pixels,),
        instance_count=options.preprocess_instances,
        parameters={
            contract.KEY_PREPROCESS: served.preprocess.to_json(),
            contract.KEY_DECODE_THREADS: str(options.decode_threads),
        },
        **batching,
    )
    classifier = PythonModelDef(
        name=contract.CLASSIFIER_MODEL,
        inputs=(pixels,),
        outputs=(logits,),
        instance_count=options.classifier_instances,
        parameters={contract.KEY_ORT_THREADS: str(options.ort_threads)},
        **batching,
    )
    postprocess = PythonModelDef(
        name=contract.POSTPROCESS_MODEL, inputs=(logits,), outputs=(probabilities,), **batching
    )
    ensemble = EnsembleDef(
        name=contract.ENSEMBLE,
        inputs=(image,),
        outputs=(probabilities,),
        steps=(
            EnsembleStepDef(contract.PREPROCESS_MODEL, {contract.IMAGE: contract.IMAGE}, {contract.PIXELS: "pixels"}),
            EnsembleStepDef(contract.CLASSIFIER_MODEL, {contract.PIXELS: "pixels"}, {contract.LOGITS: "logits"}),
            EnsembleStepDef(
                contract.POSTPROCESS_MODEL,
                {contract.LOGITS: "logits"},
                {contract.PROBABILITIES: contract.PROBABILITIES},
            ),
        ),
        max_batch_size=options.max_batch_size,
        parameters=served.parameters(),
    )
    return [preprocess, classifier, postprocess, ensemble]


def _tensor_proto(tensor: TensorDef, proto: mc.ModelInput | mc.ModelOutput) -> None:
    proto.name = tensor.name
    proto.data_type = mc.DataType.Value(tensor.data_type)
    proto.dims.extend(tensor.dims)
    if tensor.allow_ragged_batch:
        proto.allow_ragged_batch = True


def _common_proto(definition: ModelDef) -> mc.ModelConfig:
    config = mc.ModelConfig(name=definition.name, max_batch_size=definition.max_batch_size)
    for tensor in definition.inputs:
        _tensor_proto(tensor, config.input.add())
    for tensor in definition.outputs:
        if tensor.allow_ragged_batch:
            raise ValueError(f"output {tensor.name!r} of {definition.name!r}: ragged batching is for inputs")
        _tensor_proto(tensor, config.output.add())
    for key, value in definition.parameters.items():
        config.parameters[key].string_value = value
    return config


def _queue_policy_proto(policy: QueuePolicyDef, proto: mc.ModelQueuePolicy) -> None:
    proto.timeout_action = mc.ModelQueuePolicy.TimeoutAction.Value(policy.timeout_action)
    proto.default_timeout_microseconds = policy.default_timeout_us
    proto.allow_timeout_override = policy.allow_timeout_override
    proto.max_queue_size = policy.max_queue_size


def _warmup_proto(warmup: WarmupDef, config: mc.ModelConfig) -> None:
    proto = config.model_warmup.add(name=warmup.name, batch_size=warmup.batch_size, count=warmup.count)
    for tensor, spec in warmup.inputs.items():
        data = proto.inputs[tensor]
        data.data_type = mc.DataType.Value(spec.data_type)
        data.dims.extend(spec.dims)
        if spec.source == "zero":
            data.zero_data = True
        elif spec.source == "random":
            data.random_data = True
        else:
            data.input_data_file = spec.input_data_file


def _batching_proto(
    config: mc.ModelConfig, definition: PythonModelDef | BackendModelDef, *, kind: str, gpus: tuple[int, ...] = ()
) -> None:
    config.dynamic_batching.max_queue_delay_microseconds = definition.max_queue_delay_us
    config.dynamic_batching.preferred_batch_size.extend(definition.preferred_batch_sizes)
    if definition.queue_policy is not None:
        _queue_policy_proto(definition.queue_policy, config.dynamic_batching.default_queue_policy)
    group = config.instance_group.add(kind=mc.ModelInstanceGroup.Kind.Value(kind), count=definition.instance_count)
    group.gpus.extend(gpus)
    for warmup in definition.warmup:
        _warmup_proto(warmup, config)


def to_model_config(definition: ModelDef) -> mc.ModelConfig:
    """Render one typed definition as Triton's ``ModelConfig`` proto."""
    config = _common_proto(definition)
    if isinstance(definition, EnsembleDef):
        config.platform = "ensemble"
        for step in definition.steps:
            proto = config.ensemble_scheduling.step.add(model_name=step.model_name, model_version=-1)
            proto.input_map.update(step.input_map)
            proto.output_map.update(step.output_map)
        return config
    if isinstance(definition, BackendModelDef):
        config.backend, config.platform = definition.backend, definition.platform
        config.default_model_filename = definition.default_model_filename
        if definition.dynamic_batching:
            _batching_proto(config, definition, kind=definition.instance_kind, gpus=definition.gpus)
        else:
            group = config.instance_group.add(
                kind=mc.ModelInstanceGroup.Kind.Value(definition.instance_kind), count=definition.instance_count
            )
            group.gpus.extend(definition.gpus)
        return config
    config.backend = "python"
    _batching_proto(config, definition, kind="KIND_CPU")
    return config


def to_pbtxt(config: mc.ModelConfig) -> str:
    """Protobuf text of ``config``, as Triton reads it from ``config.pbtxt``."""
    return text_format.MessageToString(config)


def parse_pbtxt(text: str) -> mc.ModelConfig:
    """Parse ``config.pbtxt`` text into a ``ModelConfig``; raises ``text_format.ParseError``."""
    return text_format.Parse(text, mc.ModelConfig())


def read_config(path: Path) -> mc.ModelConfig:
    """Read and parse a ``config.pbtxt`` file."""
    return parse_pbtxt(Path(path).read_text(encoding="utf-8"))
