"""The ``preprocess`` model: encoded image bytes -> normalised PIXELS, one image per request.

Runs ``predilect.preprocess.Preprocessor`` (the decoder its served PreprocessCfg names) on all
requests of a dynamic batch at once; a payload it rejects gets its own error response naming the cause, and the other
requests of the batch are answered unchanged.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any, Union

import numpy as np

from predilect import contract
from predilect.preprocess import InvalidImageError, PreprocessCfg, Preprocessor
from predilect.preprocess.config import check_field_angle
from predilect.serving.backends import model_parameters, parse_model_config, shift_metrics
from predilect.serving.backends.screening import Screening


def request_payload(image: np.ndarray) -> np.ndarray | InvalidImageError:
    """The encoded bytes of one request's IMAGE tensor, shaped ``[1, length]``."""
    if image.ndim != 2 or image.shape[0] != 1:
        return InvalidImageError(f"one image per request: IMAGE must be shaped [1, n_bytes], got {list(image.shape)}")
    return image[0]


FieldAngle = Union[float, None, InvalidImageError]


def request_field_angle(parameters_json: str | None) -> FieldAngle:
    """The camera field angle a request names (``contract.REQUEST_FIELD_ANGLE_DEG``, degrees); None without
    one; the request's rejection when the value is not a field angle."""
    if not parameters_json:
        return None
    try:
        parameters = json.loads(parameters_json)
    except json.JSONDecodeError:
        return None
    value = parameters.get(contract.REQUEST_FIELD_ANGLE_DEG) if isinstance(parameters, dict) else None
    if value is None:
        return None
    try:
        return check_field_angle(value)
    except ValueError as e:
        return InvalidImageError(f"request parameter {contract.REQUEST_FIELD_ANGLE_DEG}: {e}")


def field_angles_of(requests: Sequence[Any]) -> list[FieldAngle]:
    """The field angle of each Triton request (``request.parameters()``, a JSON string)."""
    return [request_field_angle(r.parameters()) for r in requests]


def checked_payloads(
    images: Sequence[np.ndarray], angles: Sequence[FieldAngle] | None
) -> tuple[list[np.ndarray | InvalidImageError], list[float | None]]:
    """Per request its payload (``request_payload``) or rejection (a bad IMAGE or field angle), and its angle."""
    angles = list(angles) if angles is not None else [None] * len(images)
    payloads: list[np.ndarray | InvalidImageError] = []
    for image, angle in zip(images, angles, strict=True):
        payloads.append(angle if isinstance(angle, InvalidImageError) else request_payload(image))
    return payloads, [None if isinstance(a, InvalidImageError) else a for a in angles]


Graded = dict[str, np.ndarray]


def preprocess_and_grade(
    preprocessor: Preprocessor,
    screening: Screening,
    images: Sequence[np.ndarray],
    field_angles: Sequence[FieldAngle] | None = None,
) -> list[Graded | InvalidImageError]:
    """Per request, in order: ``{PIXELS [1, 3, S, S], QUALITY [1, 1 + reasons], QUALITY_MEASURES [1, measures],
    FIELD_BOX [1, 4]}``, or its ``InvalidImageError``; ``field_angles``: per request, its camera's
    (``request_field_angle``). The quality of the whole accepted batch is graded at once, on the squares
    at the calibrated size (the packed tensors, or the quality squares cut beside them)."""
    payloads, angles = checked_payloads(images, field_angles)
    good = [i for i, p in enumerate(payloads) if not isinstance(p, InvalidImageError)]
    results: list[Graded | InvalidImageError] = [
        p if isinstance(p, InvalidImageError) else InvalidImageError("not preprocessed") for p in payloads
    ]
    done = preprocessor.run(
        [payloads[i] for i in good],  # type: ignore[misc]
        quality=True,
        field_angles_deg=[angles[i] for i in good],
    )
    pixels = done.pixels
    accepted = done.accepted
    graded = screening.quality_of(done)
    for i, error in zip(good, done.errors, strict=True):
        if error is not None:
            results[i] = error
    for row, j in enumerate(accepted):
        results[good[j]] = {
            contract.PIXELS: pixels[row : row + 1],
            contract.QUALITY: np.ascontiguousarray(graded.quality[row : row + 1], dtype=np.float32),
            contract.QUALITY_MEASURES_TENSOR: np.ascontiguousarray(graded.measures[row : row + 1], dtype=np.float32),
            contract.FIELD_BOX: np.asarray([done.boxes[j]], dtype=np.float32),
        }
    return results


def rejection_response(pb: Any, error: InvalidImageError) -> Any:
    """The INVALID_ARGUMENT response of one refused request: its kind (``contract.ERROR_IMAGE_REJECTED``) and
    the cause, no traceback."""
    message = contract.error_message(contract.ERROR_IMAGE_REJECTED, str(error))
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message, pb.TritonError.INVALID_ARG))


def warm_up(preprocessor: Preprocessor) -> None:
    """Build the pipeline (and its decode threads) now rather than on the first request."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (preprocessor.cfg.min_side_px, preprocessor.cfg.min_side_px)).save(buffer, format="PNG")
    preprocessor.run([buffer.getvalue()])  # an all-black frame: rejected, but the pipeline is built


class TritonPythonModel:
    """Triton adapter of ``preprocess_and_grade``."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils
        config = parse_model_config(args)
        params = model_parameters(config)
        self._screening = Screening.from_parameters(params)
        self._preprocessor = Preprocessor(
            PreprocessCfg.from_json(params[contract.KEY_PREPROCESS]),
            max_batch_size=max(1, int(config.get("max_batch_size", 1))),
            num_threads=int(params[contract.KEY_DECODE_THREADS]),
            device_id=None,
        )
        warm_up(self._preprocessor)
        self._metrics = shift_metrics.from_parameters(pb_utils, params, quality=True, scores=False)

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self._pb
        images = [pb.get_input_tensor_by_name(r, contract.IMAGE).as_numpy() for r in requests]
        responses = []
        graded: list[tuple[str, Graded]] = []
        for camera, out in zip(
            shift_metrics.cameras_of(requests),
            preprocess_and_grade(self._preprocessor, self._screening, images, field_angles_of(requests)),
            strict=True,
        ):
            if isinstance(out, InvalidImageError):
                responses.append(rejection_response(pb, out))
            else:
                graded.append((camera, out))
                tensors = [pb.Tensor(name, value) for name, value in out.items()]
                responses.append(pb.InferenceResponse(output_tensors=tensors))
        if graded:
            self._metrics.observe_quality(
                [camera for camera, _ in graded],
                np.concatenate([g[contract.QUALITY] for _, g in graded]),
                np.concatenate([g[contract.QUALITY_MEASURES_TENSOR] for _, g in graded]),
            )
        return responses
