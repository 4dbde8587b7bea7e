"""Baseline (d): the same ONNX model and the same ``Preprocessor`` served by BentoML.

What a team choosing a serving stack would compare Triton with: BentoML's adaptive batching
in front of exactly the code the ``fused_screen`` model runs (the served ``Preprocessor``
and the ``OnnxClassifier``), so the benchmark separates what the decoder buys (shared by
both) from what Triton's batching and scheduling buy. ``POST /screen`` takes one image as a
multipart file field ``images`` (a batch of one; BentoML merges concurrent requests into one
batch); the answer is a list with one ``{disease id: probability}`` per image, or HTTP 400
naming why the image was refused.

Started by ``predilect.benchmarks.stacks.bento_server``: ``bentoml serve`` imports this module
with ``stacks.BENTO_ONNX_ENV`` naming the exported model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
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
        from predilect.serving.repository import read_served_model

        onnx_path = Path(os.environ[BENTO_ONNX_ENV])
        threads = int(os.environ.get(BENTO_THREADS_ENV, "2"))
        served = read_served_model(onnx_path)
        self.ids = served.catalog.ids
        self.version = served.model_version
        self.preprocessor = Preprocessor(served.preprocess, max_batch_size=MAX_BATCH, num_threads=threads)
        self.classifier = OnnxClassifier(onnx_path, intra_op_threads=threads)

    @bentoml.api(route="/healthz")
    def healthz(self) -> dict[str, str]:
        return {"status": "ok", "model_version": self.version}

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=10_000)
    def screen(self, images: list[Path]) -> list[dict[str, float] | str]:
        from predilect.serving.backends.postprocess import stable_sigmoid

        pixels, errors = self.preprocessor.run_packed([p.read_bytes() for p in images])
        rows: Iterator[np.ndarray] = iter(stable_sigmoid(self.classifier.run([pixels])[0]) if len(pixels) else [])
        return [
            f"rejected: {error}" if error is not None else dict(zip(self.ids, map(float, next(rows)), strict=True))
            for error in errors
        ]
