"""The disease catalog: the single source of disease ids, names, descriptions, thresholds and
referral rules.

Training writes the catalog into every checkpoint, export copies it into the ONNX metadata,
and the model repository serves it in the ensemble's config parameters, from which the client
reads labels, thresholds and referral rules. Nothing else defines a disease. The default
catalog is a JSON file (``catalogs/default.json``) read by the same ``load_catalog`` as a user's
own catalog file; ``Catalog.digest`` names a catalog's exact content in results and artefacts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from predilect.errors import UserError

NORMAL_LABEL = "normal"
REFERRALS = ("urgent", "routine", "none")
"""What a positive finding triggers: refer urgently, refer routinely, or record only."""


class CatalogError(UserError, ValueError):
    """A catalog (or catalog file) that breaks the rules below; the message names the entry."""


@dataclass(frozen=True)
class Disease:
    """One screened condition.

    ``descriptions`` are the extended expert descriptions of the condition (its appearance on
    fundus photographs and on OCT, where it usually lies); the text encoder reads them, and
    the first is the short one shown to people. ``threshold`` is the operating point on the
    per-disease probability at or above which the finding is positive; ``referral`` says what
    a positive finding triggers (one of ``REFERRALS``).
    """

    id: str
    name: str
    descriptions: tuple[str, ...]
    threshold: float = 0.5
    referral: str = "routine"

    def __post_init__(self) -> None:
        if not self.id.isidentifier() or self.id != self.id.lower():
            raise CatalogError(f"disease id must be a lower-case identifier, got {self.id!r}")
        if self.id == NORMAL_LABEL:
            raise CatalogError(f"{NORMAL_LABEL!r} is the absence of every disease, not a disease")
        if not self.descriptions or not all(isinstance(d, str) and d.strip() for d in self.descriptions):
            raise CatalogError(f"disease {self.id!r} needs at least one non-empty description")
        if not 0.0 < self.threshold < 1.0:
            raise CatalogError(f"threshold of {self.id!r} must lie in (0, 1), got {self.threshold}")
        if self.referral not in REFERRALS:
            raise CatalogError(f"referral of {self.id!r} must be one of {REFERRALS}, got {self.referral!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "descriptions": list(self.descriptions),
            "threshold": self.threshold,
            "referral": self.referral,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Disease:
        data = dict(data)
        if "description" in data:  # catalogs written before descriptions became a list
            data.setdefault("descriptions", [data.pop("description")])
        unknown = sorted(set(data) - {"id", "name", "descriptions", "threshold", "referral"})
        if unknown:
            raise CatalogError(f"disease {data.get('id')!r}: unknown fields {unknown}")
        try:
            return cls(**{**data, "descriptions": tuple(data.get("descriptions") or ())})
        except TypeError as e:
            raise CatalogError(f"disease {data.get('id')!r}: {e}") from e


@dataclass(frozen=True)
class Catalog:
    """An ordered list of diseases; the order is the order of the model's outputs."""

    diseases: tuple[Disease, ...]
    version: str = "1"
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = [d.id for d in self.diseases]
        if not ids:
            raise CatalogError("a catalog needs at least one disease")
        if len(set(ids)) != len(ids):
            raise CatalogError(f"duplicate disease ids in catalog: {ids}")
        object.__setattr__(self, "_index", {d: i for i, d in enumerate(ids)})

    def __len__(self) -> int:
        return len(self.diseases)

    def __iter__(self) -> Iterator[Disease]:
        return iter(self.diseases)

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.diseases]

    @property
    def thresholds(self) -> list[float]:
        return [d.threshold for d in self.diseases]

    def index(self, disease_id: str) -> int:
        try:
            return self._index[disease_id]
        except KeyError as e:
            raise KeyError(f"unknown disease id {disease_id!r}; catalog has {self.ids}") from e

    def __getitem__(self, disease_id: str) -> Disease:
        return self.diseases[self.index(disease_id)]

    def subset(self, ids: list[str]) -> Catalog:
        """The catalog of ``ids`` only, in the given order (e.g. the categories a model was trained on)."""
        return Catalog(diseases=tuple(self[i] for i in ids), version=self.version)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "diseases": [d.to_dict() for d in self.diseases]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        """First 16 hex of the sha256 of the canonical JSON: changes with any id, text, threshold or rule."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Catalog:
        try:
            diseases = tuple(Disease.from_dict(d) for d in data["diseases"])
            return cls(diseases=diseases, version=str(data.get("version", "1")))
        except (KeyError, TypeError, AttributeError) as e:
            raise CatalogError(f"not a catalog: {e!r}; expected {{'version': ..., 'diseases': [...]}}") from e

    @classmethod
    def from_json(cls, text: str) -> Catalog:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise CatalogError(f"catalog is not valid JSON: {e}") from e


def load_catalog(path: str | Path) -> Catalog:
    """Read a catalog JSON file (``{"version": ..., "diseases": [{"id", "name", "descriptions", ...}]}``)."""
    path = Path(path)
    try:
        return Catalog.from_json(path.read_text(encoding="utf-8"))
    except CatalogError as e:
        raise CatalogError(f"{path}: {e}") from e


DEFAULT_CATALOG_FILE = Path(__file__).with_name("catalogs") / "default.json"
"""The screening categories shipped with Predilect, a catalog file like any user's."""

DEFAULT_CATALOG = load_catalog(DEFAULT_CATALOG_FILE)
"""The catalog of ``DEFAULT_CATALOG_FILE``; ``normal`` is the absence of all of them. Its first four
descriptions of each category are composed from a controlled vocabulary
(``predilect.training.phantom.vocabulary``), the fifth is an expert note."""


SIDECAR_CATALOG = "phantom_catalog.json"
"""A catalog file beside a manifest (the phantom writes one) that --catalog defaults to."""


def resolve_catalog(path: Path | None, manifest: Path) -> tuple[Catalog, str]:
    """The catalog of ``--catalog`` if given, else the one beside ``manifest``, else the built-in;
    and a phrase saying which (commands print it)."""
    if path is not None:
        return load_catalog(path), str(path)
    sidecar = Path(manifest).with_name(SIDECAR_CATALOG)
    if sidecar.is_file():
        return load_catalog(sidecar), str(sidecar)
    return DEFAULT_CATALOG, "the built-in catalog"
