"""The GPU profile of the model repository: DALI on the GPU, a TensorRT engine, per-request rejection.

Same ensemble name, same ``IMAGE`` in and the same screening results out
(``topology.screening_outputs``: PROBABILITIES, QUALITY, FINDINGS, REFERRAL, FIELD_BOX), same
parameters as the CPU profile, so the same client works against either. The one difference:
no ``HEATMAPS``. The TensorRT engine fuses the predilection attention into one plugin that
keeps the attention map on chip and returns logits only, so a client asking for heatmaps is
refused by its own discovery check (``IncompatibleModelError``) before any request. Steps
(``topology.gpu_layout``, which derives the ensemble from them):

1. ``validate_image`` (Python, CPU): the header/structure check, so that one bad image fails
   alone instead of failing the DALI batch it would have joined, and the field-of-view measure
   (a DCT-scaled decode, ``predilect.preprocess.field``): FOV_EXTENT and FRAME_EXTENT;
2. ``preprocess`` (DALI backend, GPU): nvJPEG ``mixed`` decode, crop by FOV_EXTENT (its side
   computed on the CPU: the backend's legacy executor allows no GPU->CPU transition), resize,
   normalise: ``dali.py`` derived from the served ``PreprocessCfg``; ragged ``IMAGE`` batches;
   returns PIXELS, and QUALITY_SQUARE (the same crop at the quality calibration's side) when the
   model input has another side.
   nvJPEG (``dali_mixed``) replaces the checkpoint's decoder (``pil_draft`` by default): the
   substitution is gated (``predilect.build.decoder_gate``: here with the ``dali_cpu`` twin, on
   the serving GPU again with nvJPEG) and recorded (``contract.KEY_SERVED_DECODER``,
   ``contract.KEY_DECODER_GATE``) in ``dali_params.json`` and the ensemble's parameters;
3. ``classifier`` (``tensorrt_plan``, GPU): the engine, whose optimisation profile is
   min 1 / opt = the largest preferred batch / max = ``max_batch_size``;
4. ``postprocess`` (Python; ``postprocess_instances`` of them, on ``KIND_CPU`` or per GPU with
   ``KIND_GPU``): rejects images without a field of view, per request; grades PIXELS, or
   QUALITY_SQUARE in its place where the model input has another side (``Screening.quality``;
   Triton copies it to the host for the Python backend), decides (``Screening.decide``, the served
   rules) and places FIELD_BOX, as the CPU profile does.

Every batched step has dynamic batching with preferred sizes and a queue policy (bounded
queue, REJECT on timeout) so overload fails fast; DALI and TensorRT warm up at load.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from predilect import contract
from predilect.build.decoder_gate import (
    DEFAULT_TOLERANCE_AUROC,
    DEFAULT_TOLERANCE_DP,
    DecoderGateReport,
    GateImages,
    gate_decoder,
    manifest_gate_images,
)
from predilect.drift import Reference
from predilect.errors import ConfigError
from predilect.preprocess import PreprocessCfg
from predilect.serving import topology
from predilect.serving.dali_pipeline import SERVED_DECODER, DaliParams
from predilect.serving.triton_config import QueuePolicyDef

POSTPROCESS_KINDS = ("KIND_CPU", "KIND_GPU")
"""Where the postprocess instances are counted: in all (CPU), or per GPU (the Python code runs on the host)."""


@dataclass(frozen=True)
class GpuServingOptions:
    """Knobs of the GPU profile; ``predilect assemble --profile gpu`` takes one option per field."""

    max_batch_size: int = field(default=16, metadata={"help": "largest dynamic batch; the engine profile's max"})
    preferred_batch_sizes: tuple[int, ...] = field(
        default=(4, 8, 16), metadata={"help": "dynamic batcher preferred sizes; the largest is the engine's opt"}
    )
    max_queue_delay_us: int = field(default=500, metadata={"help": "dynamic batcher wait for more requests, in us"})
    max_queue_size: int = field(default=256, metadata={"help": "queued requests per model before REJECT (0: no bound)"})
    queue_timeout_us: int = field(
        default=2_000_000, metadata={"help": "a request queued longer is rejected, in us (0: never)"}
    )
    validate_instances: int = field(
        default=2, metadata={"help": "validate_image (CPU) model instances (each measures the field of view)"}
    )
    postprocess_instances: int = field(
        default=1, metadata={"help": "postprocess (Python) model instances, per GPU with --postprocess-kind KIND_GPU"}
    )
    postprocess_kind: str = field(
        default="KIND_CPU",
        metadata={"help": "postprocess placement: KIND_CPU (a count in all) or KIND_GPU (that count per GPU)"},
    )
    dali_threads: int = field(default=4, metadata={"help": "DALI CPU threads per preprocess instance"})
    hw_decoder_load: float = field(
        default=0.65, metadata={"help": "share of JPEGs given to the hardware decoder (A100/H100), 0..1"}
    )
    decoder_tolerance_dp: float = field(
        default=DEFAULT_TOLERANCE_DP,
        metadata={"help": "decoder gate: largest |dp| between nvJPEG's and the training decoder's probabilities"},
    )
    decoder_tolerance_auroc: float = field(
        default=DEFAULT_TOLERANCE_AUROC,
        metadata={"help": "decoder gate: largest macro-AUROC change (labelled gate images)"},
    )
    classifier_instances: int = field(default=1, metadata={"help": "TensorRT execution contexts per GPU"})
    precision: str = field(default="fp32", metadata={"help": "engine precision: fp32, fp16, bf16, int8, fp8"})

    def __post_init__(self) -> None:
        for name in (
            "max_batch_size",
            "validate_instances",
            "postprocess_instances",
            "dali_threads",
            "classifier_instances",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if any(not 1 <= b <= self.max_batch_size for b in self.preferred_batch_sizes):
            raise ConfigError(f"preferred_batch_sizes must lie in 1..max_batch_size, got {self.preferred_batch_sizes}")
        if min(self.max_queue_delay_us, self.max_queue_size, self.queue_timeout_us) < 0:
            raise ConfigError("queue delay, size and timeout must be >= 0")
        if not 0.0 <= self.hw_decoder_load <= 1.0:
            raise ConfigError(f"hw_decoder_load is a share, 0..1; got {self.hw_decoder_load}")
        if min(self.decoder_tolerance_dp, self.decoder_tolerance_auroc) < 0:
            raise ConfigError("decoder gate tolerances must be >= 0")
        if self.postprocess_kind not in POSTPROCESS_KINDS:
            raise ConfigError(f"postprocess_kind must be one of {POSTPROCESS_KINDS}, got {self.postprocess_kind!r}")
        if self.precision not in ("fp32", "fp16", "bf16", "int8", "fp8"):
            raise ConfigError(f"precision must be fp32, fp16, bf16, int8 or fp8; got {self.precision!r}")

    @property
    def opt_batch(self) -> int:
        """The engine profile's optimum: the largest preferred batch (max_batch_size without one)."""
        return max(self.preferred_batch_sizes, default=self.max_batch_size)

    def queue_policy(self) -> QueuePolicyDef:
        return QueuePolicyDef(
            max_queue_size=self.max_queue_size, default_timeout_us=self.queue_timeout_us, timeout_action="REJECT"
        )


@dataclass(frozen=True)
class EngineBuildRequest:
    """``classifier/engine_build.json``: how the container builds ``model.plan`` from ``model.onnx``."""

    precision: str
    min_batch: int
    opt_batch: int
    max_batch: int
    use_plugin: bool = True

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> EngineBuildRequest:
        return cls(**json.loads(text))


def engine_request(options: GpuServingOptions, *, use_plugin: bool = True) -> EngineBuildRequest:
    return EngineBuildRequest(
        precision=options.precision,
        min_batch=1,
        opt_batch=options.opt_batch,
        max_batch=options.max_batch_size,
        use_plugin=use_plugin,
    )


def decoder_parameters(gate: DecoderGateReport | None) -> dict[str, str]:
    """The record of the served decoder (and of the gate its substitution passed), as config parameters."""
    record = {contract.KEY_SERVED_DECODER: SERVED_DECODER}
    return record if gate is None else {**record, contract.KEY_DECODER_GATE: gate.to_json()}


def warmup_jpeg(*, size_px: int = 512, seed: int = 0) -> bytes:
    """A synthetic fundus-like JPEG (a textured bright disc on black) that passes every check."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[:size_px, :size_px]
    disc = (yy - size_px / 2) ** 2 + (xx - size_px / 2) ** 2 < (0.45 * size_px) ** 2
    rgb = np.zeros((size_px, size_px, 3), np.uint8)
    rgb[disc] = (np.random.default_rng(seed).integers(40, 220, (int(disc.sum()), 3))).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def warmup_fov_extent(jpeg: bytes, cfg: PreprocessCfg) -> bytes:
    """The warm-up image's FOV_EXTENT as Triton reads a warm-up file: two float32, raw, in order."""
    import numpy as np

    from predilect.preprocess.decoders import Sniffed
    from predilect.preprocess.field import HostField, measure_field
    from predilect.preprocess.sniff import inspect_image

    data = np.frombuffer(jpeg, np.uint8)
    field = measure_field(Sniffed(data, inspect_image(data, cfg)), cfg)
    if not isinstance(field, HostField):
        raise ConfigError(f"the warm-up image does not pass preprocessing: {field}")
    return field.crop_extent().astype("<f4").tobytes()


SYNTHETIC_GATE_SIDES_PX = (256, 384, 512, 768, 1024, 1536)
"""Without a gate manifest, the decoder gate's images: warm-up-style discs at sides that take ``pil_draft`` through
its DCT scales (1, 1/2, 1/4, 1/8 for a 224-px square); they stand in for photographs, which the report names."""


def synthetic_gate_images() -> GateImages:
    """The decoder gate's images when no manifest is given: synthetic discs (``SYNTHETIC_GATE_SIDES_PX``)."""
    payloads = tuple(warmup_jpeg(size_px=side, seed=i) for i, side in enumerate(SYNTHETIC_GATE_SIDES_PX))
    return GateImages(payloads, None, f"synthetic discs ({len(payloads)} images, no photographs)")


def gate_served_decoder(
    onnx_path: Path, preprocess: PreprocessCfg, options: GpuServingOptions, images: GateImages
) -> DecoderGateReport | None:
    """The decoder gate of serving nvJPEG in place of ``preprocess.decoder``, run here with the ``dali_cpu`` twin
    (None when the checkpoint was trained with it); raises ``DecoderGateError`` past the options' tolerances."""
    if preprocess.decoder == SERVED_DECODER:
        return None
    return gate_decoder(
        preprocess,
        served=SERVED_DECODER,
        images=images,
        reference_onnx=onnx_path,
        check_with="dali_cpu",
        device_id=None,
        tolerance_dp=options.decoder_tolerance_dp,
        tolerance_auroc=options.decoder_tolerance_auroc,
    )


def check_legacy_executor(params: DaliParams) -> None:
    """Refuse a served DALI graph that Triton's DALI backend would not load: its legacy executor allows
    no GPU->CPU transition (``predilect.preprocess.dali.gpu_to_cpu_edges``; the Python graph only, no GPU)."""
    from predilect.preprocess.dali import gpu_to_cpu_edges
    from predilect.serving.dali_pipeline import served_pipeline

    edges = gpu_to_cpu_edges(served_pipeline(params)())
    if edges:
        raise ConfigError(
            "the served DALI graph has GPU->CPU transitions, which the DALI backend's legacy executor refuses: "
            + "; ".join(edges)
        )


def shim_dir() -> Path:
    """The GPU profile's templates (``model_repository/gpu``)."""
    from predilect.serving.repository import shim_source_dir

    return shim_source_dir() / "gpu"


def prepare_classifier_onnx(
    onnx_path: Path, precision: str, *, calibration: Path | None = None, calibration_images: int = 256
) -> bytes:
    """The served ONNX in ``precision`` (``precision.served_onnx``: ONNX Runtime form, FP32 I/O): what the
    engine is built from; INT8/FP8 calibrate on ``calibration_images`` training images of ``calibration``."""
    import onnx

    from predilect.build.tensorrt.precision import served_onnx

    model = onnx.load(str(onnx_path))
    pixels = None
    if precision in ("int8", "fp8"):
        if calibration is None:
            raise ConfigError(f"precision {precision} needs --calibration-manifest (training images to calibrate on)")
        from predilect.build.tensorrt.gate_set import manifest_gate_set

        pixels, _ = manifest_gate_set(calibration, onnx_path, split="train", limit=calibration_images)
    return served_onnx(model, precision, calibration_pixels=pixels).SerializeToString()


def assemble_gpu(
    onnx_path: Path,
    out_dir: Path,
    options: GpuServingOptions = GpuServingOptions(),
    *,
    gate_manifest: Path | None = None,
    gate_images: int = 64,
    calibration_manifest: Path | None = None,
    use_plugin: bool = True,
    reference: Reference | None = None,
) -> Path:
    """Write the GPU-profile repository for ``onnx_path`` into ``out_dir`` (replacing a previous one).

    The classifier carries the ONNX in the requested precision, the engine build request, the
    FP32 reference and the gate set; ``predilect trt-engine --model-repository`` (the container
    entrypoint) turns them into ``model.plan`` on the serving GPU. Serving nvJPEG in place of the
    checkpoint's decoder passes the decoder gate first (``gate_served_decoder``, on the held-out
    images of ``gate_manifest`` or synthetic ones); its report and images go into ``preprocess/``
    and the ensemble's parameters, and the container runs it again on the GPU.
    """
    import numpy as np

    from predilect.serving.repository import read_served_model, staged_repository, write_model

    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    served = read_served_model(onnx_path, reference=reference)
    classifier_onnx = prepare_classifier_onnx(onnx_path, options.precision, calibration=calibration_manifest)
    if gate_manifest is not None:
        from predilect.build.tensorrt.gate_set import manifest_gate_set

        pixels, labels = manifest_gate_set(gate_manifest, onnx_path, split="test", limit=gate_images)
    else:  # random pixels: the gate then checks max |dp| only
        pixels = np.random.default_rng(0).standard_normal((8, *served.preprocess.input_shape)).astype(np.float32)
        labels = np.zeros((0, len(served.catalog)), np.float32)
    decoder_images = (
        manifest_gate_images(gate_manifest, onnx_path, limit=gate_images)
        if gate_manifest is not None
        else synthetic_gate_images()
    )
    decoder_gate = gate_served_decoder(onnx_path, served.preprocess, options, decoder_images)
    jpeg = warmup_jpeg()
    templates = shim_dir()
    version = contract.TRITON_VERSION
    with staged_repository(out_dir) as staging:
        layout = topology.gpu_layout(
            served, options, warmup_image_bytes=len(jpeg), ensemble_parameters=decoder_parameters(decoder_gate)
        )
        for definition in layout.models():
            files = None
            if definition.name in (contract.VALIDATE_MODEL, contract.POSTPROCESS_MODEL):
                files = {"model.py": templates / definition.name / version / "model.py"}
            elif definition.name == contract.PREPROCESS_MODEL:
                files = {contract.DALI_FILENAME: templates / definition.name / version / contract.DALI_FILENAME}
            write_model(staging, definition, files=files)
        dali_dir = staging / contract.PREPROCESS_MODEL
        params = DaliParams(
            served.preprocess,
            max_batch_size=options.max_batch_size,
            num_threads=options.dali_threads,
            hw_decoder_load=options.hw_decoder_load,
            decoder=SERVED_DECODER,
            decoder_gate=None if decoder_gate is None else decoder_gate.to_json(),
        )
        (dali_dir / version / contract.DALI_PARAMS_FILENAME).write_text(params.to_json(), encoding="utf-8")
        check_legacy_executor(params)
        if decoder_gate is not None:  # the container gates nvJPEG itself on these, on its GPU
            decoder_images.save(dali_dir / contract.DECODER_GATE_SET_FILENAME)
        (dali_dir / "warmup").mkdir()
        (dali_dir / "warmup" / topology.GPU_WARMUP_IMAGE).write_bytes(jpeg)
        (dali_dir / "warmup" / topology.GPU_WARMUP_FOV).write_bytes(warmup_fov_extent(jpeg, served.preprocess))
        classifier = staging / contract.CLASSIFIER_MODEL
        (classifier / version / contract.ONNX_FILENAME).write_bytes(classifier_onnx)
        shutil.copy2(onnx_path, classifier / contract.REFERENCE_ONNX_FILENAME)
        request = engine_request(options, use_plugin=use_plugin)
        (classifier / contract.ENGINE_BUILD_FILENAME).write_text(request.to_json(), encoding="utf-8")
        np.savez_compressed(classifier / contract.GATE_SET_FILENAME, pixels=pixels, labels=labels)
    return out_dir
