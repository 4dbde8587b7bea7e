"""The ``postprocess`` model: LOGITS, QUALITY (and ATTENTION) -> PROBABILITIES, FINDINGS, REFERRAL (and HEATMAPS).

The sigmoid is numerically stable; the decision follows the served referral rules
(``backends.screening.Screening.decide``).
"""

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
    """Triton adapter of ``Screening.decide`` over the requests of a dynamic batch."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        from predilect.serving.backends import model_parameters, parse_model_config, shift_metrics
        from predilect.serving.backends.screening import Screening

        self._pb = pb_utils
        config = parse_model_config(args)
        params = model_parameters(config)
        self._screening = Screening.from_parameters(params)
        self._attention = any(i["name"] == contract.ATTENTION for i in config.get("input", []))
        self._metrics = shift_metrics.from_parameters(pb_utils, params, quality=False, scores=True)

    def execute(self, requests: list[Any]) -> list[Any]:
        from predilect.serving.backends import shift_metrics
        from predilect.serving.backends.screening import split_rows

        pb = self._pb

        def batch(name: str) -> np.ndarray:
            parts = [pb.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
            return np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]

        logits = batch(contract.LOGITS)
        attention = batch(contract.ATTENTION) if self._attention else None
        quality = batch(contract.QUALITY)
        outputs = self._screening.decide(logits, quality, attention)
        sizes = [len(pb.get_input_tensor_by_name(r, contract.LOGITS).as_numpy()) for r in requests]
        cameras = [c for c, n in zip(shift_metrics.cameras_of(requests), sizes, strict=True) for _ in range(n)]
        gradable = ~(np.asarray(quality)[:, 1:] > 0.5).any(axis=1)
        self._metrics.observe_scores(cameras, outputs[contract.PROBABILITIES], gradable)
        return [
            pb.InferenceResponse(output_tensors=[pb.Tensor(name, value) for name, value in per_request.items()])
            for per_request in split_rows(outputs, sizes)
        ]
