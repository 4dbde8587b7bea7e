"""The served layouts: each an ordered list of steps with their tensors; the ensemble is derived.

A layout (``Topology``) names the ensemble's inputs and outputs and lists its composing models in
order, each with its own tensors (``triton_config`` definitions). ``Topology.ensemble()`` wires
them: a step's input reads the ensemble input or the latest earlier step's output of the same
name, or, where the names truly differ, the tensor its ``Step.inputs_from`` names. Step outputs
that are ensemble outputs keep their names; the other tensors passed between steps are named in
lower case, so a reader of ``config.pbtxt`` tells them from the ensemble's own. Every wire is
checked (produced before it is read, same data type and dims) when the ensemble is derived.

Layouts, all serving the ``fundus_screen`` ensemble with the same contract:

* ``fused_layout`` (CPU): one Python model decodes, classifies and decides in one process;
* ``split_layout`` (CPU): preprocess -> classifier -> postprocess;
* ``gpu_layout``: validate_image -> preprocess (DALI) -> classifier (TensorRT) -> postprocess
  (``predilect.serving.gpu_profile`` assembles it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from predilect import contract
from predilect.serving.configs import ServedModel, ServingOptions, screening_parameters
from predilect.serving.triton_config import (
    BackendModelDef,
    ComposingModelDef,
    EnsembleDef,
    EnsembleStepDef,
    ModelDef,
    PythonModelDef,
    TensorDef,
    WarmupDef,
    WarmupInputDef,
)

if TYPE_CHECKING:
    from predilect.serving.gpu_profile import GpuServingOptions

GPU_WARMUP_IMAGE = "fundus.jpg"
"""The warm-up JPEG of the GPU profile's ``preprocess`` step, in its ``warmup/`` folder."""
GPU_WARMUP_FOV = "fundus.fov_extent"
"""Its field of view (``FOV_EXTENT``: two float32, raw), beside it."""


class TopologyError(ValueError):
    """A layout's steps cannot be wired into an ensemble (a tensor read before it is produced, ...)."""


@dataclass(frozen=True)
class Step:
    """One composing model of a layout.

    ``inputs_from``: ``{model input name: name of the tensor it reads}``, only for inputs that
    read a tensor of another name; every other input reads the tensor of its own name.
    """

    model: ComposingModelDef
    inputs_from: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Topology:
    """An ensemble as an ordered list of steps; ``ensemble()`` derives its scheduling."""

    name: str
    inputs: tuple[TensorDef, ...]
    outputs: tuple[TensorDef, ...]
    steps: tuple[Step, ...]
    max_batch_size: int
    parameters: Mapping[str, str] = field(default_factory=dict)

    def models(self) -> list[ModelDef]:
        """Every model definition of the layout: the composing models in order, the ensemble last."""
        return [*(step.model for step in self.steps), self.ensemble()]

    def ensemble(self) -> EnsembleDef:
        """The ensemble definition, its steps wired as the module docstring says; raises ``TopologyError``."""
        # The latest producer of each tensor name: a step index, or None for an ensemble input.
        latest: dict[str, tuple[int | None, TensorDef]] = {t.name: (None, t) for t in self.inputs}
        reads: list[dict[str, tuple[int | None, str]]] = []
        for index, step in enumerate(self.steps):
            model = step.model
            if model.max_batch_size < self.max_batch_size:
                raise TopologyError(
                    f"step {model.name}: max_batch_size {model.max_batch_size} < the ensemble's {self.max_batch_size}"
                )
            unknown = set(step.inputs_from) - {t.name for t in model.inputs}
            if unknown:
                raise TopologyError(f"step {model.name}: inputs_from names no input of the model: {sorted(unknown)}")
            feeds: dict[str, tuple[int | None, str]] = {}
            for tensor in model.inputs:
                source = step.inputs_from.get(tensor.name, tensor.name)
                if source not in latest:
                    raise TopologyError(
                        f"step {model.name}: input {tensor.name} reads {source}, "
                        "which neither the ensemble's inputs nor an earlier step provides"
                    )
                producer, produced = latest[source]
                if not produced.same_shape(tensor):
                    raise TopologyError(
                        f"step {model.name}: input {tensor.name} is {tensor.data_type}{list(tensor.dims)}, "
                        f"its source {source} is {produced.data_type}{list(produced.dims)}"
                    )
                feeds[tensor.name] = (producer, source)
            reads.append(feeds)
            for tensor in model.outputs:
                latest[tensor.name] = (index, tensor)
        finals: dict[str, int] = {}
        for tensor in self.outputs:
            producer, produced = latest.get(tensor.name, (None, tensor))
            if producer is None:
                raise TopologyError(f"ensemble output {tensor.name} is produced by no step")
            if not produced.same_shape(tensor):
                raise TopologyError(
                    f"ensemble output {tensor.name} is {tensor.data_type}{list(tensor.dims)}, "
                    f"step {self.steps[producer].model.name} makes {produced.data_type}{list(produced.dims)}"
                )
            finals[tensor.name] = producer
        names = self._tensor_names(reads, finals)
        steps = tuple(
            EnsembleStepDef(
                step.model.name,
                input_map={
                    name: source if producer is None else names[producer, source]
                    for name, (producer, source) in feeds.items()
                },
                output_map={t.name: names[index, t.name] for t in step.model.outputs if (index, t.name) in names},
            )
            for index, (step, feeds) in enumerate(zip(self.steps, reads, strict=True))
        )
        return EnsembleDef(
            name=self.name,
            inputs=self.inputs,
            outputs=self.outputs,
            steps=steps,
            max_batch_size=self.max_batch_size,
            parameters=self.parameters,
        )

    def _tensor_names(
        self, reads: list[dict[str, tuple[int | None, str]]], finals: dict[str, int]
    ) -> dict[tuple[int, str], str]:
        """The ensemble tensor name of each step output that is read later or is an ensemble output."""
        used = {(p, source) for feeds in reads for p, source in feeds.values() if p is not None}
        used |= {(p, name) for name, p in finals.items()}
        taken = {t.name for t in self.inputs} | set(finals)
        names: dict[tuple[int, str], str] = {}
        for index, name in sorted(used):
            if finals.get(name) == index:
                names[index, name] = name
                continue
            internal = name.lower()
            if internal in taken:  # an earlier step's tensor of the same name: qualify it by its model
                internal = f"{self.steps[index].model.name}_{internal}"
            if internal in taken:
                raise TopologyError(f"step {self.steps[index].model.name}: no free ensemble name for {name}")
            taken.add(internal)
            names[index, name] = internal
        return names


def screening_outputs(served: ServedModel, *, heatmaps: bool = True) -> tuple[TensorDef, ...]:
    """The ensemble's per-image outputs (every profile): probabilities, quality, findings, decision, field
    box, and ``HEATMAPS`` when the model exports its attention (clients ask for it; it is never sent
    unasked) unless ``heatmaps`` is False (the GPU profile: its TensorRT engine returns logits only)."""
    classes = len(served.catalog)
    outputs = (
        TensorDef(contract.PROBABILITIES, "TYPE_FP32", (classes,)),
        TensorDef(contract.QUALITY, "TYPE_FP32", (1 + len(contract.QUALITY_REASONS),)),
        TensorDef(contract.QUALITY_MEASURES_TENSOR, "TYPE_FP32", (len(contract.QUALITY_MEASURES),)),
        TensorDef(contract.FINDINGS, "TYPE_BOOL", (classes,)),
        TensorDef(contract.REFERRAL, "TYPE_INT32", (1,)),
        TensorDef(contract.FIELD_BOX, "TYPE_FP32", (4,)),
    )
    if served.attention_grid is None or not heatmaps:
        return outputs
    return (*outputs, heatmaps_tensor(served))


def attention_tensor(served: ServedModel) -> TensorDef:
    grid = served.attention_grid or 1
    return TensorDef(contract.ATTENTION, "TYPE_FP32", (len(served.catalog), grid, grid))


def heatmaps_tensor(served: ServedModel) -> TensorDef:
    grid = served.attention_grid or 1
    return TensorDef(contract.HEATMAPS, "TYPE_FP32", (len(served.catalog), grid, grid))


def _image(*, ragged: bool = False) -> TensorDef:
    # Encoded images differ in length: ragged batching lets a step's batcher group them anyway.
    return TensorDef(contract.IMAGE, "TYPE_UINT8", (-1,), allow_ragged_batch=ragged)


def _pixels(served: ServedModel) -> TensorDef:
    size = served.preprocess.size
    return TensorDef(contract.PIXELS, "TYPE_FP32", (3, size, size))


def _logits(served: ServedModel) -> TensorDef:
    return TensorDef(contract.LOGITS, "TYPE_FP32", (len(served.catalog),))


def cpu_layout(served: ServedModel, options: ServingOptions = ServingOptions()) -> Topology:
    """The CPU profile's layout that ``options.layout`` names."""
    return fused_layout(served, options) if options.layout == "fused" else split_layout(served, options)


def fused_layout(served: ServedModel, options: ServingOptions = ServingOptions()) -> Topology:
    """CPU profile, one process: the ``fused_screen`` model, every output an ensemble output.

    To serve more per-image outputs, extend ``screening_outputs`` and ``backends.fused.FusedScreen.outputs``.
    """
    outputs = screening_outputs(served)
    fused = PythonModelDef(
        name=contract.FUSED_MODEL,
        inputs=(_image(ragged=True),),
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
    return Topology(
        name=contract.ENSEMBLE,
        inputs=(_image(),),
        outputs=outputs,
        steps=(Step(fused),),
        max_batch_size=options.max_batch_size,
        parameters=served.parameters(),
    )


def split_layout(served: ServedModel, options: ServingOptions = ServingOptions()) -> Topology:
    """CPU profile, three steps: preprocess -> classifier -> postprocess.

    ``preprocess`` also grades the image (QUALITY) and places the field (FIELD_BOX); ``postprocess``
    applies the referral rules to the probabilities and the quality, and turns the classifier's
    ATTENTION (when exported) into HEATMAPS. Only the first step bounds its queue.
    """
    outputs = screening_outputs(served)
    by_name = {t.name: t for t in outputs}
    quality, field_box = by_name[contract.QUALITY], by_name[contract.FIELD_BOX]
    measures = by_name[contract.QUALITY_MEASURES_TENSOR]
    attention = (attention_tensor(served),) if served.attention_grid is not None else ()
    batching: dict[str, Any] = {
        "max_batch_size": options.max_batch_size,
        "max_queue_delay_us": options.max_queue_delay_us,
        "preferred_batch_sizes": options.preferred_batch_sizes,
    }
    preprocess = PythonModelDef(
        name=contract.PREPROCESS_MODEL,
        inputs=(_image(ragged=True),),
        outputs=(_pixels(served), quality, measures, field_box),
        instance_count=options.preprocess_instances,
        parameters={**screening_parameters(served), contract.KEY_DECODE_THREADS: str(options.decode_threads)},
        queue_policy=options.first_step_queue(),
        **batching,
    )
    classifier = PythonModelDef(
        name=contract.CLASSIFIER_MODEL,
        inputs=(_pixels(served),),
        outputs=(_logits(served), *attention),
        instance_count=options.classifier_instances,
        parameters={contract.KEY_ORT_THREADS: str(options.ort_threads)},
        **batching,
    )
    postprocess = PythonModelDef(
        name=contract.POSTPROCESS_MODEL,
        inputs=(_logits(served), quality, *attention),
        outputs=tuple(
            t for t in outputs if t.name not in (contract.QUALITY, contract.QUALITY_MEASURES_TENSOR, contract.FIELD_BOX)
        ),
        parameters=screening_parameters(served),
        **batching,
    )
    return Topology(
        name=contract.ENSEMBLE,
        inputs=(_image(),),
        outputs=outputs,
        steps=(Step(preprocess), Step(classifier), Step(postprocess)),
        max_batch_size=options.max_batch_size,
        parameters=served.parameters(),
    )


def gpu_layout(
    served: ServedModel,
    options: GpuServingOptions,
    *,
    warmup_image_bytes: int,
    ensemble_parameters: dict[str, str] | None = None,
) -> Topology:
    """The GPU profile: validate_image (CPU) -> preprocess (DALI) -> classifier (TensorRT) -> postprocess.

    The same outputs as the CPU profile but HEATMAPS (the TensorRT plugin keeps the attention map
    on chip). ``validate_image`` passes the image (VALID_IMAGE) with the field of view and frame it
    measured on the host (FOV_EXTENT, FRAME_EXTENT); ``preprocess`` decodes the image and crops by
    the field (no GPU->CPU transition: the DALI backend's legacy executor allows none); the
    postprocess step reads the extents and grades PIXELS, or QUALITY_SQUARE (the crop at the quality
    calibration's side) when the model input has another side, and then PIXELS is not sent to it.
    Every step bounds its queue; DALI warms up on ``GPU_WARMUP_IMAGE`` (``warmup_image_bytes`` long,
    with its field in ``GPU_WARMUP_FOV``), TensorRT on zeros at each profile batch.
    ``ensemble_parameters`` join the served model's (the decoder record, ``gpu_profile.decoder_parameters``).
    """
    batching: dict[str, Any] = {
        "max_batch_size": options.max_batch_size,
        "max_queue_delay_us": options.max_queue_delay_us,
        "preferred_batch_sizes": options.preferred_batch_sizes,
        "queue_policy": options.queue_policy(),
    }
    size = served.preprocess.size
    pixels, logits = _pixels(served), _logits(served)
    fov = TensorDef(contract.FOV_EXTENT, "TYPE_FP32", (2,))
    frame = TensorDef(contract.FRAME_EXTENT, "TYPE_FP32", (2,))
    squares = (
        (TensorDef(contract.QUALITY_SQUARE, "TYPE_UINT8", served.preprocess.quality_shape),)
        if served.preprocess.separate_quality_square
        else ()
    )
    outputs = screening_outputs(served, heatmaps=False)
    validate = PythonModelDef(
        name=contract.VALIDATE_MODEL,
        inputs=(_image(ragged=True),),
        outputs=(TensorDef(contract.VALID_IMAGE, "TYPE_UINT8", (-1,)), fov, frame),
        instance_count=options.validate_instances,
        parameters={contract.KEY_PREPROCESS: served.preprocess.to_json()},
        **batching,
    )
    warm_jpeg = WarmupInputDef("TYPE_UINT8", (warmup_image_bytes,), source="file", input_data_file=GPU_WARMUP_IMAGE)
    warm_fov = WarmupInputDef("TYPE_FP32", (2,), source="file", input_data_file=GPU_WARMUP_FOV)
    preprocess = BackendModelDef(
        name=contract.PREPROCESS_MODEL,
        backend="dali",
        inputs=(_image(ragged=True), fov),  # the DALI graph's external sources (preprocess.dali_inputs)
        outputs=(pixels, *squares),  # the order of the graph's outputs (preprocess.dali_outputs)
        instance_kind="KIND_GPU",
        parameters={"num_threads": str(options.dali_threads)},  # the DALI backend's own parameter
        warmup=(WarmupDef("fundus", batch_size=1, inputs={contract.IMAGE: warm_jpeg, contract.FOV_EXTENT: warm_fov}),),
        **batching,
    )
    zeros = WarmupInputDef("TYPE_FP32", (3, size, size))
    classifier = BackendModelDef(
        name=contract.CLASSIFIER_MODEL,
        platform="tensorrt_plan",
        inputs=(pixels,),
        outputs=(logits,),
        instance_kind="KIND_GPU",
        instance_count=options.classifier_instances,
        warmup=tuple(
            WarmupDef(f"batch{b}", batch_size=b, inputs={contract.PIXELS: zeros})
            for b in sorted({1, options.opt_batch, options.max_batch_size})
        ),
        **batching,
    )
    post_inputs = (logits, fov, frame, *(squares or (pixels,)))  # the square graded, and nothing unused
    postprocess: ComposingModelDef
    if options.postprocess_kind == "KIND_CPU":
        postprocess = PythonModelDef(
            name=contract.POSTPROCESS_MODEL,
            inputs=post_inputs,
            outputs=outputs,
            instance_count=options.postprocess_instances,
            parameters=screening_parameters(served),
            **batching,
        )
    else:  # Python on KIND_GPU: that many instances per GPU (inputs still reach it on the host)
        postprocess = BackendModelDef(
            name=contract.POSTPROCESS_MODEL,
            backend="python",
            inputs=post_inputs,
            outputs=outputs,
            instance_kind=options.postprocess_kind,
            instance_count=options.postprocess_instances,
            parameters=screening_parameters(served),
            **batching,
        )
    return Topology(
        name=contract.ENSEMBLE,
        inputs=(_image(),),
        outputs=outputs,
        steps=(
            Step(validate),
            Step(preprocess, inputs_from={contract.IMAGE: contract.VALID_IMAGE}),
            Step(classifier),
            Step(postprocess),
        ),
        max_batch_size=options.max_batch_size,
        parameters={**served.parameters(), **(ensemble_parameters or {})},
    )
