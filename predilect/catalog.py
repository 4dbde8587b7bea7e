"""The disease catalog: the single source of disease ids, names, descriptions and thresholds.

Training writes the catalog into every checkpoint, export copies it into the ONNX metadata,
and the model repository serves it in the ensemble's config parameters, from which the client
reads labels and thresholds. Nothing else defines a disease.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

NORMAL_LABEL = "normal"


@dataclass(frozen=True)
class Disease:
    """One screened condition.

    ``threshold`` is the operating point on the per-disease probability above which the
    finding is reported as positive (referable).
    """

    id: str
    name: str
    description: str
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if not self.id.isidentifier() or self.id != self.id.lower():
            raise ValueError(f"disease id must be a lower-case identifier, got {self.id!r}")
        if self.id == NORMAL_LABEL:
            raise ValueError(f"{NORMAL_LABEL!r} is the absence of every disease, not a disease")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold of {self.id!r} must lie in (0, 1), got {self.threshold}")


@dataclass(frozen=True)
class Catalog:
    """An ordered list of diseases; the order is the order of the model's outputs."""

    diseases: tuple[Disease, ...]
    version: str = "1"
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = [d.id for d in self.diseases]
        if not ids:
            raise ValueError("a catalog needs at least one disease")
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate disease ids in catalog: {ids}")
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

    def to_dict(self) -> dict:
        return {"version": self.version, "diseases": [asdict(d) for d in self.diseases]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict) -> Catalog:
        return cls(diseases=tuple(Disease(**d) for d in data["diseases"]), version=str(data["version"]))

    @classmethod
    def from_json(cls, text: str) -> Catalog:
        return cls.from_dict(json.loads(text))


DEFAULT_CATALOG = Catalog(
    diseases=(
        Disease(
            id="dr",
            name="Diabetic retinopathy",
            description="Microaneurysms and dot-blot haemorrhages scattered along the vascular arcades.",
        ),
        Disease(
            id="dme",
            name="Diabetic macular oedema",
            description="Hard exudates in a circinate pattern around the fovea; intraretinal cysts on OCT.",
        ),
        Disease(
            id="amd",
            name="Age-related macular degeneration",
            description="Soft drusen clustered in the macula; RPE elevations on OCT.",
        ),
        Disease(
            id="glaucoma",
            name="Glaucomatous optic neuropathy",
            description="Enlarged optic cup (high cup-to-disc ratio) with peripapillary changes; RNFL thinning on OCT.",
        ),
        Disease(
            id="rvo",
            name="Retinal vein occlusion",
            description="Flame haemorrhages following one venous branch in a sector of the retina.",
        ),
        Disease(
            id="rp",
            name="Retinitis pigmentosa",
            description="Bone-spicule pigment in the mid-periphery; outer-retinal loss outside the macula on OCT.",
        ),
    ),
    version="1",
)
