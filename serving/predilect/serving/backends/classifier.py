"""The ``classifier`` model: PIXELS -> LOGITS (and ATTENTION, when exported) with ONNX Runtime on CPU.

All requests of a dynamic batch go through one ONNX Runtime run: their tensors are
concatenated along the batch axis and the outputs split back per request. ATTENTION is an
intermediate of the logits (the predilection attention), so fetching it costs a copy, not a pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from predilect import contract
from predilect.serving.backends import model_parameters, parse_model_config


class OnnxClassifier:
    """An ONNX Runtime CPU session over the exported model."""

    def __init__(self, model_path: Path, *, intra_op_threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1  # Triton instances provide the request-level parallelism
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
        names = {o.name for o in self._session.get_outputs()}
        self.outputs = tuple(n for n in (contract.LOGITS, contract.ATTENTION) if n in names)
        """The served outputs this model has: LOGITS, and ATTENTION when it was exported with it."""

    def run_all(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of ``self.outputs`` for one ``[n, 3, S, S]`` batch, by name."""
        values = self._session.run(list(self.outputs), {contract.PIXELS: np.ascontiguousarray(pixels, np.float32)})
        return {name: np.asarray(v, dtype=np.float32) for name, v in zip(self.outputs, values, strict=True)}

    def run(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Logits for each ``[n_i, 3, S, S]`` batch, from one run over their concatenation."""
        if not batches:
            return []
        pixels = np.concatenate(batches, axis=0) if len(batches) > 1 else batches[0]
        (logits,) = self._session.run([contract.LOGITS], {contract.PIXELS: np.ascontiguousarray(pixels, np.float32)})
        bounds = np.cumsum([len(b) for b in batches])[:-1]
        return [np.ascontiguousarray(part, dtype=np.float32) for part in np.split(logits, bounds)]


class TritonPythonModel:
    """Triton adapter of ``OnnxClassifier``."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils
        params = model_parameters(parse_model_config(args))
        model_path = Path(args["model_repository"]) / args["model_version"] / contract.ONNX_FILENAME
        self._classifier = OnnxClassifier(model_path, intra_op_threads=int(params[contract.KEY_ORT_THREADS]))

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self._pb
        pixels = [pb.get_input_tensor_by_name(r, contract.PIXELS).as_numpy() for r in requests]
        batch = np.concatenate(pixels, axis=0) if len(pixels) > 1 else pixels[0]
        outputs = self._classifier.run_all(batch)
        bounds = np.cumsum([len(p) for p in pixels])[:-1]
        parts = {name: np.split(value, bounds) for name, value in outputs.items()}
        return [
            pb.InferenceResponse(
                output_tensors=[pb.Tensor(name, np.ascontiguousarray(parts[name][i])) for name in outputs]
            )
            for i in range(len(requests))
        ]
