"""Referral rules: what a screened image's probabilities and gradability decide, versioned with the model.

The rules are derived from the catalog (each disease's operating point ``threshold`` and its
``referral``: urgent, routine or none) and the gradability thresholds (``predilect.quality``);
they travel as one JSON document in the model repository (``contract.KEY_RULES``), are applied
server-side by the step that sees both the quality and the probabilities, and their digest
(``ReferralRules.digest``) is carried by every result, beside the catalog's.

Decision of one image (``decide``):

* ungradable (any quality flag) -> ``ungradable``: no finding, no disease decision;
* else the positive findings are the diseases whose probability reaches their threshold, and
  the decision is the most urgent referral among them: ``refer_urgent``, ``refer_routine``, or
  ``no_referral`` (no finding, or only findings whose referral is ``none``: recorded, not referred).

Standard library only: the client reads and checks the same rules.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from predilect.catalog import REFERRALS, Catalog
from predilect.contract import DECISIONS
from predilect.errors import UserError

RULES_FORMAT = "predilect.rules.v1"
UNGRADABLE, NO_REFERRAL, REFER_ROUTINE, REFER_URGENT = DECISIONS
_DECISION_OF_REFERRAL = {"none": NO_REFERRAL, "routine": REFER_ROUTINE, "urgent": REFER_URGENT}
_URGENCY = {NO_REFERRAL: 0, REFER_ROUTINE: 1, REFER_URGENT: 2}
REFERABLE_DECISIONS = (REFER_ROUTINE, REFER_URGENT)


class RulesError(UserError, ValueError):
    """Referral rules that are malformed or disagree with the catalog they claim to come from."""


@dataclass(frozen=True)
class DiseaseRule:
    """One disease: positive at ``probability >= threshold``; a positive finding triggers ``referral``."""

    id: str
    threshold: float
    referral: str

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise RulesError(f"threshold of {self.id!r} must lie in (0, 1), got {self.threshold}")
        if self.referral not in REFERRALS:
            raise RulesError(f"referral of {self.id!r} must be one of {REFERRALS}, got {self.referral!r}")


@dataclass(frozen=True)
class Decision:
    """One image's decision: ``findings`` (the positive disease ids, catalog order) and ``decision``."""

    findings: tuple[str, ...]
    decision: str

    @property
    def referable(self) -> bool:
        return self.decision in REFERABLE_DECISIONS

    @property
    def code(self) -> int:
        """The index of ``decision`` in ``contract.DECISIONS`` (the ``REFERRAL`` tensor's value)."""
        return DECISIONS.index(self.decision)


@dataclass(frozen=True)
class ReferralRules:
    """Per-disease rules in catalog order and the gradability thresholds; see the module docstring."""

    diseases: tuple[DiseaseRule, ...]
    quality: Mapping[str, Any] = field(default_factory=dict)
    format: str = RULES_FORMAT

    def __post_init__(self) -> None:
        if self.format != RULES_FORMAT:
            raise RulesError(f"referral rules of format {self.format!r}; this version reads {RULES_FORMAT!r}")
        ids = [d.id for d in self.diseases]
        if not ids or len(set(ids)) != len(ids):
            raise RulesError(f"referral rules need distinct diseases, got {ids}")

    @classmethod
    def from_catalog(cls, catalog: Catalog, quality: Mapping[str, Any]) -> ReferralRules:
        """The rules of ``catalog`` (thresholds and referrals) with the gradability thresholds ``quality``."""
        return cls(
            diseases=tuple(DiseaseRule(d.id, d.threshold, d.referral) for d in catalog),
            quality=dict(quality),
        )

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.diseases]

    @property
    def thresholds(self) -> dict[str, float]:
        return {d.id: d.threshold for d in self.diseases}

    def check_catalog(self, catalog: Catalog) -> None:
        """Raise ``RulesError`` unless these rules are exactly the catalog's thresholds and referrals."""
        expected = [(d.id, d.threshold, d.referral) for d in catalog]
        actual = [(d.id, d.threshold, d.referral) for d in self.diseases]
        if expected != actual:
            raise RulesError(f"referral rules {actual} disagree with the catalog's {expected}")

    def decide(self, probabilities: Sequence[float], *, gradable: bool) -> Decision:
        """The decision of one image from its probabilities (catalog order) and gradability."""
        if len(probabilities) != len(self.diseases):
            raise ValueError(f"{len(probabilities)} probabilities for {len(self.diseases)} rules")
        if not gradable:
            return Decision(findings=(), decision=UNGRADABLE)
        findings = tuple(d.id for d, p in zip(self.diseases, probabilities, strict=True) if float(p) >= d.threshold)
        by_id = {d.id: d for d in self.diseases}
        decisions = [_DECISION_OF_REFERRAL[by_id[f].referral] for f in findings]
        return Decision(findings=findings, decision=max(decisions, key=_URGENCY.__getitem__, default=NO_REFERRAL))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "diseases": [{"id": d.id, "threshold": d.threshold, "referral": d.referral} for d in self.diseases],
            "quality": dict(self.quality),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        """First 16 hex of the sha256 of the canonical JSON: changes with any threshold or rule."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferralRules:
        try:
            diseases = tuple(
                DiseaseRule(str(d["id"]), float(d["threshold"]), str(d["referral"])) for d in data["diseases"]
            )
            return cls(diseases=diseases, quality=dict(data.get("quality") or {}), format=str(data["format"]))
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, RulesError):
                raise
            raise RulesError(f"not referral rules: {e!r}") from e

    @classmethod
    def from_json(cls, text: str) -> ReferralRules:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise RulesError(f"referral rules are not valid JSON: {e}") from e
