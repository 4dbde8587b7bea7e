"""Shift metrics: what the served model sees, per camera, on Triton's Prometheus endpoint (``:8002/metrics``).

Exported through the Python backend's custom metrics (``pb_utils.MetricFamily``), so they sit beside
Triton's own request and queue metrics:

* ``predilect_images_total{model, model_version, camera, gradable}``: images graded (counter); the
  ungradable share is ``gradable="false"`` over all.
* ``predilect_ungradable_total{..., reason}``: ungradable images per reason (counter).
* ``predilect_quality_<measure>{model, model_version, camera}``: each quality measure (histogram).
* ``predilect_probability{model, model_version, camera, disease}``: each disease probability of the
  gradable images (histogram).

Histogram buckets are the inner edges of the model's reference distributions (``predilect.drift``,
``contract.KEY_REFERENCE``) where the repository carries one, so that a dashboard reads a histogram
against the reference bin by bin; otherwise fixed ``DEFAULT_BUCKETS``. ``camera`` is the request's
``contract.REQUEST_CAMERA`` parameter (``unknown`` without one); at most ``MAX_CAMERAS`` distinct names
are kept apart, later ones count as ``other`` (labels are series: an open set would grow without bound).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from predilect import contract, drift

MAX_CAMERAS = 16
UNKNOWN_CAMERA, OTHER_CAMERA = "unknown", "other"
_LABEL_TEXT = re.compile(r"[^A-Za-z0-9 ._/+-]")
DEFAULT_BUCKETS: Mapping[str, tuple[float, ...]] = {
    "field_px": (100, 200, 300, 500, 800, 1200, 2000, 3000),
    "field_visible": (0.5, 0.7, 0.8, 0.9, 0.95, 0.99),
    "field_offset": (0.02, 0.05, 0.1, 0.2, 0.4),
    "masked": (0.5,),
    "unlit": (0.005, 0.01, 0.05, 0.1, 0.3),
    "blur": (0.35, 0.4, 0.45, 0.5, 0.6, 0.8, 1.2, 2.0),
    "exposure": (40, 60, 80, 100, 120, 150, 180, 220, 250),
    "saturated": (0.001, 0.01, 0.05, 0.1, 0.3),
    "glare": (0.001, 0.005, 0.01, 0.05),
    "haze": (0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    "dust": (0.001, 0.002, 0.005, 0.01, 0.05),
    "chroma": (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7),
    "redness": (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6),
}
DEFAULT_PROBABILITY_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.99)


def request_camera(parameters_json: str | None) -> str:
    """The camera a request names (``contract.REQUEST_CAMERA``), cleaned for a label; ``unknown`` without one."""
    if not parameters_json:
        return UNKNOWN_CAMERA
    try:
        value = json.loads(parameters_json).get(contract.REQUEST_CAMERA)
    except (json.JSONDecodeError, AttributeError):
        return UNKNOWN_CAMERA
    text = _LABEL_TEXT.sub("_", str(value).strip())[:64] if value is not None else ""
    return text or UNKNOWN_CAMERA


def cameras_of(requests: Sequence[Any]) -> list[str]:
    """The camera of each Triton request (``request.parameters()``, a JSON string)."""
    return [request_camera(r.parameters()) for r in requests]


class ShiftMetrics:
    """The shift metrics one step exports (``quality``: images, reasons and measures; ``scores``: probabilities)."""

    def __init__(
        self,
        pb: Any,
        *,
        model_name: str,
        model_version: str,
        diseases: Sequence[str],
        reference: drift.Reference | None,
        quality: bool,
        scores: bool,
    ) -> None:
        self._labels = {"model": model_name, "model_version": model_version}
        self._diseases = list(diseases)
        self._reference = reference
        self._cameras: list[str] = []
        self._metrics: dict[tuple[str, ...], Any] = {}
        kind = pb.MetricFamily
        self._families: dict[str, Any] = {}
        if quality:
            self._families["images"] = kind(
                name="predilect_images_total",
                description="Fundus photographs graded, by camera and gradability",
                kind=kind.COUNTER,
            )
            self._families["ungradable"] = kind(
                name="predilect_ungradable_total",
                description="Ungradable photographs by reason (contract.QUALITY_REASONS) and camera",
                kind=kind.COUNTER,
            )
            for measure in contract.QUALITY_MEASURES:
                self._families[measure] = kind(
                    name=f"predilect_quality_{measure}",
                    description=f"Gradability measure {measure} (predilect.quality), by camera",
                    kind=kind.HISTOGRAM,
                )
        if scores:
            self._families["probability"] = kind(
                name="predilect_probability",
                description="Disease probability of gradable photographs, by disease and camera",
                kind=kind.HISTOGRAM,
            )

    def _camera(self, camera: str) -> str:
        if camera in self._cameras:
            return camera
        if len(self._cameras) < MAX_CAMERAS:
            self._cameras.append(camera)
            return camera
        return OTHER_CAMERA

    def _metric(self, family: str, labels: Mapping[str, str], buckets: Sequence[float] | None = None) -> Any:
        key = (family, *(f"{k}={v}" for k, v in sorted(labels.items())))
        if key not in self._metrics:
            full = {**self._labels, **labels}
            if buckets is None:
                self._metrics[key] = self._families[family].Metric(labels=full)
            else:
                self._metrics[key] = self._families[family].Metric(labels=full, buckets=[float(b) for b in buckets])
        return self._metrics[key]

    def _buckets(self, series: str, default: Sequence[float]) -> Sequence[float]:
        edges = self._reference.buckets(series) if self._reference is not None else []
        return edges or default

    def observe_quality(self, cameras: Sequence[str], quality_rows: np.ndarray, measures: np.ndarray) -> None:
        """Count each image (gradable or not, and its reasons) and observe its measures, under its camera."""
        for camera, row, values in zip(cameras, np.asarray(quality_rows), np.asarray(measures), strict=True):
            label = self._camera(camera)
            flags = [reason for reason, flag in zip(contract.QUALITY_REASONS, row[1:], strict=True) if flag > 0.5]
            self._metric("images", {"camera": label, "gradable": "false" if flags else "true"}).increment(1.0)
            for reason in flags:
                self._metric("ungradable", {"camera": label, "reason": reason}).increment(1.0)
            for measure, value in zip(contract.QUALITY_MEASURES, values, strict=True):
                buckets = self._buckets(drift.QUALITY_PREFIX + measure, DEFAULT_BUCKETS[measure])
                self._metric(measure, {"camera": label}, buckets).observe(float(value))

    def observe_scores(self, cameras: Sequence[str], probabilities: np.ndarray, gradable: np.ndarray) -> None:
        """Observe each gradable image's disease probabilities, under its camera."""
        for camera, row, ok in zip(cameras, np.asarray(probabilities), np.asarray(gradable), strict=True):
            if not ok:
                continue
            label = self._camera(camera)
            for disease, value in zip(self._diseases, row, strict=True):
                buckets = self._buckets(drift.PROBABILITY_PREFIX + disease, DEFAULT_PROBABILITY_BUCKETS)
                self._metric("probability", {"camera": label, "disease": disease}, buckets).observe(float(value))


def observe_answers(metrics: ShiftMetrics, cameras: Sequence[str], answers: Sequence[Any]) -> None:
    """The shift metrics of a step's answers: each a mapping of output tensors, or a refusal (left to
    Triton's own failure counts)."""
    done = [(camera, a) for camera, a in zip(cameras, answers, strict=True) if isinstance(a, Mapping)]
    if not done:
        return
    kept = [camera for camera, _ in done]
    quality = np.concatenate([a[contract.QUALITY] for _, a in done])
    metrics.observe_quality(kept, quality, np.concatenate([a[contract.QUALITY_MEASURES_TENSOR] for _, a in done]))
    gradable = ~(quality[:, 1:] > 0.5).any(axis=1)
    metrics.observe_scores(kept, np.concatenate([a[contract.PROBABILITIES] for _, a in done]), gradable)


def from_parameters(pb: Any, params: Mapping[str, str], *, quality: bool, scores: bool) -> ShiftMetrics:
    """The shift metrics of a step from its config parameters (model identity, catalog ids, the reference)."""
    from predilect.referral import ReferralRules

    rules = ReferralRules.from_json(params[contract.KEY_RULES])
    reference = (
        drift.Reference.from_json(params[contract.KEY_REFERENCE]) if params.get(contract.KEY_REFERENCE) else None
    )
    return ShiftMetrics(
        pb,
        model_name=params.get(contract.KEY_MODEL_NAME, ""),
        model_version=params.get(contract.KEY_MODEL_VERSION, ""),
        diseases=[d.id for d in rules.diseases],
        reference=reference,
        quality=quality,
        scores=scores,
    )
