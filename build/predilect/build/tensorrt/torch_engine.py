"""The Torch-TensorRT frontend: checkpoint -> ``torch.export`` -> TensorRT plan, gated like the ONNX route.

``build_torch_engine`` writes the same artefacts as ``engine.build_engine``: a serialized
TensorRT engine (input ``PIXELS`` FP32 [B, 3, S, S], output ``LOGITS`` FP32 [B, C], one
optimisation profile min 1 / opt / max from the serving options) that the GPU profile's
``tensorrt_plan`` classifier loads, and the same JSON sidecar (``frontend="torch"``), after the
same accuracy gate against the FP32 ONNX under ONNX Runtime. Steps:

1. load the checkpoint and check that the gate's reference ONNX is an export of it;
2. ``torch_export.export_fundus``: dynamic batch, the precision's types, the head as one
   ``predilect::predilection_attention`` node (all of this runs on a CPU);
3. lower that node to a TensorRT plugin (``lowering``):
   ``auto``: Torch-TensorRT's ``generate_plugin`` builds the plugin descriptor from the op's
   fake implementation, ``plugin.define_op_plugin`` adds the AOT implementation (the fused
   Triton kernel as PTX, so the plan runs without Python) and ``generate_plugin_converter``
   maps the op onto it; ``qdp``: a converter onto the ONNX route's QDP plugin
   (``predilect::PredilectionAttention``), for a Torch-TensorRT without plugin generation;
4. ``torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine`` (strongly typed:
   the precision comes from the program's types), with the engine's I/O named by the contract;
5. gate, then move the plan and its sidecar into place (nothing is kept past tolerance).

Steps 3-5 need ``torch_tensorrt`` (which needs the CUDA torch build, TensorRT and a GPU);
``import_torch_tensorrt`` raises ``TorchTensorRTUnavailableError`` where it is not importable.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch

from predilect import contract
from predilect.build.tensorrt.engine import EngineCfg, GateData, gate_engine, gpu_identity, write_engine
from predilect.build.tensorrt.plugin import PLUGIN_NAME as QDP_PLUGIN_NAME
from predilect.build.tensorrt.plugin import PLUGIN_NAMESPACE as QDP_PLUGIN_NAMESPACE
from predilect.build.tensorrt.plugin import TensorRTUnavailableError, define_op_plugin, import_tensorrt, register_plugin
from predilect.build.tensorrt.sidecar import (
    FRONTENDS,
    TORCH_LOWERINGS,
    EngineSidecar,
    TensorShapes,
    engine_key,
    read_sidecar,
    sidecar_path,
)
from predilect.build.tensorrt.torch_export import FundusProgram, export_fundus
from predilect.contract import KEY_MODEL_NAME, KEY_MODEL_VERSION, LOGITS, PIXELS
from predilect.errors import UserError

FRONTEND = FRONTENDS[1]
TORCH_TENSORRT_SERIES = (2, 13)
"""Torch-TensorRT's minor follows torch's: 2.13 for the pinned torch 2.13 (it pins TensorRT 11.0)."""


class TorchTensorRTUnavailableError(TensorRTUnavailableError):
    """``torch_tensorrt`` (and with it the CUDA torch build, TensorRT and a GPU) is needed for this step."""


class ReferenceMismatchError(UserError, ValueError):
    """The gate's reference ONNX is not an export of the checkpoint being compiled."""


def import_torch_tensorrt() -> Any:
    """``torch_tensorrt``, on a host where it imports and sees a GPU; ``TorchTensorRTUnavailableError`` otherwise."""
    if not torch.cuda.is_available():
        raise TorchTensorRTUnavailableError(
            f"the torch frontend needs a CUDA GPU and the CUDA torch build; this torch is {torch.__version__} "
            f"(cuda {torch.version.cuda}) and sees no GPU: use --frontend onnx here, or run on a GPU host "
            "(pip install 'predilect[torchtrt]' -c constraints-gpu.txt)"
        )
    try:
        torch_tensorrt = importlib.import_module("torch_tensorrt")
    except (ImportError, OSError) as exc:  # OSError: its C++ runtime fails to load against this torch
        raise TorchTensorRTUnavailableError(
            f"torch_tensorrt is not importable ({exc}): pip install 'predilect[torchtrt]' -c constraints-gpu.txt "
            f"(torch-tensorrt {TORCH_TENSORRT_SERIES[0]}.{TORCH_TENSORRT_SERIES[1]} for torch {torch.__version__})"
        ) from exc
    import_tensorrt()  # the AOT plugin API: TensorRT >= 10.9
    return torch_tensorrt


# ----------------------------------------------------------------------------- what runs on a CPU
def check_reference(checkpoint_meta: Any, reference_onnx: Path) -> None:
    """``ReferenceMismatchError`` unless ``reference_onnx`` carries the checkpoint's model name and version."""
    meta = {p.key: p.value for p in onnx.load(str(reference_onnx), load_external_data=False).metadata_props}
    got = (meta.get(KEY_MODEL_NAME), meta.get(KEY_MODEL_VERSION))
    want = (checkpoint_meta.model.name, checkpoint_meta.version)
    if got != want:
        raise ReferenceMismatchError(
            f"{reference_onnx} is model {got[0]!r} version {got[1]!r}, but the checkpoint is {want[0]!r} version "
            f"{want[1]!r}: the accuracy gate needs the FP32 ONNX export of this checkpoint (predilect export)"
        )


def profile_shapes(cfg: EngineCfg, item: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """``(min, opt, max)`` input shapes of the one optimisation profile (batch first)."""
    return (cfg.min_batch, *item), (cfg.opt_batch, *item), (cfg.max_batch, *item)


def compile_options(cfg: EngineCfg, precision: str) -> dict[str, Any]:
    """Keyword options of ``convert_exported_program_to_serialized_trt_engine`` for this build."""
    options: dict[str, Any] = {
        "min_block_size": 1,
        "require_full_compilation": True,  # one engine, no PyTorch fallback: Triton runs the plan alone
        "workspace_size": int(cfg.workspace_gib * (1 << 30)),
        "immutable_weights": True,
        "disable_tf32": precision == "fp32",  # an FP32 engine meets the 1e-4 gate without TF32 rounding
        "version_compatible": False,
        "hardware_compatible": False,
    }
    if cfg.timing_cache is not None:
        options["timing_cache_path"] = str(cfg.timing_cache)
    return options


def export_for_engine(model: Any, cfg: EngineCfg, precision: str, *, device: str = "cpu") -> FundusProgram:
    """The program Torch-TensorRT compiles: the custom op for the plugin, the reference ops without it."""
    return export_fundus(model.to(device), max_batch=cfg.max_batch, precision=precision, custom_op=cfg.use_plugin)


# ----------------------------------------------------------------------------- Torch-TensorRT
_LOWERED: dict[str, str] = {}  # op name -> the lowering registered in this process (converters are global)
_QDP_SITES: dict[str, int] = {}  # op name -> K of the model being built, for the qdp converter


def _plugin_generation() -> tuple[Any, Any] | None:
    try:
        from torch_tensorrt.dynamo.conversion.plugins import generate_plugin, generate_plugin_converter
    except ImportError:
        return None
    return generate_plugin, generate_plugin_converter


def register_lowering(lowering: str, *, op_name: str, sites_per_disease: int) -> str:
    """Make Torch-TensorRT convert ``op_name`` to a TensorRT AOT plugin; returns the lowering used.

    ``auto`` falls back to ``qdp`` where this Torch-TensorRT has no plugin generation. The first
    call of a process registers the converter; later calls only set ``sites_per_disease``.
    """
    if lowering not in TORCH_LOWERINGS:
        raise ValueError(f"lowering must be one of {TORCH_LOWERINGS}, got {lowering!r}")
    import tensorrt.plugin as trtp

    used = _LOWERED.get(op_name)
    if used is None:
        generation = _plugin_generation() if lowering == "auto" else None
        if generation is not None:
            generate_plugin, generate_plugin_converter = generation
            generate_plugin(op_name)  # the descriptor, from the op's fake implementation (and a JIT impl, unused)
            define_op_plugin(trtp, op_name, sites_per_disease=sites_per_disease)
            generate_plugin_converter(op_name, supports_dynamic_shapes=True, use_aot_if_available=True)
            used = "auto"
        else:
            _register_qdp_converter(op_name)
            used = "qdp"
        _LOWERED[op_name] = used
    elif used != lowering and lowering == "qdp":
        raise RuntimeError(f"{op_name} is already lowered with {used!r} in this process; build in a new process")
    if used == "auto":
        define_op_plugin(trtp, op_name, sites_per_disease=sites_per_disease)
    else:
        _QDP_SITES[op_name] = sites_per_disease
    return used


def _register_qdp_converter(op_name: str) -> None:
    """A converter from the custom op to the ONNX route's QDP plugin (logits only, K as an attribute)."""
    import tensorrt.plugin as trtp
    from torch_tensorrt.dynamo.conversion import dynamo_tensorrt_converter
    from torch_tensorrt.dynamo.conversion.converter_utils import get_trt_tensor

    register_plugin()
    namespace, name = op_name.split("::")
    overload = getattr(getattr(torch.ops, namespace), name).default

    @dynamo_tensorrt_converter(overload, supports_dynamic_shapes=True)
    def _convert(ctx: Any, target: Any, args: Any, kwargs: Any, name: str) -> Any:
        tokens, sites, weight, bias, return_attention = args[:5]
        if return_attention:
            raise ValueError(f"{op_name}: the QDP plugin computes logits only")
        tensors = [get_trt_tensor(ctx, t, f"{name}_{i}") for i, t in enumerate((tokens, sites, weight, bias))]
        plugin = getattr(getattr(trtp.op, QDP_PLUGIN_NAMESPACE), QDP_PLUGIN_NAME)
        layer = ctx.net.add_plugin(plugin(*tensors, sites_per_disease=_QDP_SITES[op_name]), aot=True)
        layer.name = f"[{target}]-[{name}]"
        # The op's second output (the attention map) has no consumer: export_fundus removed it.
        return (layer.get_output(0),)


@contextlib.contextmanager
def contract_io_names() -> Iterator[None]:
    """Name the engine's input ``PIXELS`` and output ``LOGITS`` (Torch-TensorRT says ``pixels``, ``output0``).

    Triton's ``tensorrt_plan`` backend matches the config's tensor names to the plan's, and a
    serialized plan cannot be renamed, so the names are set while the network is built: the
    interpreter class Torch-TensorRT's conversion instantiates is swapped for a subclass for the
    duration of the call. ``check_plan_io`` verifies the result.
    """
    conversion: Any = importlib.import_module("torch_tensorrt.dynamo.conversion._conversion")
    base = conversion.TRTInterpreter

    class _ContractNames(base):  # type: ignore[misc, valid-type]
        def placeholder(self, target: str, args: Any, kwargs: Any) -> Any:
            if self.input_specs_iter != 0:
                raise RuntimeError(f"the served model has one input; got a second placeholder {target!r}")
            return super().placeholder(PIXELS, args, kwargs)

        def output(self, target: str, args: Any, kwargs: Any) -> Any:
            outputs = super().output(target, args, kwargs)
            if len(outputs) != 1:
                raise RuntimeError(f"the served model has one output; the graph returns {len(outputs)}")
            outputs[0].name = LOGITS
            self._output_names[:] = [LOGITS]
            return outputs

    conversion.TRTInterpreter = _ContractNames
    try:
        yield
    finally:
        conversion.TRTInterpreter = base


def compile_program(
    exported: FundusProgram, cfg: EngineCfg, *, lowering: str = "auto", sites_per_disease: int
) -> tuple[bytes, str]:
    """The serialized plan of ``exported`` and the lowering used; needs ``torch_tensorrt`` and a GPU."""
    torch_tensorrt = import_torch_tensorrt()
    from predilect.kernels import OP_NAME

    used = register_lowering(lowering, op_name=OP_NAME, sites_per_disease=sites_per_disease) if cfg.use_plugin else ""
    low, opt, high = profile_shapes(cfg, exported.input_shape)
    spec = torch_tensorrt.Input(min_shape=low, opt_shape=opt, max_shape=high, dtype=torch.float32)
    with contract_io_names():
        plan = torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine(
            exported.program, arg_inputs=[spec], **compile_options(cfg, exported.precision)
        )
    plan = bytes(plan)
    check_plan_io(plan)
    return plan, used


def check_plan_io(plan: bytes) -> None:
    """RuntimeError unless the plan's I/O is exactly ``PIXELS`` in and ``LOGITS`` out, both FP32."""
    trt = import_tensorrt()
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
    if engine is None:
        raise RuntimeError("TensorRT could not deserialise the plan Torch-TensorRT built")
    io = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        io[name] = (engine.get_tensor_mode(name), engine.get_tensor_dtype(name))
    want = {PIXELS: (trt.TensorIOMode.INPUT, trt.float32), LOGITS: (trt.TensorIOMode.OUTPUT, trt.float32)}
    if io != want:
        raise RuntimeError(f"the plan's I/O is {io}; the tensorrt_plan config expects {want}")


# ----------------------------------------------------------------------------- the build
@dataclass(frozen=True)
class TorchBuild:
    """What ``build_torch_engine`` was asked for, besides the profile in ``EngineCfg``."""

    precision: str = "fp32"
    lowering: str = "auto"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_torch_engine(
    checkpoint: Path,
    engine_path: Path,
    cfg: EngineCfg = EngineCfg(),
    build: TorchBuild = TorchBuild(),
    *,
    gate: GateData,
) -> EngineSidecar:
    """Compile ``checkpoint`` with Torch-TensorRT, gate it, write ``engine_path`` and its sidecar.

    ``AccuracyGateError`` past tolerance (nothing is kept); ``TorchTensorRTUnavailableError``
    where Torch-TensorRT cannot run, after everything before it (load, reference check, export).
    """
    from predilect.models.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    check_reference(meta, gate.reference_onnx)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    exported = export_for_engine(model, cfg, build.precision, device=device)
    sites = model.cfg.sites_per_disease
    plan, lowering = compile_program(exported, cfg, lowering=build.lowering, sites_per_disease=sites)
    report = gate_engine(plan, gate, build.precision, max_batch=cfg.max_batch)
    gpu_name, capability = gpu_identity()
    low, opt, high = profile_shapes(cfg, exported.input_shape)
    classes = (len(meta.catalog),)
    sidecar = EngineSidecar(
        tensorrt_version=import_tensorrt().__version__,
        gpu_name=gpu_name,
        compute_capability=capability,
        precision=build.precision,
        frontend=FRONTEND,
        onnx_sha256=_sha256(gate.reference_onnx),
        catalog_digest=meta.catalog.digest(),
        model_name=meta.model.name,
        model_version=meta.version,
        plugin=cfg.use_plugin,
        inputs=(TensorShapes(PIXELS, "fp32", low, opt, high),),
        outputs=(TensorShapes(LOGITS, "fp32", (low[0], *classes), (opt[0], *classes), (high[0], *classes)),),
        gate={**report.to_dict(), "lowering": lowering},
        checkpoint_sha256=_sha256(checkpoint),
    )
    write_engine(engine_path, plan, sidecar)
    return sidecar


def reference_onnx_for(checkpoint: Path, folder: Path) -> Path:
    """An FP32 ONNX export of ``checkpoint`` in ``folder``, for the gate when none was given."""
    from predilect.build.export import export_onnx

    path = Path(folder) / contract.ONNX_FILENAME
    export_onnx(checkpoint, path)
    return path


# ----------------------------------------------------------------------------- a GPU-profile repository
def _request(repository: Path) -> dict[str, Any]:
    classifier = Path(repository) / contract.CLASSIFIER_MODEL
    return dict(json.loads((classifier / contract.ENGINE_BUILD_FILENAME).read_text(encoding="utf-8")))


def ensure_torch_engine(
    repository: Path, cache_dir: Path, checkpoint: Path, *, lowering: str = "auto"
) -> tuple[Path, bool]:
    """``classifier/1/model.plan`` of a GPU-profile repository compiled from ``checkpoint``; ``(path, built)``.

    Refused (``versions.TensorRTVersionError``) unless the installed TensorRT is the serving
    container's series: with ``torch-tensorrt`` 2.13 (TensorRT 11.0) it always is, because the
    25.08 server cannot deserialize its plans (``versions``); the code stays for a container of
    Torch-TensorRT's series. Profile and precision come from the repository's ``engine_build.json``,
    the gate from its gate set and FP32 reference, as ``repository_engine.ensure_engine`` does for the
    ONNX route, with the same locked, atomic cache (``engine_cache``); the plan is cached under
    ``<cache>/<sm..-trt..>/torch-<checkpoint sha256>-<precision>/``.
    """
    from predilect.build.tensorrt.engine_cache import cached_plan
    from predilect.build.tensorrt.repository_engine import engine_cfg, gate_data, install_plan
    from predilect.build.tensorrt.sidecar import timing_cache_name
    from predilect.build.tensorrt.versions import check_served_tensorrt

    trt = import_tensorrt()
    check_served_tensorrt(trt.__version__)
    request = _request(repository)
    gpu_name, capability = gpu_identity()
    key = engine_key(capability, trt.__version__)
    cfg = engine_cfg(repository, timing_cache=Path(cache_dir) / key / timing_cache_name(gpu_name))
    sha = _sha256(checkpoint)
    cached = Path(cache_dir) / key / f"torch-{sha[:16]}-{request['precision']}" / contract.PLAN_FILENAME

    def reusable(plan: Path) -> bool:
        if not sidecar_path(plan).is_file():
            return False
        sidecar = read_sidecar(plan)
        return (
            sidecar.frontend == FRONTEND
            and sidecar.checkpoint_sha256 == sha
            and sidecar.max_batch >= cfg.max_batch
            and sidecar.plugin == cfg.use_plugin
        )

    def build(plan: Path) -> None:
        torch_build = TorchBuild(precision=request["precision"], lowering=lowering)
        build_torch_engine(checkpoint, plan, cfg, torch_build, gate=gate_data(repository))

    built = cached_plan(cached, reusable=reusable, build=build)
    target = Path(repository) / contract.CLASSIFIER_MODEL / contract.TRITON_VERSION / contract.PLAN_FILENAME
    install_plan(cached, target)
    return target, built
