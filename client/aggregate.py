"""Per-patient "any eye referable" aggregate and the summary of a screening journal."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PatientSummary:
    """A patient's images: referable when any screened image is; ``incomplete`` when some failed."""

    patient_id: str
    images: int = 0
    referable: bool = False
    incomplete: bool = False
    eyes: dict[str, bool] = field(default_factory=dict)  # eye -> any image of it referable

    def to_dict(self) -> dict[str, Any]:
        return {
            "patient_id": self.patient_id,
            "images": self.images,
            "any_eye_referable": self.referable,
            "incomplete": self.incomplete,
            "eyes": self.eyes,
        }


def patients(records: Iterable[dict[str, Any]]) -> list[PatientSummary]:
    by_id: dict[str, PatientSummary] = {}
    for record in records:
        summary = by_id.setdefault(record["patient_id"], PatientSummary(record["patient_id"]))
        summary.images += 1
        result = record.get("result")
        if result is None:
            summary.incomplete = True
            continue
        summary.referable |= bool(result["referable"])
        eye = record.get("eye") or "unknown"
        summary.eyes[eye] = summary.eyes.get(eye, False) or bool(result["referable"])
    return sorted(by_id.values(), key=lambda p: p.patient_id)


def summary_table(records: list[dict[str, Any]]) -> str:
    """A plain-text table: counts, referable images and patients, positives per disease."""
    screened = [r for r in records if r.get("result") is not None]
    failed = len(records) - len(screened)
    people = patients(records)
    positives: Counter[str] = Counter(d for r in screened for d in r["result"]["positive"])
    diseases = list(screened[0]["result"]["probabilities"]) if screened else []
    rows = [
        ("images screened", str(len(screened))),
        ("images failed", str(failed)),
        ("images referable", str(sum(r["result"]["referable"] for r in screened))),
        ("patients", str(len(people))),
        ("patients referable (any eye)", str(sum(p.referable for p in people))),
    ]
    rows += [(f"  positive: {disease}", str(positives[disease])) for disease in diseases]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value:>7}" for name, value in rows)
