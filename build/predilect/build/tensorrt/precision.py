"""Engine precision lives in the ONNX types: TensorRT builds strongly typed networks.

TensorRT 11 dropped the builder's FP16/INT8 flags: a strongly typed network runs each layer in
the type its ONNX tensors carry. So the precision of an engine is chosen here, on the ONNX:

* ``fp32``: the export as it is;
* ``fp16`` / ``bf16``: ``cast_float`` stores every float initializer and constant in the
  reduced type and keeps the served I/O in FP32 (a Cast after ``PIXELS`` and before
  ``LOGITS``), so the serving contract does not change;
* ``int8`` / ``fp8``: explicit quantisation, ``quantize`` inserts QuantizeLinear/
  DequantizeLinear pairs with ONNX Runtime's static quantiser (symmetric, per-channel weights,
  activations calibrated on preprocessed training images). The predilection-attention head
  stays in floating point (excluded by node name), so the plugin rewrite still finds it.

``onnx_precision`` reads the precision back from a model, for the engine's sidecar.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, version_converter

from predilect.build.tensorrt.onnx_rewrite import reference_function
from predilect.contract import LOGITS, PIXELS

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
_FLOAT_TYPES = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
_BF16_OPSET = 22


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _cast_tensor(tensor: onnx.TensorProto, to: int) -> onnx.TensorProto:
    values = numpy_helper.to_array(tensor).astype(np.float32)
    if to == TensorProto.FLOAT16:
        out = numpy_helper.from_array(values.astype(np.float16), tensor.name)
    else:  # bfloat16: round to nearest even on the upper 16 bits of the float32 pattern
        bits = np.ascontiguousarray(values).view(np.uint32).astype(np.uint64)
        sixteen = np.uint64(16)
        rounded = ((bits + np.uint64(0x7FFF) + ((bits >> sixteen) & np.uint64(1))) >> sixteen).astype(np.uint16)
        out = helper.make_tensor(tensor.name, TensorProto.BFLOAT16, values.shape, rounded.tobytes(), raw=True)
    return out


def cast_float(model: onnx.ModelProto, precision: str) -> onnx.ModelProto:
    """``model`` computing in FP16 or BF16 with FP32 ``PIXELS`` in and ``LOGITS`` out."""
    if precision not in _FLOAT_TYPES:
        raise ValueError(f"cast_float handles fp16 and bf16, got {precision!r}")
    to = _FLOAT_TYPES[precision]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if precision == "bf16" and _opset(out) < _BF16_OPSET:
        # Conv, BatchNormalization, ... accept bfloat16 only from opset 22 on.
        out = version_converter.convert_version(out, _BF16_OPSET)
        # The converter keeps only the standard domains: restore the plugin's domain and function.
        known = {o.domain for o in out.opset_import}
        out.opset_import.extend(o for o in model.opset_import if o.domain not in known)
        if model.functions:  # the rewrite's reference function, re-made for the new opset
            del out.functions[:]
            out.functions.append(reference_function(_BF16_OPSET))
    graph = out.graph
    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            graph.initializer[i].CopyFrom(_cast_tensor(init, to))
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(_cast_tensor(attr.t, to))
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = to
        if node.op_type in ("RandomNormal", "RandomUniform", "EyeLike") and not any(
            a.name == "dtype" for a in node.attribute
        ):
            raise ValueError(f"{node.op_type} without dtype: cannot place it in {precision}")
    low_in, low_out = f"{PIXELS}_{precision}", f"{LOGITS}_{precision}"
    for node in graph.node:
        node.input[:] = [low_in if name == PIXELS else name for name in node.input]
        node.output[:] = [low_out if name == LOGITS else name for name in node.output]
    graph.node.insert(0, helper.make_node("Cast", [PIXELS], [low_in], to=to, name=f"{PIXELS}_to_{precision}"))
    graph.node.append(helper.make_node("Cast", [low_out], [LOGITS], to=TensorProto.FLOAT, name=f"{LOGITS}_to_fp32"))
    del graph.value_info[:]
    out = onnx.shape_inference.infer_shapes(out, strict_mode=True)
    onnx.checker.check_model(out, full_check=True)
    return out


def quantize(
    model: onnx.ModelProto,
    calibration_pixels: np.ndarray,
    precision: str,
    *,
    exclude_nodes: Sequence[str] = (),
) -> onnx.ModelProto:
    """Explicit Q/DQ quantisation (INT8 or FP8 E4M3) calibrated on ``calibration_pixels`` (N, 3, S, S)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if precision not in ("int8", "fp8"):
        raise ValueError(f"quantize handles int8 and fp8, got {precision!r}")
    if len(calibration_pixels) == 0:
        raise ValueError("quantisation needs calibration images")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(
                np.array_split(calibration_pixels.astype(np.float32), max(1, len(calibration_pixels) // 8))
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {PIXELS: batch}

    qtype = QuantType.QInt8 if precision == "int8" else QuantType.QFLOAT8E4M3FN
    with tempfile.TemporaryDirectory(prefix="predilect-quant-") as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / f"{precision}.onnx"
        onnx.save(model, str(source))
        quantize_static(
            str(source),
            str(target),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=qtype,
            weight_type=qtype,
            per_channel=precision == "int8",
            # ONNX Runtime calibrates float8 from the activation distribution only.
            calibrate_method=CalibrationMethod.MinMax if precision == "int8" else CalibrationMethod.Distribution,
            nodes_to_exclude=list(exclude_nodes),
            # TensorRT takes symmetric (zero-point 0) scales only.
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
        return onnx.load(str(target))


def served_onnx(
    model: onnx.ModelProto, precision: str, *, calibration_pixels: np.ndarray | None = None
) -> onnx.ModelProto:
    """The export in ``precision``, as a GPU repository stores it (ONNX Runtime form, FP32 I/O).

    FP32: the export as it is; FP16/BF16: ``cast_float`` of the rewritten model (the head is
    rewritten first: cast, it no longer matches); INT8/FP8: ``quantize`` calibrated on
    ``calibration_pixels``, the head excluded, plugin-free. ``engine.tensorrt_onnx`` then rewrites
    whatever is not yet rewritten, so every precision reaches TensorRT rewritten exactly once.
    """
    from predilect.build.tensorrt.onnx_rewrite import find_attention, rewrite

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return model
    if precision in _FLOAT_TYPES:
        return cast_float(rewrite(model), precision)
    if calibration_pixels is None:
        raise ValueError(f"precision {precision} needs calibration images")
    import onnx_graphsurgeon as gs

    head = [node.name for node in find_attention(gs.import_onnx(model)).nodes]
    return quantize(model, calibration_pixels, precision, exclude_nodes=head)


def onnx_precision(model: onnx.ModelProto) -> str:
    """The precision a strongly typed engine of ``model`` runs in, read from its types."""
    zero_points = {init.name: init.data_type for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2:
            kind = zero_points.get(node.input[2])
            if kind in (TensorProto.INT8, TensorProto.UINT8):
                return "int8"
            if kind in (TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2):
                return "fp8"
    floats = [init.data_type for init in model.graph.initializer if init.data_type in (1, 10, 16)]
    if floats.count(TensorProto.FLOAT16) > floats.count(TensorProto.FLOAT) / 2:
        return "fp16"
    if floats.count(TensorProto.BFLOAT16) > floats.count(TensorProto.FLOAT) / 2:
        return "bf16"
    return "fp32"
