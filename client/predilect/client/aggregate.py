"""The summary of a screening journal: images, decisions, patients (exams), findings."""

from __future__ import annotations

from collections import Counter

from predilect import contract
from predilect.client.exam import exam_results
from predilect.client.records import JournalRecord


def summary_table(records: list[JournalRecord]) -> str:
    """A plain-text table: counts of images by decision, of exams by outcome, and positives per disease."""
    screened = [r.result for r in records if r.result is not None]
    exams = exam_results(records)
    decisions = Counter(r.decision for r in screened)
    outcomes = Counter(e.outcome for e in exams)
    positives: Counter[str] = Counter(d for r in screened for d in r.positive)
    diseases = list(screened[0].scores) if screened else []
    rows = [
        ("images screened", str(len(screened))),
        ("images failed", str(len(records) - len(screened))),
    ]
    rows += [(f"  {decision}", str(decisions[decision])) for decision in contract.DECISIONS]
    rows += [("patients (exams)", str(len(exams)))]
    rows += [(f"  {outcome}", str(outcomes[outcome])) for outcome in contract.EXAM_OUTCOMES]
    rows += [(f"  positive: {disease}", str(positives[disease])) for disease in diseases if positives[disease]]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value:>7}" for name, value in rows)
