"""Served ONNX -> TensorRT engine with the fused plugin.

The ONNX is rewritten in memory (``onnx_rewrite.rewrite`` + ``for_tensorrt``), the plugin is
registered (``plugin.register_plugin``), and TensorRT's ONNX parser maps the
``PredilectionAttention`` node to the plugin's AOT kernel. Needs ``tensorrt`` and a GPU;
without them every entry point raises ``TensorRTUnavailableError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from predilect.contract import LOGITS, PIXELS

from .onnx_rewrite import for_tensorrt, rewrite
from .plugin import TensorRTUnavailableError, register_plugin


def _tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailableError(
            "TensorRT is not installed: building or running an engine needs the "
            "`tensorrt` package (10.8+) on a CUDA host"
        ) from exc
    return trt


@dataclass(frozen=True)
class EngineCfg:
    """Engine-build options: the dynamic-batch profile, precision and workspace."""

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 64
    fp16: bool = False
    workspace_gib: float = 2.0
    use_plugin: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                f"need 1 <= min_batch <= opt_batch <= max_batch, got "
                f"{self.min_batch}, {self.opt_batch}, {self.max_batch}"
            )


def tensorrt_onnx(model: onnx.ModelProto, *, use_plugin: bool = True) -> onnx.ModelProto:
    """The ONNX TensorRT should parse: the plugin form, or the model unchanged."""
    return for_tensorrt(rewrite(model)) if use_plugin else model


def build_engine(onnx_path: Path, engine_path: Path, cfg: EngineCfg = EngineCfg()) -> Path:
    """Build and serialise an engine for ``onnx_path`` (the served model) to ``engine_path``."""
    trt = _tensorrt()
    if cfg.use_plugin:
        register_plugin()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    model = tensorrt_onnx(onnx.load(str(onnx_path)), use_plugin=cfg.use_plugin)
    if not parser.parse(model.SerializeToString()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_gib * (1 << 30)))
    if cfg.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    pixels = network.get_input(0)
    item_shape = tuple(pixels.shape)[1:]
    profile = builder.create_optimization_profile()
    profile.set_shape(
        pixels.name, (cfg.min_batch, *item_shape), (cfg.opt_batch, *item_shape), (cfg.max_batch, *item_shape)
    )
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path} (see the TensorRT log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    return engine_path


def engine_logits(engine_path: Path, pixels: np.ndarray) -> np.ndarray:
    """Run a serialised engine on ``pixels`` (B, 3, S, S) float32; returns logits (B, C)."""
    trt = _tensorrt()
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise RuntimeError(f"TensorRT could not deserialise {engine_path}")
    context = engine.create_execution_context()
    inputs = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).cuda()
    context.set_input_shape(PIXELS, tuple(inputs.shape))
    outputs = torch.empty(tuple(context.get_tensor_shape(LOGITS)), dtype=torch.float32, device="cuda")
    context.set_tensor_address(PIXELS, inputs.data_ptr())
    context.set_tensor_address(LOGITS, outputs.data_ptr())
    stream = torch.cuda.current_stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise RuntimeError("TensorRT execution failed")
    stream.synchronize()
    return outputs.cpu().numpy()
