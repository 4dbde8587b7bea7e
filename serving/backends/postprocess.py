"""The ``postprocess`` model: LOGITS -> PROBABILITIES with a numerically stable sigmoid."""

from __future__ import annotations

from typing import Any

import numpy as np

from predilect import contract


def stable_sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise float32 sigmoid that neither overflows nor loses precision for large |x|."""
    x = np.asarray(logits, dtype=np.float32)
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32, copy=False)


class TritonPythonModel:
    """Triton adapter of ``stable_sigmoid``."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self._pb
        return [
            pb.InferenceResponse(
                output_tensors=[
                    pb.Tensor(
                        contract.PROBABILITIES,
                        stable_sigmoid(pb.get_input_tensor_by_name(r, contract.LOGITS).as_numpy()),
                    )
                ]
            )
            for r in requests
        ]
