"""Typed Triton model configurations: definitions, rendered to ``config.pbtxt`` and parsed back.

Generic: nothing here knows the screening pipeline (``predilect.serving.topology`` lays it out).
A small frozen dataclass per model kind -> ``model_config_pb2.ModelConfig`` -> protobuf text, and
back: ``from_model_config`` returns the definition that renders to the given proto, or raises
``UnsupportedConfigError`` when the proto holds something the definitions do not model, so a
definition survives ``to_pbtxt`` / ``parse_pbtxt`` unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc


class UnsupportedConfigError(ValueError):
    """A ``ModelConfig`` holds settings that the typed definitions here do not model."""


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

    def same_shape(self, other: TensorDef) -> bool:
        """Whether ``other`` has this tensor's data type and dims (names and raggedness aside)."""
        return (self.data_type, self.dims) == (other.data_type, other.dims)


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

    Dynamic batching is on unless ``dynamic_batching`` is False (then no batcher knob may be set);
    ``instance_kind`` places the instances (``KIND_GPU`` with ``gpus`` empty: every visible GPU).
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
        batcher = self.max_queue_delay_us or self.preferred_batch_sizes or self.queue_policy is not None
        if not self.dynamic_batching and batcher:
            raise ValueError(f"model {self.name!r}: batcher settings without dynamic batching")


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


ComposingModelDef = Union[PythonModelDef, BackendModelDef]
ModelDef = Union[PythonModelDef, BackendModelDef, EnsembleDef]


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


def _instances_proto(config: mc.ModelConfig, *, kind: str, count: int, gpus: tuple[int, ...] = ()) -> None:
    group = config.instance_group.add(kind=mc.ModelInstanceGroup.Kind.Value(kind), count=count)
    group.gpus.extend(gpus)


def _batcher_proto(config: mc.ModelConfig, definition: ComposingModelDef) -> None:
    config.dynamic_batching.max_queue_delay_microseconds = definition.max_queue_delay_us
    config.dynamic_batching.preferred_batch_size.extend(definition.preferred_batch_sizes)
    if definition.queue_policy is not None:
        _queue_policy_proto(definition.queue_policy, config.dynamic_batching.default_queue_policy)


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
            _batcher_proto(config, definition)
        _instances_proto(config, kind=definition.instance_kind, count=definition.instance_count, gpus=definition.gpus)
    else:
        config.backend = "python"
        _batcher_proto(config, definition)
        _instances_proto(config, kind="KIND_CPU", count=definition.instance_count)
    for warmup in definition.warmup:
        _warmup_proto(warmup, config)
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


def _tensor_def(proto: mc.ModelInput | mc.ModelOutput) -> TensorDef:
    ragged = bool(getattr(proto, "allow_ragged_batch", False))
    return TensorDef(proto.name, mc.DataType.Name(proto.data_type), tuple(proto.dims), allow_ragged_batch=ragged)


def _warmup_def(proto: mc.ModelWarmup) -> WarmupDef:
    inputs = {}
    for tensor, data in proto.inputs.items():
        source = {"zero_data": "zero", "random_data": "random", "input_data_file": "file"}.get(
            data.WhichOneof("input_data_type") or "", ""
        )
        inputs[tensor] = WarmupInputDef(
            mc.DataType.Name(data.data_type), tuple(data.dims), source=source, input_data_file=data.input_data_file
        )
    return WarmupDef(proto.name, batch_size=proto.batch_size, inputs=inputs, count=proto.count)


def _queue_policy_def(batcher: mc.ModelDynamicBatching) -> QueuePolicyDef | None:
    if not batcher.HasField("default_queue_policy"):
        return None
    queue = batcher.default_queue_policy
    return QueuePolicyDef(
        max_queue_size=queue.max_queue_size,
        default_timeout_us=queue.default_timeout_microseconds,
        timeout_action=mc.ModelQueuePolicy.TimeoutAction.Name(queue.timeout_action),
        allow_timeout_override=queue.allow_timeout_override,
    )


def _parse_back(config: mc.ModelConfig) -> ModelDef:
    inputs = tuple(_tensor_def(t) for t in config.input)
    outputs = tuple(_tensor_def(t) for t in config.output)
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    if config.platform == "ensemble":
        steps = tuple(
            EnsembleStepDef(step.model_name, dict(step.input_map), dict(step.output_map))
            for step in config.ensemble_scheduling.step
        )
        return EnsembleDef(config.name, inputs, outputs, steps, config.max_batch_size, parameters)
    if len(config.instance_group) != 1:
        raise ValueError(f"one instance group expected, got {len(config.instance_group)}")
    group, batcher = config.instance_group[0], config.dynamic_batching
    warmup = tuple(_warmup_def(w) for w in config.model_warmup)
    if config.backend == "python" and not config.platform and group.kind == mc.ModelInstanceGroup.KIND_CPU:
        return PythonModelDef(
            name=config.name,
            inputs=inputs,
            outputs=outputs,
            max_batch_size=config.max_batch_size,
            max_queue_delay_us=batcher.max_queue_delay_microseconds,
            instance_count=group.count,
            parameters=parameters,
            preferred_batch_sizes=tuple(batcher.preferred_batch_size),
            queue_policy=_queue_policy_def(batcher),
            warmup=warmup,
        )
    return BackendModelDef(
        name=config.name,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=config.max_batch_size,
        backend=config.backend,
        platform=config.platform,
        max_queue_delay_us=batcher.max_queue_delay_microseconds,
        preferred_batch_sizes=tuple(batcher.preferred_batch_size),
        dynamic_batching=config.HasField("dynamic_batching"),
        instance_kind=mc.ModelInstanceGroup.Kind.Name(group.kind),
        instance_count=group.count,
        gpus=tuple(group.gpus),
        queue_policy=_queue_policy_def(batcher),
        warmup=warmup,
        parameters=parameters,
        default_model_filename=config.default_model_filename,
    )


def from_model_config(config: mc.ModelConfig) -> ModelDef:
    """The typed definition that renders to ``config`` (``to_model_config(result) == config``).

    Raises ``UnsupportedConfigError`` when ``config`` sets anything the definitions do not model
    (another instance group, a scheduling option, a version policy, ...), or sets it invalidly.
    """
    try:
        definition = _parse_back(config)
    except ValueError as e:
        raise UnsupportedConfigError(f"model {config.name!r}: {e}") from e
    if to_model_config(definition) != config:
        raise UnsupportedConfigError(f"model {config.name!r} sets fields the typed definitions do not model")
    return definition
