"""The ``postprocess`` model of the GPU profile: the screening results, per request.

Inputs: LOGITS (TensorRT), FOV_EXTENT and FRAME_EXTENT (measured on the host by
``validate_image``) and, from the DALI step, the square graded: PIXELS, or QUALITY_SQUARE when the
model input's side is not the quality calibration's (then PIXELS is not sent here). The DALI
batch cannot fail a single request; this step rejects a request whose image holds no fundus field
of view (the CPU profile's rule, ``predilect.preprocess.fov_error``) with its own error, and
answers the others with what the CPU profile answers: QUALITY from ``Screening.quality`` on the
square at the calibrated size, PROBABILITIES,
FINDINGS and REFERRAL from ``Screening.decide`` (the served referral rules), and FIELD_BOX
placed by ``predilect.preprocess.field_box_in_frame``. No HEATMAPS: the engine returns logits only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from predilect import contract
from predilect.preprocess import InvalidImageError, PreprocessCfg, field_box_in_frame, fov_error
from predilect.serving.backends import model_parameters, parse_model_config, shift_metrics
from predilect.serving.backends.preprocess import rejection_response
from predilect.serving.backends.screening import Outputs, Screening, split_rows

INPUTS = (contract.LOGITS, contract.FOV_EXTENT, contract.FRAME_EXTENT)
"""The tensors ``screen_requests`` reads from each request, besides the graded square (``inputs_of``)."""


def graded_square(cfg: PreprocessCfg) -> str:
    """The tensor graded for quality: QUALITY_SQUARE where the model input has another side, else PIXELS."""
    return contract.QUALITY_SQUARE if cfg.separate_quality_square else contract.PIXELS


def inputs_of(screening: Screening) -> tuple[str, ...]:
    """The tensors read from each request of the model that serves ``screening``'s preprocessing."""
    return (*INPUTS, graded_square(screening.preprocess))


def _rejection(screening: Screening, extents: np.ndarray) -> InvalidImageError | None:
    """The first row's refusal when a request's image (any of its rows) has no field of view."""
    for fov_w, fov_h in np.asarray(extents, np.float32).reshape(-1, 2).tolist():
        error = fov_error(screening.preprocess, fov_w, fov_h)
        if error is not None:
            return error
    return None


def field_boxes(extents: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """FIELD_BOX rows ``(N, 4)`` float32 from FOV_EXTENT and FRAME_EXTENT rows, as the CPU profile places them."""
    rows = zip(np.asarray(frames).reshape(-1, 2).tolist(), np.asarray(extents).reshape(-1, 2).tolist(), strict=True)
    boxes = [field_box_in_frame(width, height, fov_w, fov_h) for (width, height), (fov_w, fov_h) in rows]
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def screen_requests(
    screening: Screening, requests: Sequence[Mapping[str, np.ndarray]]
) -> list[Outputs | InvalidImageError]:
    """Per request (each a mapping of ``INPUTS`` to its rows): the screening outputs by tensor name,
    or the rejection of an image without a field of view. The accepted requests are graded and
    decided as one batch."""
    results: list[Outputs | InvalidImageError] = []
    accepted: list[Mapping[str, np.ndarray]] = []
    for request in requests:
        error = _rejection(screening, request[contract.FOV_EXTENT])
        results.append(error if error is not None else {})
        if error is None:
            accepted.append(request)
    if not accepted:
        return results

    def batch(name: str) -> np.ndarray:
        return np.concatenate([np.asarray(r[name]) for r in accepted], axis=0)

    boxes = field_boxes(batch(contract.FOV_EXTENT), batch(contract.FRAME_EXTENT))
    frames = np.asarray(batch(contract.FRAME_EXTENT), dtype=np.float64).reshape(-1, 2)
    if screening.preprocess.separate_quality_square:
        graded = screening.quality(
            np.empty((0,), np.float32), batch(contract.QUALITY_SQUARE), boxes=boxes, frames=frames
        )
    else:
        graded = screening.quality(batch(contract.PIXELS), boxes=boxes, frames=frames)
    outputs = screening.decide(batch(contract.LOGITS), graded.quality)
    outputs[contract.QUALITY] = np.ascontiguousarray(graded.quality, dtype=np.float32)
    outputs[contract.QUALITY_MEASURES_TENSOR] = np.ascontiguousarray(graded.measures, dtype=np.float32)
    outputs[contract.FIELD_BOX] = boxes
    per_request = iter(split_rows(outputs, [len(r[contract.LOGITS]) for r in accepted]))
    return [result if isinstance(result, InvalidImageError) else next(per_request) for result in results]


class TritonPythonModel:
    """Triton adapter of ``screen_requests``."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils
        params = model_parameters(parse_model_config(args))
        self._screening = Screening.from_parameters(params)
        self._inputs = inputs_of(self._screening)
        self._metrics = shift_metrics.from_parameters(pb_utils, params, quality=True, scores=True)

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self._pb
        inputs = [{name: pb.get_input_tensor_by_name(r, name).as_numpy() for name in self._inputs} for r in requests]
        responses = []
        answers = screen_requests(self._screening, inputs)
        for out in answers:
            if isinstance(out, InvalidImageError):
                responses.append(rejection_response(pb, out))
            else:
                responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor(n, v) for n, v in out.items()]))
        shift_metrics.observe_answers(self._metrics, shift_metrics.cameras_of(requests), answers)
        return responses
