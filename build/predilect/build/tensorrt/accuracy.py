"""The accuracy gate every engine passes before it is kept: engine vs ONNX Runtime on the same pixels.

Frontend-neutral: the ONNX route (``engine.build_engine``) and any other route that produces a
plan (e.g. Torch-TensorRT) hand ``check_accuracy`` the reference probabilities (the exported
FP32 ONNX under ONNX Runtime) and the engine's, on the same held-out images; past tolerance it
raises ``AccuracyGateError`` and the build keeps no engine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

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


def _macro(labels: np.ndarray, probs: np.ndarray) -> tuple[float | None, list[str]]:
    ids = [str(j) for j in range(labels.shape[1])]
    per = per_disease_auroc(labels, probs, ids)
    return (float(np.mean(list(per.values()))), sorted(per)) if per else (None, [])


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
    reference, engine = np.asarray(reference, np.float64), np.asarray(engine, np.float64)
    if reference.shape != engine.shape or reference.ndim != 2 or len(reference) == 0:
        raise ValueError(f"need two (N, C) probability arrays of one shape, got {reference.shape} and {engine.shape}")
    default_dp, default_auroc = DEFAULT_TOLERANCES[precision]
    tol_dp = default_dp if tolerance_dp is None else tolerance_dp
    tol_auroc = default_auroc if tolerance_auroc is None else tolerance_auroc
    max_dp = float(np.abs(engine - reference).max()) if np.isfinite(engine).all() else float("inf")
    auroc_ref = auroc_eng = change = None
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != reference.shape:
            raise ValueError(f"labels {labels.shape} do not match the probabilities {reference.shape}")
        auroc_ref, _ = _macro(labels, reference)
        auroc_eng, _ = _macro(labels, np.nan_to_num(engine, nan=0.5))
        if auroc_ref is not None and auroc_eng is not None:
            change = auroc_eng - auroc_ref
    passed = max_dp <= tol_dp and (change is None or abs(change) <= tol_auroc)
    report = GateReport(
        images=len(reference),
        max_abs_dp=max_dp,
        tolerance_dp=tol_dp,
        auroc_reference=auroc_ref,
        auroc_engine=auroc_eng,
        auroc_change=change,
        tolerance_auroc=tol_auroc,
        passed=passed,
    )
    if not passed:
        raise AccuracyGateError(
            f"{precision} engine fails the accuracy gate on {report.images} images: max |dp| = {max_dp:.2e} "
            f"(tolerance {tol_dp:.0e}), macro AUROC change = "
            f"{'n/a' if change is None else f'{change:+.4f}'} (tolerance {tol_auroc:.0e}); no engine was kept"
        )
    return report
