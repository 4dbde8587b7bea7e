"""Baseline (d): the same ONNX model and the same ``Preprocessor`` served by BentoML.

What a team choosing a serving stack would compare Triton with: BentoML's adaptive batching
in front of exactly the code the ``fused_screen`` model runs (``FusedScreen``: the served
``Preprocessor``, the gradability step, the ``OnnxClassifier`` and the referral decision), so
the benchmark separates what the decoder buys (shared by both) from what Triton's batching and
scheduling buy. ``POST /screen`` takes one image as a
multipart file field ``images`` (a batch of one; BentoML merges concurrent requests into one
batch); the answer is a list with one ``{disease id: probability}`` per image, or HTTP 400
naming why the image was refused.

Started by ``predilect.benchmarks.stacks.bento_server``: ``bentoml serve`` imports this module
with ``stacks.BENTO_ONNX_ENV`` naming the exported model.
"""

from __future__ import annotations

import os
from pathlib import Path

import bentoml
import numpy as np

from predilect.benchmarks.stacks import BENTO_ONNX_ENV, BENTO_THREADS_ENV

MAX_BATCH = 16


@bentoml.service(workers=1, traffic={"timeout": 120})
class Screening:
    """One worker process (like one Triton instance pair), decode threads and ONNX Runtime threads from the env."""

    def __init__(self) -> None:
        from predilect.preprocess import Preprocessor
        from predilect.serving.backends.classifier import OnnxClassifier
        from predilect.serving.backends.fused import FusedScreen
        from predilect.serving.backends.screening import Screening as Rules
        from predilect.serving.repository import read_served_model

        onnx_path = Path(os.environ[BENTO_ONNX_ENV])
        threads = int(os.environ.get(BENTO_THREADS_ENV, "2"))
        served = read_served_model(onnx_path)
        self.ids = served.catalog.ids
        self.version = served.model_version
        self.fused = FusedScreen(
            Preprocessor(served.preprocess, max_batch_size=MAX_BATCH, num_threads=threads),
            OnnxClassifier(onnx_path, intra_op_threads=threads),
            Rules(served.rules, served.preprocess),
        )

    @bentoml.api(route="/healthz")
    def healthz(self) -> dict[str, str]:
        return {"status": "ok", "model_version": self.version}

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=10_000)
    def screen(self, images: list[Path]) -> list[dict[str, float] | str]:
        from predilect import contract
        from predilect.preprocess import InvalidImageError

        answers = self.fused.run([np.frombuffer(p.read_bytes(), np.uint8)[np.newaxis] for p in images])
        return [
            f"rejected: {answer}"
            if isinstance(answer, InvalidImageError)
            else dict(zip(self.ids, map(float, answer[contract.PROBABILITIES][0]), strict=True))
            for answer in answers
        ]
