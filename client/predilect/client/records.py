"""The journal record: one JSON line per screened image (per frame for DICOM), written by
``predilect screen`` and the DICOM gateway, read back by ``journal`` and ``aggregate``.

Every record carries ``schema_version`` (``contract.RESULT_SCHEMA_VERSION``); a reader refuses
records of another version instead of guessing. A record holds either a ``result`` or an
``error`` (with its ``error_type``, a client error class name) -- only final errors are
recorded (``errors.is_final``); an input that failed transiently has no record yet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from predilect import contract
from predilect.client.results import ScreeningItem, ScreeningResult


class JournalRecord(BaseModel):
    """One line of a screening journal."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    schema_version: str = Field(default=contract.RESULT_SCHEMA_VERSION, description="version of this record's layout")
    key: str = Field(description="the input: its resolved path (screen) or SOP Instance UID (gateway)")
    frames: int = Field(ge=1, description="how many records this input has; they are written together")
    frame: int | None = Field(
        default=None, ge=1, description="1-based DICOM frame; None for a plain image or an input that failed whole"
    )
    patient_id: str | None = Field(default=None, description="local bookkeeping; never sent to the server")
    eye: str | None = Field(default=None, description="R or L (contract.EYES), when known")
    study: str | None = Field(
        default=None, description="the visit (DICOM StudyInstanceUID, a manifest's study column): exams group by it"
    )
    sop_instance_uid: str | None = None
    result: ScreeningResult | None = None
    error: str | None = Field(default=None, description="what went wrong, when the input itself is bad")
    error_type: str | None = Field(default=None, description="the client error's class name")
    sr: str | None = Field(default=None, description="gateway: file name of the Structured Report of this frame")

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: str) -> str:
        if value != contract.RESULT_SCHEMA_VERSION:
            raise ValueError(
                f"schema version {value!r}; this client reads and writes version {contract.RESULT_SCHEMA_VERSION!r}"
            )
        return value

    @field_validator("eye")
    @classmethod
    def _canonical_eye(cls, value: str | None) -> str | None:
        if value is not None and value not in contract.EYES:
            raise ValueError(f"eye must be one of {contract.EYES} (see contract.parse_eye), got {value!r}")
        return value

    @model_validator(mode="after")
    def _result_or_error(self) -> JournalRecord:
        if (self.result is None) == (self.error is None) or (self.error is None) != (self.error_type is None):
            raise ValueError("a record holds either a result, or an error with its error_type")
        return self

    @property
    def ok(self) -> bool:
        return self.result is not None

    @classmethod
    def of_items(
        cls,
        key: str,
        items: Sequence[ScreeningItem],
        *,
        patient_id: str | None = None,
        eye: str | None = None,
        study: str | None = None,
        sop_instance_uid: str | None = None,
        sr_files: Mapping[int | None, str] | None = None,
    ) -> list[JournalRecord]:
        """The records of one input's items (``screen_items`` / a ``screen_many`` group); a record
        of a failed frame takes ``sop_instance_uid``, else that of its input's screened frames."""
        known_uid = next((i.result.sop_instance_uid for i in items if i.result is not None), None)
        records = []
        for item in items:
            result, error = item.result, item.error
            records.append(
                cls(
                    key=key,
                    frames=len(items),
                    frame=item.frame,
                    patient_id=patient_id,
                    eye=eye,
                    study=study,
                    sop_instance_uid=result.sop_instance_uid if result is not None else sop_instance_uid or known_uid,
                    result=result,
                    error=str(error) if error is not None else None,
                    error_type=type(error).__name__ if error is not None else None,
                    sr=(sr_files or {}).get(item.frame) if result is not None else None,
                )
            )
        return records
