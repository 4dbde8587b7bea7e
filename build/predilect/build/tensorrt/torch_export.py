"""The fundus model as a ``torch.export`` program for Torch-TensorRT: dynamic batch, one custom-op node.

What ``torch_engine`` compiles, and everything of the Torch-TensorRT route that runs on a CPU:

* the checkpoint's ``FundusClassifier`` in the engine's precision (FP32, or FP16 / BF16 weights
  and activations behind FP32 ``PIXELS`` in and ``LOGITS`` out, as the ONNX route's
  ``precision.cast_float``), so that Torch-TensorRT's strongly typed network takes its
  precision from the program's types, as TensorRT's parser does from the ONNX;
* traced under ``predilect.kernels.attention.custom_op_attention`` so the head is exactly one
  ``predilect::predilection_attention`` node (the Torch-TensorRT plugin's anchor), even on a CPU;
* one dynamic batch dimension with the serving profile's range (1 .. max_batch).

``export_fundus`` checks the op count and raises ``ExportError`` rather than hand a program
without the op (e.g. a head past the kernel's limits, which falls back to the reference ops) to
the compiler. A program saves and loads with ``torch.export.save`` / ``load`` once this module
(which registers the op) is imported.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from predilect.build.tensorrt.sidecar import TORCH_PRECISIONS
from predilect.errors import UserError
from predilect.kernels import OP_NAME
from predilect.kernels.attention import custom_op_attention
from predilect.models.classifier import FundusClassifier

TORCH_DTYPES = dict(zip(TORCH_PRECISIONS, (torch.float32, torch.float16, torch.bfloat16), strict=True))
"""The dtypes of the precisions the Torch-TensorRT route builds."""


class ExportError(UserError, ValueError):
    """The model cannot be exported in the form the Torch-TensorRT route needs."""


class ServedPrecision(nn.Module):
    """``model`` in ``dtype`` behind FP32 input and output: the served contract is FP32 either way."""

    def __init__(self, model: FundusClassifier, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).to(dtype)  # the caller's model stays as it was
        self.dtype = dtype

    def forward(self, pixels: Tensor) -> Tensor:
        return self.model(pixels.to(self.dtype)).to(torch.float32)


@dataclass(frozen=True)
class FundusProgram:
    """The exported program and what it was exported for."""

    program: torch.export.ExportedProgram
    precision: str
    max_batch: int
    input_shape: tuple[int, ...]  # one item: (3, S, S)


def served_module(model: FundusClassifier, precision: str) -> nn.Module:
    """``model`` (eval) in ``precision`` with FP32 I/O; ExportError for a precision this route does not build."""
    if precision not in TORCH_DTYPES:
        raise ExportError(
            f"the torch frontend builds {', '.join(TORCH_DTYPES)} engines, not {precision!r}: int8 / fp8 need "
            "explicit Q/DQ, which the onnx frontend provides (assemble --precision ... --calibration-manifest)"
        )
    model = model.eval()
    return model if precision == "fp32" else ServedPrecision(model, TORCH_DTYPES[precision]).eval()


def op_nodes(program: torch.export.ExportedProgram) -> list[torch.fx.Node]:
    """The ``predilect::predilection_attention`` call nodes of ``program``'s graph."""
    target = torch.ops.predilect.predilection_attention.default
    return [n for n in program.graph.nodes if n.op == "call_function" and n.target is target]


def export_fundus(
    model: FundusClassifier, *, max_batch: int, precision: str = "fp32", custom_op: bool = True
) -> FundusProgram:
    """``torch.export`` of ``model`` with batch in ``1..max_batch`` and the head as one custom-op node.

    ``custom_op=False`` exports the reference ops instead (no plugin; for comparison), on the
    device the model is on.
    """
    if max_batch < 1:
        raise ExportError(f"max_batch must be >= 1, got {max_batch}")
    module = served_module(model, precision)
    shape = (3, model.cfg.image_size, model.cfg.image_size)
    device = next(model.parameters()).device
    # An example batch of 2: a batch of 1 would be specialised away by the tracer.
    example = torch.randn(2, *shape, device=device)
    # The program's range is at least 1..2 (a Dim needs min < max); the engine's profile is 1..max_batch.
    batch = torch.export.Dim("batch", min=1, max=max(max_batch, 2))
    routing = custom_op_attention() if custom_op else contextlib.nullcontext()
    with torch.no_grad(), routing:
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},), strict=False)
    # The op also returns the (empty) attention map; drop the unused getitem so the graph's
    # only consumer of the op is the logits.
    program.graph_module.graph.eliminate_dead_code()
    program.graph_module.recompile()
    found = len(op_nodes(program))
    if found != int(custom_op):
        raise ExportError(
            f"expected {int(custom_op)} {OP_NAME} node(s) in the exported graph, found {found}: the head is past the "
            "fused kernel's limits (N, D <= 1024, C*K <= 512) or the model no longer calls it"
        )
    return FundusProgram(program=program, precision=precision, max_batch=max_batch, input_shape=shape)
