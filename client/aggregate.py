"""Per-patient "any eye referable" aggregate and the summary of a screening journal."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from predilect import contract
from predilect.client.records import JournalRecord


@dataclass
class PatientSummary:
    """A patient's images: referable when any screened image is; ``incomplete`` when some failed."""

    patient_id: str
    images: int = 0
    referable: bool = False
    incomplete: bool = False
    eyes: dict[str, bool] = field(default_factory=dict)  # eye (R, L or "unknown") -> any image of it referable

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": contract.RESULT_SCHEMA_VERSION,
            "patient_id": self.patient_id,
            "images": self.images,
            "any_eye_referable": self.referable,
            "incomplete": self.incomplete,
            "eyes": self.eyes,
        }


def patients(records: Iterable[JournalRecord]) -> list[PatientSummary]:
    """One summary per patient (records without a patient are grouped under their key)."""
    by_id: dict[str, PatientSummary] = {}
    for record in records:
        patient_id = record.patient_id or record.key
        summary = by_id.setdefault(patient_id, PatientSummary(patient_id))
        summary.images += 1
        if record.result is None:
            summary.incomplete = True
            continue
        summary.referable |= record.result.referable
        eye = record.eye or "unknown"
        summary.eyes[eye] = summary.eyes.get(eye, False) or record.result.referable
    return sorted(by_id.values(), key=lambda p: p.patient_id)


def summary_table(records: list[JournalRecord]) -> str:
    """A plain-text table: counts, referable images and patients, positives per disease."""
    screened = [r.result for r in records if r.result is not None]
    people = patients(records)
    positives: Counter[str] = Counter(d for r in screened for d in r.positive)
    diseases = list(screened[0].probabilities) if screened else []
    rows = [
        ("images screened", str(len(screened))),
        ("images failed", str(len(records) - len(screened))),
        ("images referable", str(sum(r.referable for r in screened))),
        ("patients", str(len(people))),
        ("patients referable (any eye)", str(sum(p.referable for p in people))),
    ]
    rows += [(f"  positive: {disease}", str(positives[disease])) for disease in diseases]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value:>7}" for name, value in rows)
