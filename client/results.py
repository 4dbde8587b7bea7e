"""The screening result returned by the clients, and the per-input item of ``screen_many``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from predilect.catalog import Catalog
from predilect.client.errors import PredilectClientError


class ScreeningResult(BaseModel):
    """Per-disease probabilities of one fundus photograph and the findings they imply.

    ``probabilities`` is keyed by catalog id in catalog order; ``positive`` lists the ids whose
    probability reaches that disease's threshold; ``referable`` is true when any is positive.
    ``sop_instance_uid`` and ``frame`` (1-based) are filled locally for DICOM inputs: they are
    never sent to the server, only used to correlate the answer with its source.
    """

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    probabilities: dict[str, float]
    positive: list[str]
    referable: bool
    model_name: str
    model_version: str
    latency_s: float
    sop_instance_uid: str | None = None
    frame: int | None = None

    @classmethod
    def from_probabilities(
        cls,
        probabilities: Sequence[float],
        catalog: Catalog,
        *,
        model_name: str,
        model_version: str,
        latency_s: float,
        sop_instance_uid: str | None = None,
        frame: int | None = None,
    ) -> ScreeningResult:
        """Apply the catalog's thresholds to probabilities given in catalog order."""
        if len(probabilities) != len(catalog):
            raise ValueError(f"{len(probabilities)} probabilities for a catalog of {len(catalog)} diseases")
        by_id = {d.id: float(p) for d, p in zip(catalog, probabilities, strict=True)}
        positive = [d.id for d in catalog if by_id[d.id] >= d.threshold]
        return cls(
            probabilities=by_id,
            positive=positive,
            referable=bool(positive),
            model_name=model_name,
            model_version=model_version,
            latency_s=latency_s,
            sop_instance_uid=sop_instance_uid,
            frame=frame,
        )

    def to_json(self, *, indent: int | None = None) -> str:
        """The result as JSON (keys as the fields, probabilities in catalog order)."""
        return self.model_dump_json(indent=indent)


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
