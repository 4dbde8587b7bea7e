"""Baseline (a): the in-process upper bound, decode + preprocess + ONNX Runtime, no server.

Runs the served model's own ``Preprocessor`` and the ``classifier`` step's ONNX Runtime
session back to back on batches, in this process, for a fixed time.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


@dataclass(frozen=True)
class InProcessResult:
    images: int
    seconds: float
    batch_size: int
    preprocess_ms_per_image: float
    infer_ms_per_image: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def run_inprocess(onnx_path: Path, payloads: Sequence[bytes], *, duration_s: float, batch_size: int = 16,
                  preprocess_threads: int = 2, ort_threads: int = 2) -> InProcessResult:
    """Screen ``payloads`` round-robin in batches of ``batch_size`` for about ``duration_s``."""
    from predilect.preprocess import Preprocessor
    from predilect.serving.backends.classifier import OnnxClassifier
    from predilect.serving.repository import read_served_model

    served = read_served_model(onnx_path)
    preprocessor = Preprocessor(served.preprocess, max_batch_size=batch_size, num_threads=preprocess_threads)
    classifier = OnnxClassifier(onnx_path, intra_op_threads=ort_threads)
    batches = [list(payloads[i:i + batch_size]) for i in range(0, len(payloads), batch_size)]
    classifier.run([preprocessor.run_strict(batches[0])])  # warm-up
    images, runs, pre_s, infer_s = 0, 0, 0.0, 0.0
    start = time.perf_counter()
    while time.perf_counter() - start < duration_s:
        batch = batches[runs % len(batches)]
        runs += 1
        t0 = time.perf_counter()
        pixels = preprocessor.run_strict(batch)
        t1 = time.perf_counter()
        classifier.run([pixels])
        infer_s += time.perf_counter() - t1
        pre_s += t1 - t0
        images += len(batch)
    seconds = time.perf_counter() - start
    return InProcessResult(images=images, seconds=seconds, batch_size=batch_size,
                           preprocess_ms_per_image=pre_s / images * 1000.0, infer_ms_per_image=infer_s / images * 1000.0)
