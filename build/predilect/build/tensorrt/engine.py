"""Served ONNX -> TensorRT engine (strongly typed, one optimisation profile), gated against ONNX Runtime.

Steps of ``build_engine``: the ONNX (whose types carry the precision, see ``precision``) is
rewritten in memory so the attention head becomes the AOT plugin node (``onnx_rewrite``), the
plugin is registered, TensorRT parses it into a strongly typed network, one optimisation
profile spans min / opt / max batch (from the serving options), a timing cache is reused and
updated, and the serialized plan goes to a temporary file. ``engine_logits`` then runs it on the
gate images; ``accuracy.check_accuracy`` compares with the FP32 reference under ONNX Runtime
and raises past tolerance, in which case no engine is kept. Otherwise the plan and its JSON
sidecar (TensorRT version, GPU, compute capability, precision, shapes, catalog digest, gate
report) are moved into place. Needs ``tensorrt`` >= 10.9 and ``cuda-python`` on a CUDA host;
nothing here imports torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from predilect.build.tensorrt.accuracy import GateReport, check_accuracy, reference_probabilities, sigmoid
from predilect.build.tensorrt.engine_cache import atomic_write
from predilect.build.tensorrt.onnx_rewrite import (
    drop_attention_output,
    for_tensorrt,
    has_plugin_node,
    inline_reference,
    rewrite,
)
from predilect.build.tensorrt.plugin import TensorRTUnavailableError, import_tensorrt, register_plugin
from predilect.build.tensorrt.precision import onnx_precision
from predilect.build.tensorrt.sidecar import FRONTENDS, EngineSidecar, TensorShapes, write_sidecar
from predilect.catalog import Catalog
from predilect.contract import KEY_CATALOG, KEY_MODEL_NAME, KEY_MODEL_VERSION, LOGITS, PIXELS

FRONTEND = FRONTENDS[0]


@dataclass(frozen=True)
class EngineCfg:
    """Engine-build options: the dynamic-batch profile, workspace, plugin and timing cache."""

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 16
    workspace_gib: float = 2.0
    use_plugin: bool = True
    timing_cache: Path | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                f"need 1 <= min_batch <= opt_batch <= max_batch, got "
                f"{self.min_batch}, {self.opt_batch}, {self.max_batch}"
            )


@dataclass(frozen=True)
class GateData:
    """Held-out pixels (N, 3, S, S) float32, optional labels (N, C), and the FP32 reference ONNX."""

    pixels: np.ndarray
    reference_onnx: Path
    labels: np.ndarray | None = None


def tensorrt_onnx(model: onnx.ModelProto, *, use_plugin: bool = True) -> onnx.ModelProto:
    """The ONNX TensorRT should parse: the plugin form, or the reference graph; either way with
    ``LOGITS`` as its only output (the engine serves no ``ATTENTION``).

    The rewrite is applied exactly once, whatever the precision: a model that already holds the
    plugin node (the FP16/BF16 ONNX of a GPU repository, rewritten before its cast because the
    cast head no longer matches) is only marked for TensorRT; without the plugin, that node's
    reference function is inlined back. FP32 and INT8/FP8 models are stored plugin-free.
    """
    rewritten = has_plugin_node(model)
    if use_plugin:
        return for_tensorrt(model if rewritten else rewrite(model))
    plain = inline_reference(model) if rewritten else model
    graph = gs.import_onnx(plain)
    return gs.export_onnx(graph) if drop_attention_output(graph) else plain


def network_onnx(model: onnx.ModelProto, cfg: EngineCfg) -> onnx.ModelProto:
    """What ``build_engine`` hands TensorRT's parser for ``model`` (as stored, in its precision): every
    step of the build before the one that needs TensorRT."""
    return tensorrt_onnx(model, use_plugin=cfg.use_plugin)


def _network_flags(trt: Any) -> int:
    # TensorRT 10 needs the flag for strong typing; TensorRT 11 networks are strongly typed always.
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _timing_cache(config: Any, path: Path | None) -> Any:
    """The builder's timing cache: ``path``'s (written whole by ``atomic_write``, so never a part), or an
    empty one where TensorRT refuses it (another device's timings: ``set_timing_cache`` returns False)."""
    blob = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def build_serialized(model: onnx.ModelProto, cfg: EngineCfg) -> bytes:
    """Parse ``model`` (already in TensorRT form) and build a plan; updates ``cfg.timing_cache``."""
    trt = import_tensorrt()
    if cfg.use_plugin:
        register_plugin()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse the ONNX: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_gib * (1 << 30)))
    cache = _timing_cache(config, cfg.timing_cache)
    pixels = network.get_input(0)
    item = tuple(pixels.shape)[1:]
    profile = builder.create_optimization_profile()
    profile.set_shape(pixels.name, (cfg.min_batch, *item), (cfg.opt_batch, *item), (cfg.max_batch, *item))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build an engine (see the TensorRT log above)")
    if cfg.timing_cache is not None:
        atomic_write(cfg.timing_cache, bytes(cache.serialize()))
    return bytes(serialized)


# ----------------------------------------------------------------------------- running a plan
def _cuda() -> Any:
    try:
        from cuda.bindings import driver
    except ImportError as exc:
        raise TensorRTUnavailableError(
            "cuda-python is not installed: running an engine needs `pip install cuda-python` on a CUDA host"
        ) from exc
    return driver


def _check(result: tuple[Any, ...]) -> Any:
    error, *values = result
    if int(error) != 0:
        raise RuntimeError(f"CUDA driver call failed: {error}")
    return values[0] if len(values) == 1 else values


def gpu_identity(device: int = 0) -> tuple[str, str]:
    """``(name, "major.minor")`` of CUDA device ``device`` through the driver API."""
    cuda = _cuda()
    _check(cuda.cuInit(0))
    handle = _check(cuda.cuDeviceGet(device))
    name = _check(cuda.cuDeviceGetName(256, handle)).split(b"\0", 1)[0].decode()
    attribute = cuda.CUdevice_attribute
    major = _check(cuda.cuDeviceGetAttribute(attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, handle))
    minor = _check(cuda.cuDeviceGetAttribute(attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, handle))
    return name, f"{major}.{minor}"


def engine_logits(engine: Path | bytes, pixels: np.ndarray) -> np.ndarray:
    """Run a serialized engine on ``pixels`` (B, 3, S, S) float32; logits (B, C) float32.

    Device memory and the stream come from the CUDA driver API (cuda-python), so this works on
    an install whose torch is the CPU wheel, or without torch.
    """
    trt = import_tensorrt()
    cuda = _cuda()
    _check(cuda.cuInit(0))
    context_handle = _check(cuda.cuDevicePrimaryCtxRetain(_check(cuda.cuDeviceGet(0))))
    _check(cuda.cuCtxSetCurrent(context_handle))
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    plan = engine if isinstance(engine, bytes) else Path(engine).read_bytes()
    compiled = runtime.deserialize_cuda_engine(plan)
    if compiled is None:
        raise RuntimeError("TensorRT could not deserialise the engine")
    context = compiled.create_execution_context()
    inputs = np.ascontiguousarray(pixels, dtype=np.float32)
    context.set_input_shape(PIXELS, tuple(inputs.shape))
    outputs = np.empty(tuple(context.get_tensor_shape(LOGITS)), dtype=np.float32)
    stream = _check(cuda.cuStreamCreate(0))
    d_in = _check(cuda.cuMemAlloc(inputs.nbytes))
    d_out = _check(cuda.cuMemAlloc(outputs.nbytes))
    try:
        _check(cuda.cuMemcpyHtoD(d_in, inputs.ctypes.data, inputs.nbytes))
        context.set_tensor_address(PIXELS, int(d_in))
        context.set_tensor_address(LOGITS, int(d_out))
        if not context.execute_async_v3(int(stream)):
            raise RuntimeError("TensorRT execution failed")
        _check(cuda.cuStreamSynchronize(stream))
        _check(cuda.cuMemcpyDtoH(outputs.ctypes.data, d_out, outputs.nbytes))
    finally:
        cuda.cuMemFree(d_in)
        cuda.cuMemFree(d_out)
        cuda.cuStreamDestroy(stream)
    return outputs


def gate_engine(plan: bytes, gate: GateData, precision: str, *, max_batch: int) -> GateReport:
    """Engine vs the FP32 reference ONNX under ONNX Runtime on the gate images; raises past tolerance."""
    reference = reference_probabilities(gate.reference_onnx, gate.pixels)
    logits = np.concatenate(
        [engine_logits(plan, gate.pixels[i : i + max_batch]) for i in range(0, len(gate.pixels), max_batch)]
    )
    return check_accuracy(reference, sigmoid(logits), precision=precision, labels=gate.labels)


def _shapes(model: onnx.ModelProto, cfg: EngineCfg) -> tuple[tuple[TensorShapes, ...], tuple[TensorShapes, ...]]:
    def item(value_info: Any) -> tuple[int, ...]:
        return tuple(d.dim_value for d in value_info.type.tensor_type.shape.dim[1:])

    (pixels,), (logits,) = model.graph.input, model.graph.output
    x, y = item(pixels), item(logits)
    inputs = (TensorShapes(PIXELS, "fp32", (cfg.min_batch, *x), (cfg.opt_batch, *x), (cfg.max_batch, *x)),)
    outputs = (TensorShapes(LOGITS, "fp32", (cfg.min_batch, *y), (cfg.opt_batch, *y), (cfg.max_batch, *y)),)
    return inputs, outputs


def build_engine(onnx_path: Path, engine_path: Path, cfg: EngineCfg = EngineCfg(), *, gate: GateData) -> EngineSidecar:
    """Build, gate and write ``engine_path`` and its sidecar; ``AccuracyGateError`` keeps nothing."""
    trt = import_tensorrt()
    source = Path(onnx_path).read_bytes()
    model = onnx.load_from_string(source)
    precision = onnx_precision(model)
    plan = build_serialized(network_onnx(model, cfg), cfg)
    report = gate_engine(plan, gate, precision, max_batch=cfg.max_batch)
    meta = {p.key: p.value for p in model.metadata_props}
    gpu_name, capability = gpu_identity()
    inputs, outputs = _shapes(model, cfg)
    sidecar = EngineSidecar(
        tensorrt_version=trt.__version__,
        gpu_name=gpu_name,
        compute_capability=capability,
        precision=precision,
        frontend=FRONTEND,
        onnx_sha256=hashlib.sha256(source).hexdigest(),
        catalog_digest=Catalog.from_json(meta[KEY_CATALOG]).digest() if KEY_CATALOG in meta else "",
        model_name=meta.get(KEY_MODEL_NAME, ""),
        model_version=meta.get(KEY_MODEL_VERSION, ""),
        plugin=cfg.use_plugin,
        inputs=inputs,
        outputs=outputs,
        gate=report.to_dict(),
    )
    write_engine(engine_path, plan, sidecar)
    return sidecar


def write_engine(engine_path: Path, plan: bytes, sidecar: EngineSidecar) -> None:
    """Write the plan and its sidecar, each through a uniquely named temporary file and a rename
    (``engine_cache.atomic_write``), the plan last, so a plan never lacks its sidecar."""
    engine_path = Path(engine_path)
    write_sidecar(engine_path, sidecar)
    atomic_write(engine_path, plan)
