"""The ``fused_screen`` model (CPU profile): IMAGE -> the screening outputs in one Python-backend process.

Outputs (``topology.screening_outputs``): PROBABILITIES, QUALITY (gradability of the same crop,
at the calibrated size: ``PreprocessCfg.quality_size``), FINDINGS and REFERRAL (the served
referral rules), and HEATMAPS when the model exports its ATTENTION (``backends.screening.Screening``).

Preprocessing writes the accepted images of a dynamic batch into one float32 array that ONNX
Runtime reads in place, and the sigmoid runs on its logits: the 600 KB-per-image tensor never
crosses a process boundary, and one stub process per instance replaces three. A payload the
``Preprocessor`` rejects gets its own INVALID_ARGUMENT response; the rest of the batch is
answered unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from predilect import contract
from predilect.preprocess import FieldBox, InvalidImageError, PreprocessCfg, Preprocessor
from predilect.serving.backends import model_parameters, parse_model_config, shift_metrics
from predilect.serving.backends.classifier import OnnxClassifier
from predilect.serving.backends.postprocess import stable_sigmoid
from predilect.serving.backends.preprocess import (
    FieldAngle,
    checked_payloads,
    field_angles_of,
    rejection_response,
    warm_up,
)
from predilect.serving.backends.screening import Screening

Outputs = dict[str, np.ndarray]
Answer = Union[Outputs, InvalidImageError]


class FusedScreen:
    """Preprocess + grade + classify + decide for a batch of requests, one answer per request.

    Without ``screening`` it answers PROBABILITIES only (the layout before gradability and rules).
    """

    def __init__(
        self, preprocessor: Preprocessor, classifier: OnnxClassifier, screening: Screening | None = None
    ) -> None:
        self.preprocessor = preprocessor
        self.classifier = classifier
        self.screening = screening

    def outputs(
        self,
        pixels: np.ndarray,
        boxes: Sequence[FieldBox],
        planes: np.ndarray | None = None,
        frames: Sequence[tuple[float, float]] | None = None,
    ) -> Outputs:
        """Batch-level outputs by tensor name for the accepted ``pixels`` (``topology.screening_outputs`` lists them);
        ``planes``: their quality squares when preprocessing cuts them apart (``Preprocessed.quality_planes``);
        ``frames``: the decoded photographs' (width, height), where each frame lies on the graded square."""
        if self.screening is None:
            (logits,) = self.classifier.run([pixels])
            return {contract.PROBABILITIES: stable_sigmoid(logits)}
        model = self.classifier.run_all(pixels)
        graded = self.screening.quality(pixels, planes, boxes=boxes, frames=frames)
        outputs = self.screening.decide(model[contract.LOGITS], graded.quality, model.get(contract.ATTENTION))
        return {
            **outputs,
            contract.QUALITY: graded.quality,
            contract.QUALITY_MEASURES_TENSOR: graded.measures,
            contract.FIELD_BOX: np.asarray(boxes, dtype=np.float32),
        }

    def run(self, images: Sequence[np.ndarray], field_angles: Sequence[FieldAngle] | None = None) -> list[Answer]:
        """One ``{name: [1, ...] array}`` or one ``InvalidImageError`` per request's IMAGE tensor, in order;
        ``field_angles``: per request, its camera's (``preprocess.request_field_angle``)."""
        payloads, angles = checked_payloads(images, field_angles)
        answers: list[Answer | None] = [p if isinstance(p, InvalidImageError) else None for p in payloads]
        good = [i for i, p in enumerate(payloads) if not isinstance(p, InvalidImageError)]
        payloads_ok = [p for p in payloads if not isinstance(p, InvalidImageError)]
        done = self.preprocessor.run(
            payloads_ok, quality=self.screening is not None, field_angles_deg=[angles[i] for i in good]
        )
        for i, error in zip(good, done.errors, strict=True):
            if error is not None:
                answers[i] = error
        if done.accepted:
            boxes = [box for box in done.boxes if box is not None]
            frames = [frame for frame in done.frames if frame is not None]
            batch = self.outputs(done.pixels, boxes, done.quality_planes, frames)
            for row, j in enumerate(done.accepted):
                answers[good[j]] = {name: np.ascontiguousarray(value[row : row + 1]) for name, value in batch.items()}
        return answers  # type: ignore[return-value]


class TritonPythonModel:
    """Triton adapter of ``FusedScreen``."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils
        config = parse_model_config(args)
        params = model_parameters(config)
        preprocessor = Preprocessor(
            PreprocessCfg.from_json(params[contract.KEY_PREPROCESS]),
            max_batch_size=max(1, int(config.get("max_batch_size", 1))),
            num_threads=int(params[contract.KEY_DECODE_THREADS]),
            device_id=None,
        )
        warm_up(preprocessor)
        model_path = Path(args["model_repository"]) / args["model_version"] / contract.ONNX_FILENAME
        classifier = OnnxClassifier(model_path, intra_op_threads=int(params[contract.KEY_ORT_THREADS]))
        self._screen = FusedScreen(preprocessor, classifier, Screening.from_parameters(params))
        self._metrics = shift_metrics.from_parameters(pb_utils, params, quality=True, scores=True)

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self._pb
        images = [pb.get_input_tensor_by_name(r, contract.IMAGE).as_numpy() for r in requests]
        responses = []
        answers = self._screen.run(images, field_angles_of(requests))
        for answer in answers:
            if isinstance(answer, InvalidImageError):
                responses.append(rejection_response(pb, answer))
            else:
                responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor(k, v) for k, v in answer.items()]))
        shift_metrics.observe_answers(self._metrics, shift_metrics.cameras_of(requests), answers)
        return responses
