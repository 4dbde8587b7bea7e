"""The accuracy gate every engine passes before it is kept: engine vs ONNX Runtime on the same pixels.

Frontend-neutral: the ONNX route (``engine.build_engine``) and any other route that produces a
plan (e.g. Torch-TensorRT) hand ``check_accuracy`` the reference probabilities (the exported
FP32 ONNX under ONNX Runtime) and the engine's, on the same held-out images; past tolerance it
raises ``AccuracyGateError`` and the build keeps no engine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from predilect.contract import LOGITS, PIXELS
from predilect.metrics import per_disease_auroc

# Per precision: (max |delta p|, max |delta macro AUROC|). FP32 engines still use TF32-free
# kernels but reorder sums; reduced precisions and quantised engines get looser bounds.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-4, 1e-3),
    "fp16": (5e-3, 5e-3),
    "bf16": (2e-2, 1e-2),
    "int8": (5e-2, 2e-2),
    "fp8": (5e-2, 2e-2),
}


class AccuracyGateError(RuntimeError):
    """The engine's outputs differ from the reference past the gate's tolerance."""


@dataclass(frozen=True)
class GateReport:
    """What the gate measured; written into the engine's sidecar."""

    images: int
    max_abs_dp: float
    tolerance_dp: float
    auroc_reference: float | None
    auroc_engine: float | None
    auroc_change: float | None
    tolerance_auroc: float
    passed: bool

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Probabilities of ``logits``, in float64, without overflow for large magnitudes."""
    x = logits.astype(np.float64)
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def reference_probabilities(onnx_path: Path, pixels: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """Probabilities (N, C) of the FP32 export under ONNX Runtime on the CPU (no torch, unlike build.export)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits = [session.run([LOGITS], {PIXELS: pixels[i : i + batch_size]})[0] for i in range(0, len(pixels), batch_size)]
    return sigmoid(np.concatenate(logits))


def _macro(labels: np.ndarray, probs: np.ndarray) -> tuple[float | None, list[str]]:
    ids = [str(j) for j in range(labels.shape[1])]
    per = per_disease_auroc(labels, probs, ids)
    return (float(np.mean(list(per.values()))), sorted(per)) if per else (None, [])


def measure_agreement(
    reference: np.ndarray,
    candidate: np.ndarray,
    *,
    tolerance_dp: float,
    tolerance_auroc: float,
    labels: np.ndarray | None = None,
) -> GateReport:
    """How far ``candidate`` probabilities ``(N, C)`` lie from ``reference``, against the two tolerances.

    The AUROC change (macro over the diseases with both classes among ``labels``, the same
    diseases for both) is measured only when labels are given; ``auroc_*`` are None otherwise.
    ``passed`` says whether both bounds hold; nothing is raised for a miss (``check_accuracy`` does).
    """
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape or reference.ndim != 2 or len(reference) == 0:
        raise ValueError(
            f"need two (N, C) probability arrays of one shape, got {reference.shape} and {candidate.shape}"
        )
    max_dp = float(np.abs(candidate - reference).max()) if np.isfinite(candidate).all() else float("inf")
    auroc_ref = auroc_cand = change = None
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != reference.shape:
            raise ValueError(f"labels {labels.shape} do not match the probabilities {reference.shape}")
        auroc_ref, _ = _macro(labels, reference)
        auroc_cand, _ = _macro(labels, np.nan_to_num(candidate, nan=0.5))
        if auroc_ref is not None and auroc_cand is not None:
            change = auroc_cand - auroc_ref
    return GateReport(
        images=len(reference),
        max_abs_dp=max_dp,
        tolerance_dp=tolerance_dp,
        auroc_reference=auroc_ref,
        auroc_engine=auroc_cand,
        auroc_change=change,
        tolerance_auroc=tolerance_auroc,
        passed=max_dp <= tolerance_dp and (change is None or abs(change) <= tolerance_auroc),
    )


def check_accuracy(
    reference: np.ndarray,
    engine: np.ndarray,
    *,
    precision: str,
    labels: np.ndarray | None = None,
    tolerance_dp: float | None = None,
    tolerance_auroc: float | None = None,
) -> GateReport:
    """Compare engine and reference probabilities ``(N, C)``; raise ``AccuracyGateError`` past tolerance.

    The AUROC change (macro over the diseases with both classes among ``labels``, the same
    diseases for both) is checked only when labels are given; ``auroc_*`` are None otherwise.
    """
    if precision not in DEFAULT_TOLERANCES:
        raise ValueError(f"unknown precision {precision!r}; expected one of {sorted(DEFAULT_TOLERANCES)}")
    default_dp, default_auroc = DEFAULT_TOLERANCES[precision]
    report = measure_agreement(
        reference,
        engine,
        labels=labels,
        tolerance_dp=default_dp if tolerance_dp is None else tolerance_dp,
        tolerance_auroc=default_auroc if tolerance_auroc is None else tolerance_auroc,
    )
    if not report.passed:
        change = report.auroc_change
        raise AccuracyGateError(
            f"{precision} engine fails the accuracy gate on {report.images} images: max |dp| = {report.max_abs_dp:.2e} "
            f"(tolerance {report.tolerance_dp:.0e}), macro AUROC change = "
            f"{'n/a' if change is None else f'{change:+.4f}'} (tolerance {report.tolerance_auroc:.0e}); "
            "no engine was kept"
        )
    return report
