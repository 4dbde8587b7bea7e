"""Baseline (a): the in-process upper bound: the served computation, no server.

Runs what the ``fused_screen`` model runs on a batch (``predilect.serving.backends.fused.FusedScreen``:
decode + preprocess, the gradability step on its quality square, ONNX Runtime, the referral
decision) in this process, with no gRPC, no serialisation and no inter-process copies. One
worker per core loops over batches, so decoding on one core overlaps inference on the other
as it does inside Triton; a single serial loop would leave a core idle and understate the
bound. The bound runs the gradability step and the decision too, as the server does (without
them it would overstate what a server can reach); ``preprocess_ms_per_image`` covers decode,
preprocessing and grading, ``infer_ms_per_image`` inference and the decision.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from predilect import contract


@dataclass(frozen=True)
class InProcessResult:
    images: int
    seconds: float
    batch_size: int
    workers: int
    preprocess_ms_per_image: float
    infer_ms_per_image: float
    # CPU seconds this process used over the timed interval (every worker thread; set-up excluded).
    cpu_s: float = float("nan")

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_image(self) -> float:
        return self.cpu_s / self.images * 1000.0 if self.images else float("nan")


@dataclass
class _Tally:
    images: int = 0
    preprocess_s: float = 0.0
    infer_s: float = 0.0


def _worker(
    onnx_path: Path,
    batches: list[list[bytes]],
    offset: int,
    deadline: list[float],
    tally: _Tally,
    ready: threading.Barrier,
) -> None:
    from predilect.preprocess import Preprocessor
    from predilect.serving.backends.classifier import OnnxClassifier
    from predilect.serving.backends.screening import Screening
    from predilect.serving.repository import read_served_model

    served = read_served_model(onnx_path)
    preprocessor = Preprocessor(served.preprocess, max_batch_size=len(batches[0]), num_threads=1)
    classifier = OnnxClassifier(onnx_path, intra_op_threads=1)
    screening = Screening(served.rules, served.preprocess)
    classifier.run_all(preprocessor.run(batches[0], quality=True).pixels)  # warm-up
    ready.wait()
    i = offset
    while time.perf_counter() < deadline[0]:
        batch = batches[i % len(batches)]
        i += 1
        # FusedScreen.outputs' steps, timed in two parts.
        t0 = time.perf_counter()
        done = preprocessor.run(batch, quality=True)
        quality = screening.quality_of(done).quality
        t1 = time.perf_counter()
        model = classifier.run_all(done.pixels)
        screening.decide(model[contract.LOGITS], quality, model.get(contract.ATTENTION))
        tally.infer_s += time.perf_counter() - t1
        tally.preprocess_s += t1 - t0
        tally.images += len(done.pixels)


def run_inprocess(
    onnx_path: Path, payloads: Sequence[bytes], *, duration_s: float, batch_size: int = 8, workers: int | None = None
) -> InProcessResult:
    """Screen ``payloads`` round-robin in batches of ``batch_size`` on ``workers`` threads (default: one per
    core) for about ``duration_s``; per-image stage times are summed over workers (CPU-time-like)."""
    workers = workers or os.cpu_count() or 1
    batches = [list(payloads[i : i + batch_size]) for i in range(0, len(payloads), batch_size)]
    tallies = [_Tally() for _ in range(workers)]
    ready = threading.Barrier(workers + 1)
    # The deadline is set once every worker has loaded its model, so set-up is not timed.
    deadline = [float("inf")]
    threads = [
        threading.Thread(target=_worker, args=(onnx_path, batches, k, deadline, tallies[k], ready))
        for k in range(workers)
    ]
    for t in threads:
        t.start()
    ready.wait()
    start, cpu_start = time.perf_counter(), time.process_time()
    deadline[0] = start + duration_s
    for t in threads:
        t.join()
    seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    images = sum(t.images for t in tallies)
    return InProcessResult(
        images=images,
        seconds=seconds,
        batch_size=batch_size,
        workers=workers,
        preprocess_ms_per_image=sum(t.preprocess_s for t in tallies) / images * 1000.0,
        infer_ms_per_image=sum(t.infer_s for t in tallies) / images * 1000.0,
        cpu_s=cpu_s,
    )


def inference_ms_per_image(onnx_path: Path, pixels, *, batch_size: int = 8, repeats: int = 5) -> float:
    """ONNX Runtime alone, one thread: ms per image over batches of ``pixels`` (the fastest of ``repeats``)."""
    from predilect.serving.backends.classifier import OnnxClassifier

    classifier = OnnxClassifier(onnx_path, intra_op_threads=1)
    batches = [pixels[i : i + batch_size] for i in range(0, len(pixels), batch_size)]
    classifier.run(batches[:1])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            classifier.run([batch])
        best = min(best, time.perf_counter() - start)
    return best / len(pixels) * 1000.0
