"""The screening result returned by ``ScreeningClient.screen``."""
from __future__ import annotations

from typing import Sequence

from pydantic import BaseModel, ConfigDict

from predilect.catalog import Catalog


class ScreeningResult(BaseModel):
    """Per-disease probabilities of one fundus photograph and the findings they imply.

    ``probabilities`` is keyed by catalog id in catalog order; ``positive`` lists the ids whose
    probability reaches that disease's threshold; ``referable`` is true when any is positive.
    """

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    probabilities: dict[str, float]
    positive: list[str]
    referable: bool
    model_name: str
    model_version: str
    latency_s: float

    @classmethod
    def from_probabilities(cls, probabilities: Sequence[float], catalog: Catalog, *, model_name: str,
                           model_version: str, latency_s: float) -> "ScreeningResult":
        """Apply the catalog's thresholds to probabilities given in catalog order."""
        if len(probabilities) != len(catalog):
            raise ValueError(f"{len(probabilities)} probabilities for a catalog of {len(catalog)} diseases")
        by_id = {d.id: float(p) for d, p in zip(catalog, probabilities)}
        positive = [d.id for d in catalog if by_id[d.id] >= d.threshold]
        return cls(probabilities=by_id, positive=positive, referable=bool(positive), model_name=model_name,
                   model_version=model_version, latency_s=latency_s)

    def to_json(self, *, indent: int | None = None) -> str:
        """The result as JSON (keys as the fields, probabilities in catalog order)."""
        return self.model_dump_json(indent=indent)
