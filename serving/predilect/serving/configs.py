"""Typed definitions of the served models, rendered to Triton ``config.pbtxt``.

Every config in the model repository is generated here: a small dataclass per model ->
``model_config_pb2.ModelConfig`` -> protobuf text. Nothing writes pbtxt by hand, so the
ensemble's wiring and the composing models' tensors cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from predilect import contract
from predilect.catalog import Catalog
from predilect.errors import ConfigError
from predilect.preprocess import PreprocessCfg
from predilect.quality import QualityCfg, QualitySizeError, check_size, default_quality_cfg
from predilect.referral import ReferralRules


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


LAYOUTS = ("fused", "split")
PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class ServingOptions:
    """Knobs of the served pipeline; everything else follows from the exported model.

    The defaults are the CPU profile's, tuned on 2 cores by ``predilect bench sweep``: at 16
    users the fused layout with two instances, two decode threads and one ONNX Runtime thread
    answered the most requests per second of the layouts tried (split; one fused instance with
    two ONNX Runtime threads; two with one decode thread); ``predilect assemble`` takes one
    option per field.
    """

    max_batch_size: int = field(default=16, metadata={"help": "largest dynamic batch of every model"})
    max_queue_delay_us: int = field(default=2_000, metadata={"help": "dynamic batcher wait for more requests, in us"})
    preprocess_instances: int = field(default=1, metadata={"help": "preprocess model instances"})
    classifier_instances: int = field(default=1, metadata={"help": "classifier model instances"})
    decode_threads: int = field(default=2, metadata={"help": "decode threads per preprocess instance"})
    # 2 cores: the decode pool already takes both, so ONNX Runtime gets one.
    ort_threads: int = field(default=1, metadata={"help": "ONNX Runtime intra-op threads per classifier instance"})
    preferred_batch_sizes: tuple[int, ...] = field(default=(), metadata={"help": "dynamic batcher preferred sizes"})
    # CPU profile (measured by `predilect bench` and `bench sweep`): "fused" runs preprocess, ONNX Runtime
    # and the sigmoid in one Python-backend model, so the float tensor never leaves the process;
    # "split" is the three-step ensemble. Either way clients see the same fundus_screen ensemble.
    layout: str = field(default="fused", metadata={"help": "CPU model layout: fused (one process) or split"})
    fused_instances: int = field(default=2, metadata={"help": "instances of the fused model (layout fused)"})
    precision: str = field(
        default="fp32",
        metadata={"help": "classifier precision: fp32, or int8 (the gated model `predilect quantize` wrote)"},
    )
    # Overload protection on the ensemble's first step (fused, or preprocess in the split layout):
    # past max_queue_size waiting requests, or after queue_timeout_us in the queue, a request is
    # refused at once (UNAVAILABLE) instead of waiting, so accepted requests keep their latency. A
    # client's own timeout overrides the queue timeout, so a request its client gave up on is
    # dropped before it is decoded. Measured: `predilect bench overload` (docs/RELIABILITY.md).
    max_queue_size: int = field(
        default=16, metadata={"help": "requests waiting at the first step before more are refused (0: unbounded)"}
    )
    queue_timeout_us: int = field(
        default=500_000, metadata={"help": "longest wait at the first step before refusal, in us (0: none)"}
    )

    def first_step_queue(self) -> QueuePolicyDef | None:
        """The queue policy of the ensemble's first step; None when both bounds are off."""
        if not self.max_queue_size and not self.queue_timeout_us:
            return None
        return QueuePolicyDef(
            max_queue_size=self.max_queue_size,
            default_timeout_us=self.queue_timeout_us,
            timeout_action="REJECT",
            allow_timeout_override=True,
        )

    def __post_init__(self) -> None:
        if self.max_queue_size < 0 or self.queue_timeout_us < 0:
            raise ConfigError(
                f"max_queue_size and queue_timeout_us must be >= 0, got {self.max_queue_size}, {self.queue_timeout_us}"
            )
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        names = ("max_batch_size", "preprocess_instances", "classifier_instances", "decode_threads", "ort_threads")
        for name in (*names, "fused_instances"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue_delay_us < 0:
            raise ConfigError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        if any(not 1 <= b <= self.max_batch_size for b in self.preferred_batch_sizes):
            raise ConfigError(f"preferred_batch_sizes must lie in 1..max_batch_size, got {self.preferred_batch_sizes}")


@dataclass(frozen=True)
class ServedModel:
    """What the ensemble advertises: the exported model's identity and its constants.

    ``quality`` holds the gradability thresholds (default: the packaged calibration), which must
    have been calibrated at ``preprocess.quality_size`` (else ``ConfigError``: nothing is assembled);
    ``attention_grid`` is the side g of the model's ``ATTENTION`` output ``[batch, C, g, g]``, or
    None when the exported model has none (then the repository serves no ``HEATMAPS``).
    """

    catalog: Catalog
    preprocess: PreprocessCfg
    model_name: str
    model_version: str
    quality: QualityCfg = field(default_factory=default_quality_cfg)
    attention_grid: int | None = None

    def __post_init__(self) -> None:
        try:
            check_size(self.quality, self.preprocess.quality_size)
        except QualitySizeError as e:
            raise ConfigError(f"model {self.model_name} {self.model_version}: {e}") from e

    @property
    def rules(self) -> ReferralRules:
        """The referral rules the repository applies: the catalog's operating points and referrals, and ``quality``."""
        return ReferralRules.from_catalog(self.catalog, self.quality.to_dict())

    def parameters(self) -> dict[str, str]:
        return {
            contract.KEY_CATALOG: self.catalog.to_json(),
            contract.KEY_PREPROCESS: self.preprocess.to_json(),
            contract.KEY_MODEL_NAME: self.model_name,
            contract.KEY_MODEL_VERSION: self.model_version,
            contract.KEY_RULES: self.rules.to_json(),
            contract.KEY_RULES_DIGEST: self.rules.digest(),
            contract.KEY_CATALOG_DIGEST: self.catalog.digest(),
        }


def screening_outputs(served: ServedModel, *, heatmaps: bool = True) -> tuple[TensorDef, ...]:
    """The ensemble's per-image outputs (every profile): probabilities, quality, findings, decision, field
    box, and ``HEATMAPS`` when the model exports its attention (clients ask for it; it is never sent
    unasked) unless ``heatmaps`` is False (the GPU profile: its TensorRT engine returns logits only)."""
    classes = len(served.catalog)
    outputs = (
        TensorDef(contract.PROBABILITIES, "TYPE_FP32", (classes,)),
        TensorDef(contract.QUALITY, "TYPE_FP32", (1 + len(contract.QUALITY_REASONS),)),
        TensorDef(contract.FINDINGS, "TYPE_BOOL", (classes,)),
        TensorDef(contract.REFERRAL, "TYPE_INT32", (1,)),
        TensorDef(contract.FIELD_BOX, "TYPE_FP32", (4,)),
    )
    if served.attention_grid is None or not heatmaps:
        return outputs
    return (*outputs, heatmaps_tensor(served))


def screening_parameters(served: ServedModel) -> dict[str, str]:
    """The parameters ``Screening.from_parameters`` reads (every profile's models that grade or decide):
    the referral rules, with the quality calibration inside them, and the preprocessing."""
    return {contract.KEY_RULES: served.rules.to_json(), contract.KEY_PREPROCESS: served.preprocess.to_json()}


def attention_tensor(served: ServedModel) -> TensorDef:
    grid = served.attention_grid or 1
    return TensorDef(contract.ATTENTION, "TYPE_FP32", (len(served.catalog), grid, grid))


def heatmaps_tensor(served: ServedModel) -> TensorDef:
    grid = served.attention_grid or 1
    return TensorDef(contract.HEATMAPS, "TYPE_FP32", (len(served.catalog), grid, grid))


def fundus_screen_models(served: ServedModel, options: ServingOptions = ServingOptions()) -> list[ModelDef]:
    """The model definitions of the screening pipeline in ``options.layout``, composing models first."""
    if options.layout == "fused":
        return fused_screen_models(served, options)
    return split_screen_models(served, options)


def fused_outputs(served: ServedModel) -> tuple[TensorDef, ...]:
    """The fused model's outputs, each a per-request ensemble output of the same name.

    Extend here (and in ``backends.fused.FusedScreen.outputs``) to serve more per-image outputs.
    """
    return screening_outputs(served)


def fused_screen_models(served: ServedModel, options: ServingOptions = ServingOptions()) -> list[ModelDef]:
    """CPU profile, one process: the ``fused_screen`` model and a one-step ensemble with the same contract."""
    outputs = fused_outputs(served)
    fused = PythonModelDef(
        name=contract.FUSED_MODEL,
        inputs=(TensorDef(contract.IMAGE, "TYPE_UINT8", (-1,), allow_ragged_batch=True),),
        outputs=outputs,
        instance_count=options.fused_instances,
        parameters={
            **screening_parameters(served),
            contract.KEY_DECODE_THREADS: str(options.decode_threads),
            contract.KEY_ORT_THREADS: str(options.ort_threads),
        },
        max_batch_size=options.max_batch_size,
        max_queue_delay_us=options.max_queue_delay_us,
        preferred_batch_sizes=options.preferred_batch_sizes,
        queue_policy=options.first_step_queue(),
    )
    ensemble = EnsembleDef(
        name=contract.ENSEMBLE,
        inputs=(TensorDef(contract.IMAGE, "TYPE_UINT8", (-1,)),),
        outputs=outputs,
        steps=(
            EnsembleStepDef(contract.FUSED_MODEL, {contract.IMAGE: contract.IMAGE}, {t.name: t.name for t in outputs}),
        ),
        max_batch_size=options.max_batch_size,
        parameters=served.parameters(),
    )
    return [fused, ensemble]


def split_screen_models(served: ServedModel, options: ServingOptions = ServingOptions()) -> list[ModelDef]:
    """The three-step ensemble (preprocess -> classifier -> postprocess), composing models first.

    ``preprocess`` also grades the image (QUALITY); ``postprocess`` applies the referral rules to
    the probabilities and the quality, and turns the classifier's ATTENTION (when exported) into HEATMAPS.
    """
    size, classes = served.preprocess.size, len(served.catalog)
    image = TensorDef(contract.IMAGE, "TYPE_UINT8", (-1,))
    pixels = TensorDef(contract.PIXELS, "TYPE_FP32", (3, size, size))
    logits = TensorDef(contract.LOGITS, "TYPE_FP32", (classes,))
    outputs = screening_outputs(served)
    quality, field_box = (next(t for t in outputs if t.name == n) for n in (contract.QUALITY, contract.FIELD_BOX))
    attention = (attention_tensor(served),) if served.attention_grid is not None else ()
    batching: dict[str, Any] = {
        "max_batch_size": options.max_batch_size,
        "max_queue_delay_us": options.max_queue_delay_us,
        "preferred_batch_sizes": options.preferred_batch_sizes,
    }
    preprocess = PythonModelDef(
        name=contract.PREPROCESS_MODEL,
        # Encoded images differ in length: ragged batching lets the batcher group them anyway.
        inputs=(TensorDef(contract.IMAGE, "TYPE_UINT8", (-1,), allow_ragged_batch=True),),
        outputs=(pixels, quality, field_box),
        instance_count=options.preprocess_instances,
        parameters={**screening_parameters(served), contract.KEY_DECODE_THREADS: str(options.decode_threads)},
        queue_policy=options.first_step_queue(),
        **batching,
    )
    classifier = PythonModelDef(
        name=contract.CLASSIFIER_MODEL,
        inputs=(pixels,),
        outputs=(logits, *attention),
        instance_count=options.classifier_instances,
        parameters={contract.KEY_ORT_THREADS: str(options.ort_threads)},
        **batching,
    )
    postprocess = PythonModelDef(
        name=contract.POSTPROCESS_MODEL,
        inputs=(logits, quality, *attention),
        outputs=tuple(t for t in outputs if t.name not in (contract.QUALITY, contract.FIELD_BOX)),
        parameters=screening_parameters(served),
        **batching,
    )
    inner = {contract.PIXELS: "pixels", contract.LOGITS: "logits", contract.ATTENTION: "attention"}
    ensemble = EnsembleDef(
        name=contract.ENSEMBLE,
        inputs=(image,),
        outputs=outputs,
        steps=(
            EnsembleStepDef(
                contract.PREPROCESS_MODEL,
                {contract.IMAGE: contract.IMAGE},
                {
                    contract.PIXELS: inner[contract.PIXELS],
                    contract.QUALITY: contract.QUALITY,
                    contract.FIELD_BOX: contract.FIELD_BOX,
                },
            ),
            EnsembleStepDef(
                contract.CLASSIFIER_MODEL,
                {contract.PIXELS: inner[contract.PIXELS]},
                {t.name: inner[t.name] for t in classifier.outputs},
            ),
            EnsembleStepDef(
                contract.POSTPROCESS_MODEL,
                {t.name: inner.get(t.name, t.name) for t in postprocess.inputs},
                {t.name: t.name for t in postprocess.outputs},
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
