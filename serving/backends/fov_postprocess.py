"""The ``postprocess`` model of the GPU profile: LOGITS + FOV_EXTENT -> PROBABILITIES, per request.

On the GPU profile the field of view is measured inside the DALI pipeline, which cannot fail a
single request; this step rejects a request whose image holds no fundus field of view (the CPU
profile's rule, ``predilect.preprocess.fov_error``) with its own error and answers the others
with the same sigmoid as the CPU profile's postprocess.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from predilect import contract
from predilect.contract import REJECTED_PREFIX
from predilect.preprocess import InvalidImageError, PreprocessCfg, fov_error
from predilect.serving.backends import model_parameters, parse_model_config
from predilect.serving.backends.postprocess import stable_sigmoid


def screen_requests(
    logits: Sequence[np.ndarray], extents: Sequence[np.ndarray], cfg: PreprocessCfg
) -> list[np.ndarray | InvalidImageError]:
    """Per request: probabilities ``[1, C]``, or the rejection of an image without a field of view."""
    results: list[np.ndarray | InvalidImageError] = []
    for request_logits, extent in zip(logits, extents, strict=True):
        fov_w, fov_h = (float(v) for v in np.asarray(extent, np.float32).reshape(-1)[:2])
        error = fov_error(cfg, fov_w, fov_h)
        results.append(error if error is not None else stable_sigmoid(request_logits))
    return results


class TritonPythonModel:
    """Triton adapter of ``screen_requests``."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils
        params = model_parameters(parse_model_config(args))
        self._cfg = PreprocessCfg.from_json(params[contract.KEY_PREPROCESS])

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self._pb
        logits = [pb.get_input_tensor_by_name(r, contract.LOGITS).as_numpy() for r in requests]
        extents = [pb.get_input_tensor_by_name(r, contract.FOV_EXTENT).as_numpy() for r in requests]
        responses = []
        for out in screen_requests(logits, extents, self._cfg):
            if isinstance(out, InvalidImageError):
                error = pb.TritonError(f"{REJECTED_PREFIX}{out}", pb.TritonError.INVALID_ARG)
                responses.append(pb.InferenceResponse(output_tensors=[], error=error))
            else:
                responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor(contract.PROBABILITIES, out)]))
        return responses
