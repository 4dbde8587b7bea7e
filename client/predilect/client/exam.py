"""The exam-level result: per patient, both eyes' results together -- what a screening programme acts on.

Records of a journal are grouped by patient (``patient_id``, from the manifest, the DICOM header or
the filename pattern; the input's key when unknown) and visit (``study``, when known), then by
laterality (``eye``: R, L, or ``unknown``). An eye's decision is the most urgent decision among
its gradable images; an eye whose every screened image is ungradable is ungradable (a second,
good photograph of the same eye is enough). Then:

* ``refer_urgent`` / ``refer_routine``: any eye is referable (the most urgent referral wins);
  ungradable eyes are still called out;
* ``recall``: an eye is ungradable and no eye is referable -- recall for re-photography;
* ``incomplete``: an image failed (no result) and nothing above decides;
* ``no_referral``: every eye is gradable and none is referable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from predilect import contract
from predilect.client.records import JournalRecord
from predilect.referral import NO_REFERRAL, REFER_ROUTINE, REFER_URGENT, UNGRADABLE

if TYPE_CHECKING:
    OutcomeName = str
    EyeDecision = str
else:
    OutcomeName = Literal[contract.EXAM_OUTCOMES]
    EyeDecision = Literal[(*contract.DECISIONS, "incomplete")]

REFER_URGENTLY, REFER_ROUTINELY, RECALL, NOT_REFERRED, INCOMPLETE = contract.EXAM_OUTCOMES
UNKNOWN_EYE = "unknown"
_URGENCY = {NO_REFERRAL: 0, REFER_ROUTINE: 1, REFER_URGENT: 2}
_EYE_ORDER = {contract.RIGHT_EYE: 0, contract.LEFT_EYE: 1, UNKNOWN_EYE: 2}


class EyeResult(BaseModel):
    """One eye of an exam: its images, its decision, its findings or why it could not be graded."""

    model_config = ConfigDict(frozen=True)

    eye: str = Field(description="R, L, or 'unknown' when no laterality was given")
    decision: EyeDecision = Field(description="the most urgent decision of its gradable images; 'incomplete' if none")
    images: int
    gradable_images: int
    failed_images: int = 0
    findings: list[str] = Field(default_factory=list, description="positive findings of its gradable images")
    reasons: list[str] = Field(default_factory=list, description="why its images were ungradable, when all were")
    keys: list[str] = Field(default_factory=list, description="the inputs (journal keys) of this eye")


class ExamResult(BaseModel):
    """The result of one patient's exam (see the module docstring)."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    schema_version: str = Field(default=contract.RESULT_SCHEMA_VERSION)
    patient_id: str
    study: str | None = Field(default=None, description="the visit, when the records say (DICOM StudyInstanceUID)")
    outcome: OutcomeName
    referable: bool
    eyes: list[EyeResult]
    ungradable_eyes: list[str] = Field(description="eyes with no gradable image: to re-photograph")
    missing_eyes: list[str] = Field(description="R or L when the other eye was photographed and this one not")
    message: str = Field(description="what to do, for people")
    models: list[str] = Field(description="'<name> <version>' of every model that screened these images")
    rules_digests: list[str] = Field(description="the referral rules the decisions followed")


def _eye_result(eye: str, records: Sequence[JournalRecord]) -> EyeResult:
    results = [r.result for r in records if r.result is not None]
    gradable = [r for r in results if r.gradable]
    findings = sorted({f for r in gradable for f in r.positive})
    if gradable:
        decision = max((r.decision for r in gradable), key=_URGENCY.__getitem__)
    else:
        decision = UNGRADABLE if results else "incomplete"
    reasons = sorted({reason for r in results for reason in r.quality.reasons}) if not gradable else []
    return EyeResult(
        eye=eye,
        decision=decision,
        images=len(records),
        gradable_images=len(gradable),
        failed_images=len(records) - len(results),
        findings=findings,
        reasons=reasons,
        keys=sorted({r.key for r in records}),
    )


def _outcome(eyes: Sequence[EyeResult]) -> str:
    decisions = {e.decision for e in eyes}
    if REFER_URGENT in decisions:
        return REFER_URGENTLY
    if REFER_ROUTINE in decisions:
        return REFER_ROUTINELY
    if UNGRADABLE in decisions:
        return RECALL
    if "incomplete" in decisions or any(e.failed_images for e in eyes):
        return INCOMPLETE
    return NOT_REFERRED


def _eye_name(eye: str) -> str:
    return {contract.RIGHT_EYE: "right eye", contract.LEFT_EYE: "left eye"}.get(eye, "eye of unknown side")


def _message(outcome: str, eyes: Sequence[EyeResult], missing: Sequence[str], names: Mapping[str, str]) -> str:
    parts = []
    referred = [e for e in eyes if e.decision in (REFER_ROUTINE, REFER_URGENT)]
    if outcome in (REFER_URGENTLY, REFER_ROUTINELY):
        how = "urgently" if outcome == REFER_URGENTLY else "routinely"
        found = "; ".join(f"{_eye_name(e.eye)}: {', '.join(names.get(f, f) for f in e.findings)}" for e in referred)
        parts.append(f"refer {how} ({found})")
    elif outcome == RECALL:
        parts.append("recall for re-photography")
    elif outcome == INCOMPLETE:
        parts.append("incomplete: an image could not be screened; screen it again")
    else:
        parts.append("no referable finding; routine re-screening")
    for e in eyes:
        if e.decision == UNGRADABLE:
            parts.append(f"{_eye_name(e.eye)} ungradable ({', '.join(r.replace('_', ' ') for r in e.reasons)})")
    for eye in missing:
        parts.append(f"{_eye_name(eye)} not photographed")
    return "; ".join(parts)


def exam_key(record: JournalRecord) -> tuple[str, str]:
    """The exam a record belongs to: (patient, study); the input's key stands for an unknown patient."""
    return record.patient_id or record.key, record.study or ""


def exam_results(records: Iterable[JournalRecord], *, names: Mapping[str, str] | None = None) -> list[ExamResult]:
    """One exam result per patient and visit, sorted by patient id; ``names`` (catalog id -> disease name) word the
    messages (``findings`` keep the ids)."""
    by_exam: dict[tuple[str, str], dict[str, list[JournalRecord]]] = {}
    for record in records:
        by_exam.setdefault(exam_key(record), {}).setdefault(record.eye or UNKNOWN_EYE, []).append(record)
    exams = []
    for patient, study in sorted(by_exam):
        groups = by_exam[(patient, study)]
        eyes = [_eye_result(eye, groups[eye]) for eye in sorted(groups, key=_EYE_ORDER.__getitem__)]
        sides = {e.eye for e in eyes} & set(contract.EYES)
        missing = [eye for eye in contract.EYES if sides and eye not in sides]
        outcome = _outcome(eyes)
        results = [r.result for group in groups.values() for r in group if r.result is not None]
        exams.append(
            ExamResult(
                patient_id=patient,
                study=study or None,
                outcome=outcome,
                referable=outcome in (REFER_URGENTLY, REFER_ROUTINELY),
                eyes=eyes,
                ungradable_eyes=[e.eye for e in eyes if e.decision == UNGRADABLE],
                missing_eyes=missing,
                message=_message(outcome, eyes, missing, names or {}),
                models=sorted({f"{r.model_name} {r.model_version}" for r in results}),
                rules_digests=sorted({r.rules_digest for r in results}),
            )
        )
    return exams


def exams_table(exams: Sequence[ExamResult]) -> str:
    """A plain-text table: one line per patient with the outcome and the message."""
    if not exams:
        return "no exams"
    width = max(len("patient"), *(len(e.patient_id) for e in exams))
    lines = [f"{'patient':<{width}}  {'outcome':<13}  what to do"]
    lines += [f"{e.patient_id:<{width}}  {e.outcome:<13}  {e.message}" for e in exams]
    return "\n".join(lines)


__all__ = [
    "INCOMPLETE",
    "NOT_REFERRED",
    "RECALL",
    "REFER_ROUTINELY",
    "REFER_URGENTLY",
    "EyeResult",
    "ExamResult",
    "exam_key",
    "exam_results",
    "exams_table",
]
