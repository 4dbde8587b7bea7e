"""The screening result returned by the clients, and the per-input item of ``screen_many``.

Result schema 2 (``contract.RESULT_SCHEMA_VERSION``): the server grades the photograph and
decides (``predilect.referral``); the result says what it decided and under which model, catalog
and rules. An ungradable photograph has no disease decision: its probabilities are kept apart,
in ``audit_probabilities``, and ``probabilities`` is None, so that nothing reads them as valid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from predilect import contract
from predilect.catalog import Catalog
from predilect.client.errors import PredilectClientError
from predilect.referral import REFERABLE_DECISIONS, UNGRADABLE, ReferralRules

if TYPE_CHECKING:
    DecisionName = str
    ReasonName = str
else:
    DecisionName = Literal[contract.DECISIONS]
    ReasonName = Literal[contract.QUALITY_REASONS]

FieldBox = tuple[float, float, float, float]


class QualityReport(BaseModel):
    """The gradability of one photograph: ``score`` in [0, 1] (gradable above 0.5) and the failed checks."""

    model_config = ConfigDict(frozen=True)

    score: float = Field(ge=0.0, le=1.0)
    gradable: bool
    reasons: list[ReasonName] = Field(description="the checks that failed (contract.QUALITY_REASONS)")
    measures: dict[str, float] | None = Field(
        default=None, description="what the checks read (contract.QUALITY_MEASURES): shift monitoring compares them"
    )

    @model_validator(mode="after")
    def _reasons_iff_ungradable(self) -> QualityReport:
        if self.gradable == bool(self.reasons):
            raise ValueError("a quality report is gradable exactly when it gives no reason")
        return self

    @classmethod
    def from_row(cls, row: Sequence[float], measures: Sequence[float] | None = None) -> QualityReport:
        """From one ``contract.QUALITY`` row, ``[score, flag per reason]``, and its ``QUALITY_MEASURES`` row."""
        if len(row) != 1 + len(contract.QUALITY_REASONS):
            raise ValueError(f"a quality row has {1 + len(contract.QUALITY_REASONS)} values, got {len(row)}")
        if measures is not None and len(measures) != len(contract.QUALITY_MEASURES):
            raise ValueError(f"a quality measures row has {len(contract.QUALITY_MEASURES)} values, got {len(measures)}")
        reasons = [r for r, flag in zip(contract.QUALITY_REASONS, row[1:], strict=True) if float(flag) > 0.5]
        named = (
            None
            if measures is None
            else {m: round(float(v), 6) for m, v in zip(contract.QUALITY_MEASURES, measures, strict=True)}
        )
        return cls(score=min(1.0, max(0.0, float(row[0]))), gradable=not reasons, reasons=reasons, measures=named)

    def describe(self) -> str:
        """``gradable (score 0.83)`` or ``ungradable — focus, artefact``."""
        if self.gradable:
            return f"gradable (score {self.score:.2f})"
        return "ungradable — " + ", ".join(r.replace("_", " ") for r in self.reasons)


class Heatmap(BaseModel):
    """One positive finding's attention over the screened square (``ScreeningResult.field_box``).

    ``grid[row][column]`` (rows top to bottom) are the map's values over the model input's token
    grid; ``kind`` says which map it is (``contract.HEATMAP_KINDS``: the attention, or the evidence,
    attention x each token's share of the logit; None when the server does not say); ``peak`` is the
    centre of the hottest cell in the photograph's normalised coordinates (x right, y down);
    ``overlay`` the PNG file ``predilect screen --heatmaps`` wrote, relative to the journal's folder.
    """

    model_config = ConfigDict(frozen=True)

    disease: str
    grid: list[list[float]]
    peak: tuple[float, float]
    kind: str | None = Field(default=None, description="attention | evidence (contract.HEATMAP_KINDS); None: unsaid")
    overlay: str | None = None

    def describe(self) -> str:
        """What the map shows, in words for a caption."""
        if self.kind == "evidence":
            return "evidence map (where the finding's score came from: attention x each region's contribution)"
        if self.kind == "attention":
            return "attention map (where the model looked for this finding; not proof of a lesion)"
        return "heatmap (the model's map for this finding; the server does not say which kind)"

    @property
    def array(self) -> np.ndarray:
        return np.asarray(self.grid, dtype=np.float32)


def peak_of(grid: np.ndarray, box: FieldBox) -> tuple[float, float]:
    """The centre of ``grid``'s hottest cell in photograph coordinates (``box`` maps the square onto it)."""
    rows, columns = grid.shape
    row, column = np.unravel_index(int(np.argmax(grid)), grid.shape)
    left, top, right, bottom = box
    return (
        float(left + (column + 0.5) / columns * (right - left)),
        float(top + (row + 0.5) / rows * (bottom - top)),
    )


class ScreeningResult(BaseModel):
    """The server's decision on one fundus photograph, and what it was made with.

    ``decision`` is one of ``contract.DECISIONS``; ``referable`` is true for a referral (routine or
    urgent). ``positive`` lists the findings (catalog order; empty when ungradable). ``probabilities``
    is keyed by catalog id and None for an ungradable photograph, whose probabilities are in
    ``audit_probabilities`` -- for audit only, never valid. ``thresholds`` are the operating points
    applied; ``catalog_digest`` and ``rules_digest`` name the exact catalog and referral rules.
    ``field_box`` is the square the model screened, in the photograph's normalised coordinates.
    ``sop_instance_uid`` and ``frame`` (1-based) are filled locally for DICOM inputs: never sent.
    ``camera`` is the acquisition device sent with the request (``contract.REQUEST_CAMERA``: from the
    DICOM header, or the client's ``camera``), the label the server's shift metrics count it under.
    """

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    decision: DecisionName
    referable: bool
    gradable: bool
    quality: QualityReport
    positive: list[str]
    probabilities: dict[str, float] | None
    audit_probabilities: dict[str, float] | None = None
    model_name: str
    model_version: str
    catalog_digest: str
    rules_digest: str
    thresholds: dict[str, float]
    field_box: FieldBox | None = None
    heatmaps: list[Heatmap] | None = None
    latency_s: float
    sop_instance_uid: str | None = None
    frame: int | None = None
    camera: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ScreeningResult:
        ungradable = self.decision == UNGRADABLE
        if self.gradable != self.quality.gradable or ungradable == self.gradable:
            raise ValueError("decision 'ungradable' exactly when the quality report is not gradable")
        if (self.probabilities is None) != ungradable or (self.audit_probabilities is not None) != ungradable:
            raise ValueError("an ungradable result carries audit_probabilities only; a gradable one probabilities only")
        if ungradable and self.positive:
            raise ValueError("an ungradable result has no findings")
        if self.referable != (self.decision in REFERABLE_DECISIONS):
            raise ValueError(f"referable must be true exactly for decisions {REFERABLE_DECISIONS}")
        return self

    @property
    def scores(self) -> dict[str, float]:
        """The probabilities whatever the gradability (for audit and calibration, never for decisions)."""
        return dict(self.probabilities if self.probabilities is not None else self.audit_probabilities or {})

    def heatmap(self, disease: str) -> Heatmap | None:
        return next((h for h in self.heatmaps or () if h.disease == disease), None)

    @classmethod
    def from_outputs(
        cls,
        *,
        probabilities: Sequence[float],
        quality: Sequence[float],
        findings: Sequence[bool],
        measures: Sequence[float] | None = None,
        decision_code: int,
        catalog: Catalog,
        rules: ReferralRules,
        model_name: str,
        model_version: str,
        latency_s: float,
        field_box: Sequence[float] | None = None,
        heatmaps: np.ndarray | None = None,
        heatmap_kind: str | None = None,
        sop_instance_uid: str | None = None,
        frame: int | None = None,
        camera: str | None = None,
    ) -> ScreeningResult:
        """The result of one response's tensors (catalog order); ``heatmaps`` ``(C, g, g)`` when asked for."""
        if not len(probabilities) == len(findings) == len(catalog):
            raise ValueError(f"{len(probabilities)} probabilities, {len(findings)} findings, {len(catalog)} diseases")
        if not 0 <= decision_code < len(contract.DECISIONS):
            raise ValueError(f"decision code {decision_code} is not an index of {contract.DECISIONS}")
        by_id = {d.id: float(p) for d, p in zip(catalog, probabilities, strict=True)}
        report = QualityReport.from_row(quality, measures)
        positive = [d.id for d, f in zip(catalog, findings, strict=True) if bool(f)]
        box: FieldBox | None = tuple(float(v) for v in field_box) if field_box is not None else None  # type: ignore[assignment]
        maps = None
        if heatmaps is not None:
            index = {d.id: i for i, d in enumerate(catalog)}
            maps = [_heatmap(disease, np.asarray(heatmaps[index[disease]]), box, heatmap_kind) for disease in positive]
        gradable = report.gradable
        decision = contract.DECISIONS[decision_code]
        return cls(
            decision=decision,
            referable=decision in REFERABLE_DECISIONS,
            gradable=gradable,
            quality=report,
            positive=positive,
            probabilities=by_id if gradable else None,
            audit_probabilities=None if gradable else by_id,
            model_name=model_name,
            model_version=model_version,
            catalog_digest=catalog.digest(),
            rules_digest=rules.digest(),
            thresholds=rules.thresholds,
            field_box=box,
            heatmaps=maps,
            latency_s=latency_s,
            sop_instance_uid=sop_instance_uid,
            frame=frame,
            camera=camera,
        )

    def to_json(self, *, indent: int | None = None) -> str:
        """The result as JSON (keys as the fields, probabilities in catalog order)."""
        return self.model_dump_json(indent=indent)

    def summary(self) -> str:
        """One line for people: the decision, the findings or the reasons."""
        if not self.gradable:
            return f"{self.quality.describe()} (no disease decision)"
        found = ", ".join(f"{d} {self.scores[d]:.2f}" for d in self.positive) or "no finding"
        return f"{self.decision.replace('_', ' ')}: {found}"


def _heatmap(disease: str, grid: np.ndarray, box: FieldBox | None, kind: str | None) -> Heatmap:
    square: FieldBox = box if box is not None else (0.0, 0.0, 1.0, 1.0)
    return Heatmap(disease=disease, grid=np.round(grid, 6).tolist(), peak=peak_of(grid, square), kind=kind)


@dataclass(frozen=True)
class ScreeningItem:
    """One answer of ``screen_many`` / ``screen_items``: the input at position ``index`` (one item
    per DICOM frame), with either its ``result`` or the client ``error`` that stopped it.

    ``frame`` is the 1-based DICOM frame the item is about (None for a plain image, or when the
    input failed before its first frame); ``frames`` is how many items this input yields -- they
    are yielded one after the other, in frame order. A DICOM instance whose frame 2 cannot be
    decoded yields frame 1's result and then frame 2's error.
    """

    index: int
    source: Any
    result: ScreeningResult | None = None
    error: PredilectClientError | None = None
    frames: int = 1
    frame: int | None = None

    def __post_init__(self) -> None:
        if (self.result is None) == (self.error is None):
            raise ValueError("a ScreeningItem holds either a result or an error")

    @property
    def ok(self) -> bool:
        return self.result is not None
