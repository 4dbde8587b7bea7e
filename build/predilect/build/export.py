"""`predilect export`: checkpoint -> ONNX (dynamic batch) + a parity check under ONNX Runtime.

The ONNX file is the serving artefact: besides the graph it carries, as metadata, the
catalog, the preprocessing spec, the model name and the version, so that the model
repository assembled from it needs nothing else. Its outputs are ``LOGITS`` and, for a model
with ``forward_with_attention``, ``ATTENTION`` [batch, C, g, g] (each disease's predilection
attention over the token grid: the served heatmaps; an intermediate of the logits, so free).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from predilect import contract
from predilect.catalog import Catalog
from predilect.contract import ATTENTION, LOGITS, PIXELS
from predilect.kernels.attention import reference_attention
from predilect.models.checkpoint import CheckpointMeta, load_checkpoint
from predilect.preprocess import PreprocessCfg

OPSET = 17


@dataclass(frozen=True)
class ParityReport:
    images: int
    max_abs_prob_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_prob_diff <= self.tolerance


def onnx_metadata(meta: CheckpointMeta) -> dict[str, str]:
    """The metadata_props every exported model carries (the serving contract)."""
    strings = meta.to_strings()
    return {k: strings[k] for k in contract.SERVED_KEYS}


class _WithAttention(torch.nn.Module):
    """The exported graph: ``forward_with_attention`` as ``forward`` (logits, attention)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_with_attention(pixels)  # type: ignore[operator]


def export_onnx(checkpoint: Path, out: Path, *, attention: bool = True) -> CheckpointMeta:
    """Export ``checkpoint`` to ``out`` with a dynamic batch axis; returns its metadata.

    ``attention``: also export the ``ATTENTION`` output (when the model has ``forward_with_attention``).
    """
    import onnx

    model, meta = load_checkpoint(checkpoint)
    graph_module: torch.nn.Module = model
    outputs = [LOGITS]
    if attention and hasattr(model, "forward_with_attention"):
        graph_module, outputs = _WithAttention(model), [LOGITS, ATTENTION]
    example = torch.randn(2, *meta.preprocess.input_shape)
    out.parent.mkdir(parents=True, exist_ok=True)
    with reference_attention(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)  # the TorchScript exporter's notice
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)  # D is a constant of the model
        torch.onnx.export(
            graph_module,
            (example,),
            str(out),
            dynamo=False,
            opset_version=OPSET,
            input_names=[PIXELS],
            output_names=outputs,
            dynamic_axes={PIXELS: {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
        )
    graph = onnx.load(str(out))
    for key, value in onnx_metadata(meta).items():
        graph.metadata_props.add(key=key, value=value)
    graph.producer_name = "predilect"
    onnx.checker.check_model(graph)
    onnx.save(graph, str(out))
    return meta


def read_onnx_meta(onnx_path: Path) -> tuple[Catalog, PreprocessCfg, str, str]:
    """(catalog, preprocessing, model name, model version) from an exported model's metadata."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    return (
        Catalog.from_json(meta[contract.KEY_CATALOG]),
        PreprocessCfg.from_json(meta[contract.KEY_PREPROCESS]),
        meta[contract.KEY_MODEL_NAME],
        meta[contract.KEY_MODEL_VERSION],
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def onnx_probabilities(onnx_path: Path, pixels: np.ndarray, *, threads: int = 2, batch_size: int = 32) -> np.ndarray:
    """Probabilities ``(N, C)`` from the ONNX graph under ONNX Runtime (CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    logits = [session.run([LOGITS], {PIXELS: pixels[i : i + batch_size]})[0] for i in range(0, len(pixels), batch_size)]
    return _sigmoid(np.concatenate(logits).astype(np.float64)).astype(np.float32)


def check_parity(checkpoint: Path, onnx_path: Path, pixels: np.ndarray, *, tolerance: float = 1e-4) -> ParityReport:
    """Max |probability difference| between PyTorch and ONNX Runtime on ``pixels``."""
    from predilect.models.inference import predict_proba

    model, _ = load_checkpoint(checkpoint)
    reference = predict_proba(model, pixels)
    exported = onnx_probabilities(onnx_path, pixels)
    diff = float(np.max(np.abs(reference - exported))) if len(pixels) else 0.0
    return ParityReport(images=len(pixels), max_abs_prob_diff=diff, tolerance=tolerance)
