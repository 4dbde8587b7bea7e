"""The disease catalog: the single source of disease ids, names, descriptions, thresholds and
referral rules.

Training writes the catalog into every checkpoint, export copies it into the ONNX metadata,
and the model repository serves it in the ensemble's config parameters, from which the client
reads labels, thresholds and referral rules. Nothing else defines a disease. Users bring
their own catalog as a JSON file (``load_catalog``); ``Catalog.digest`` names a catalog's exact
content in results and artefacts.
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

    @property
    def description(self) -> str:
        """The short description: the first of ``descriptions``."""
        return self.descriptions[0]

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


# ----------------------------------------------------------------------------- default content

VOCABULARY: dict[str, dict[str, str]] = {
    "location": {
        "fovea": "at the fovea",
        "macula": "within the macula",
        "perifoveal_ring": "in a ring around the fovea",
        "one_side": "on one side of the fovea",
        "optic_disc": "at the optic disc",
        "peripapillary": "around the optic disc margin",
        "arcades": "along the temporal vascular arcades",
        "posterior_pole": "scattered across the posterior pole",
        "one_sector": "in one sector along a single vein",
        "mid_periphery": "in the mid-periphery",
        "periphery": "in the far periphery",
        "single_focus": "as a single focus",
        "whole_image": "over the whole image",
    },
    "fundus": {
        "red_dots": "small dark red dots",
        "red_blots": "dark red blots",
        "flame_haemorrhages": "flame-shaped haemorrhages",
        "yellow_exudates": "bright yellow spots with sharp edges",
        "soft_yellow_spots": "pale yellow soft-edged spots",
        "cotton_wool": "fluffy white patches",
        "pigment_clumps": "dark pigment clumps",
        "atrophic_patch": "a pale atrophic patch with visible choroidal vessels",
        "enlarged_cup": "an enlarged optic cup with a thin rim",
        "pale_disc": "a pale optic disc",
        "swollen_disc": "a swollen optic disc with blurred margins",
        "dilated_veins": "dilated tortuous veins",
        "narrow_vessels": "narrowed retinal vessels",
        "red_grey_patch": "a dark red-grey patch",
        "faint_blister": "a faint round blister",
        "glistening_sheen": "a glistening wrinkled sheen",
        "red_spot": "a small round dark red spot",
        "pale_crescent": "a pale crescent beside the disc",
        "tessellation": "visible choroidal vessels",
        "haze": "a diffuse haze that lowers contrast",
        "new_vessels": "fine tangled new vessels",
        "grey_elevation": "a grey elevated retina with folds",
        "grey_patch": "a flat slate-grey patch",
        "whitening": "pale whitened retina",
    },
    "oct": {
        "irc": "intraretinal cysts",
        "thickening": "retinal thickening",
        "srf": "subretinal fluid",
        "rpe_elevation": "small RPE elevations",
        "ped": "a pigment epithelial detachment",
        "hrf": "hyperreflective foci",
        "rnfl_thinning": "thinning of the nerve fibre layer",
        "rnfl_swelling": "a thickened nerve fibre layer",
        "outer_loss": "loss of the outer retinal layers",
        "membrane": "a bright membrane on the inner retinal surface",
        "fth": "a full-thickness gap in the retina",
        "hypertransmission": "bright signal below an atrophic RPE",
        "staphyloma": "a steeply curved eye wall with a thin choroid",
        "attenuation": "weak signal across the whole scan",
        "inner_bright": "a bright swollen inner retina",
        "choroid_shadow": "a dark shadow in the choroid",
    },
}
"""The controlled vocabulary the default descriptions are composed of: where a finding lies
(``location``), how it looks on a colour fundus photograph (``fundus``) and on OCT (``oct``).
Categories share concepts, so a category left out of training is still described in phrases
the trained categories taught (zero-shot); ``training/predilect/training/phantom/README.md`` documents it."""


@dataclass(frozen=True)
class Concepts:
    """The vocabulary keys one default category is described with."""

    fundus: tuple[str, ...]
    where: tuple[str, ...]
    oct: tuple[str, ...]
    oct_where: tuple[str, ...]


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _phrases(kind: str, keys: tuple[str, ...]) -> list[str]:
    return [VOCABULARY[kind][k] for k in keys]


def describe(concepts: Concepts) -> tuple[str, str, str, str]:
    """Four descriptions built from the vocabulary: summary, fundus, location, OCT."""
    fundus, where = _phrases("fundus", concepts.fundus), _phrases("location", concepts.where)
    oct_, oct_where = _phrases("oct", concepts.oct), _phrases("location", concepts.oct_where)
    return (
        f"{_join(fundus).capitalize()} {where[0]}; {_join(oct_)} on OCT.",
        f"On a colour fundus photograph: {_join(fundus)}.",
        f"Usual location: {_join(where)}.",
        f"On OCT: {_join(oct_)} {_join(oct_where)}.",
    )


def _default(
    disease_id: str, name: str, *, referral: str, concepts: Concepts, note: str
) -> tuple[Disease, tuple[str, Concepts]]:
    disease = Disease(id=disease_id, name=name, descriptions=(*describe(concepts), note), referral=referral)
    return disease, (disease_id, concepts)


_C = Concepts
_DEFAULTS = (
    _default(
        "dr",
        "Referable diabetic retinopathy",
        referral="routine",
        concepts=_C(("red_dots", "red_blots", "cotton_wool"), ("arcades", "posterior_pole"), ("hrf",), ("macula",)),
        note="Moderate non-proliferative diabetic retinopathy or worse: microaneurysms and intraretinal dot and blot "
        "haemorrhages in several quadrants, cotton-wool spots and venous beading as it progresses; from a single "
        "microaneurysm in mild disease to many haemorrhages in severe disease.",
    ),
    _default(
        "dme",
        "Diabetic macular oedema",
        referral="routine",
        concepts=_C(("yellow_exudates",), ("perifoveal_ring", "macula"), ("irc", "thickening"), ("fovea",)),
        note="Centre-involving diabetic macular oedema: leaking microaneurysms leave hard exudates, often in a "
        "circinate ring; the photograph may show only a few faint exudates while OCT shows clear thickening "
        "with cystoid spaces.",
    ),
    _default(
        "amd",
        "Age-related macular degeneration (dry)",
        referral="routine",
        concepts=_C(
            ("soft_yellow_spots", "pigment_clumps", "atrophic_patch"),
            ("macula",),
            ("rpe_elevation", "hypertransmission"),
            ("macula",),
        ),
        note="Intermediate or atrophic non-neovascular AMD: large soft drusen, pigmentary change and, late, "
        "geographic atrophy of the retinal pigment epithelium centred on the macula.",
    ),
    _default(
        "glaucoma",
        "Glaucoma suspect (glaucomatous optic disc)",
        referral="routine",
        concepts=_C(
            ("enlarged_cup", "pale_crescent"), ("optic_disc", "peripapillary"), ("rnfl_thinning",), ("peripapillary",)
        ),
        note="Glaucomatous optic neuropathy suspected from the disc: a large cup-to-disc ratio, thinning or notching "
        "of the neuroretinal rim and peripapillary atrophy; cup sizes of healthy and glaucomatous discs overlap, "
        "while OCT shows the nerve fibre layer loss.",
    ),
    _default(
        "rvo",
        "Branch retinal vein occlusion",
        referral="routine",
        concepts=_C(
            ("flame_haemorrhages", "dilated_veins", "cotton_wool"),
            ("one_sector",),
            ("irc", "thickening"),
            ("one_side",),
        ),
        note="Occlusion of a branch retinal vein, usually at an arteriovenous crossing: haemorrhages confined to the "
        "drained sector (superior or inferior), a dilated tortuous vein and macular oedema on that side.",
    ),
    _default(
        "rp",
        "Retinitis pigmentosa",
        referral="routine",
        concepts=_C(
            ("pigment_clumps", "narrow_vessels", "pale_disc"), ("mid_periphery",), ("outer_loss",), ("mid_periphery",)
        ),
        note="Inherited rod-cone dystrophy: bone-spicule pigment migration in the mid-periphery, arteriolar "
        "attenuation and waxy disc pallor; OCT shows ellipsoid-zone loss outside a preserved central island.",
    ),
    _default(
        "namd",
        "Neovascular (wet) age-related macular degeneration",
        referral="urgent",
        concepts=_C(
            ("red_grey_patch", "yellow_exudates", "soft_yellow_spots"), ("macula",), ("ped", "srf", "irc"), ("fovea",)
        ),
        note="Choroidal neovascularisation under the macula: a grey-green membrane with subretinal haemorrhage and "
        "exudate, often beside drusen; OCT shows a pigment epithelial detachment with subretinal and intraretinal "
        "fluid. Sight-threatening within weeks.",
    ),
    _default(
        "pdr",
        "Proliferative diabetic retinopathy",
        referral="urgent",
        concepts=_C(
            ("new_vessels", "red_blots", "cotton_wool"), ("optic_disc", "arcades"), ("membrane", "hrf"), ("optic_disc",)
        ),
        note="New vessels at the disc or elsewhere, pre-retinal or vitreous haemorrhage and fibrovascular "
        "proliferation; untreated it leads to tractional detachment.",
    ),
    _default(
        "drusen",
        "Drusen (early age-related change)",
        referral="none",
        concepts=_C(("soft_yellow_spots",), ("macula",), ("rpe_elevation",), ("macula",)),
        note="A few small or medium drusen without pigmentary change: an age-related finding to record, not to refer; "
        "isolated small drusen also occur in healthy eyes.",
    ),
    _default(
        "csc",
        "Central serous chorioretinopathy",
        referral="routine",
        concepts=_C(("faint_blister",), ("macula",), ("srf",), ("fovea",)),
        note="A serous detachment of the neurosensory retina, often in young adults: on the photograph only a subtle "
        "round elevation at the macula, on OCT an obvious dome of subretinal fluid under the fovea.",
    ),
    _default(
        "erm",
        "Epiretinal membrane",
        referral="routine",
        concepts=_C(("glistening_sheen",), ("macula",), ("membrane", "thickening"), ("macula",)),
        note="Cellophane maculopathy: a semi-translucent membrane over the macula with a glistening reflex and "
        "retinal striae, easy to miss on the photograph; OCT shows the membrane and the thickened, wrinkled retina.",
    ),
    _default(
        "macular_hole",
        "Full-thickness macular hole",
        referral="routine",
        concepts=_C(("red_spot",), ("fovea",), ("fth", "irc"), ("fovea",)),
        note="A round full-thickness defect of the neurosensory retina at the foveal centre with a cuff of fluid; "
        "OCT shows the gap with cystic edges.",
    ),
    _default(
        "crvo",
        "Central retinal vein occlusion",
        referral="urgent",
        concepts=_C(
            ("flame_haemorrhages", "dilated_veins", "swollen_disc", "cotton_wool"),
            ("peripapillary", "posterior_pole"),
            ("irc", "thickening"),
            ("fovea",),
        ),
        note="Occlusion of the central retinal vein: haemorrhages in all four quadrants radiating from the disc, "
        "dilated tortuous veins, disc swelling and macular oedema.",
    ),
    _default(
        "hypertensive",
        "Hypertensive retinopathy",
        referral="routine",
        concepts=_C(
            ("narrow_vessels", "flame_haemorrhages", "cotton_wool"),
            ("posterior_pole", "peripapillary"),
            ("hrf", "thickening"),
            ("macula",),
        ),
        note="Retinal signs of raised blood pressure: generalised arteriolar narrowing and arteriovenous nicking, "
        "then flame haemorrhages and cotton-wool spots around the disc and posterior pole.",
    ),
    _default(
        "papilloedema",
        "Optic disc swelling",
        referral="urgent",
        concepts=_C(
            ("swollen_disc", "flame_haemorrhages"),
            ("optic_disc", "peripapillary"),
            ("rnfl_swelling",),
            ("peripapillary",),
        ),
        note="Swelling of the optic disc (papilloedema when from raised intracranial pressure): blurred elevated "
        "disc margins obscuring the vessels, with peripapillary haemorrhages.",
    ),
    _default(
        "myopia",
        "Pathologic myopia",
        referral="routine",
        concepts=_C(
            ("tessellation", "pale_crescent", "atrophic_patch"),
            ("posterior_pole", "peripapillary", "macula"),
            ("staphyloma",),
            ("macula",),
        ),
        note="Degenerative high myopia: a tessellated fundus, a tilted disc with a temporal myopic crescent, and "
        "patchy chorioretinal atrophy at the macula over a posterior staphyloma.",
    ),
    _default(
        "optic_atrophy",
        "Optic atrophy",
        referral="routine",
        concepts=_C(("pale_disc", "narrow_vessels"), ("optic_disc",), ("rnfl_thinning",), ("peripapillary",)),
        note="Loss of optic nerve fibres from any cause: a pale disc with attenuated vessels and diffuse nerve fibre "
        "layer thinning.",
    ),
    _default(
        "rao",
        "Retinal artery occlusion",
        referral="urgent",
        concepts=_C(("whitening", "red_spot", "narrow_vessels"), ("macula", "fovea"), ("inner_bright",), ("macula",)),
        note="Occlusion of the central retinal artery or a branch: ischaemic whitening of the inner retina with a "
        "cherry-red spot at the fovea; an eye and stroke emergency.",
    ),
    _default(
        "retinal_detachment",
        "Retinal detachment",
        referral="urgent",
        concepts=_C(("grey_elevation",), ("periphery", "one_sector"), ("srf",), ("periphery",)),
        note="Rhegmatogenous retinal detachment: a grey, elevated, corrugated retina spreading from a peripheral "
        "break towards the macula; urgent while the macula is still attached.",
    ),
    _default(
        "media_opacity",
        "Media opacity",
        referral="routine",
        concepts=_C(("haze",), ("whole_image",), ("attenuation",), ("whole_image",)),
        note="Cataract, corneal or vitreous opacity: the whole image is hazy and low in contrast with blurred "
        "vessels; the retina itself may be normal.",
    ),
    _default(
        "naevus",
        "Choroidal naevus",
        referral="none",
        concepts=_C(("grey_patch",), ("single_focus", "posterior_pole"), ("choroid_shadow",), ("single_focus",)),
        note="A flat pigmented choroidal lesion, usually benign: record its size; refer only if thick, with fluid or "
        "orange pigment.",
    ),
    _default(
        "chorioretinal_scar",
        "Chorioretinal scar",
        referral="none",
        concepts=_C(
            ("atrophic_patch", "pigment_clumps"),
            ("single_focus",),
            ("outer_loss", "hypertransmission"),
            ("single_focus",),
        ),
        note="An inactive scar after inflammation or infection (e.g. toxoplasmosis) or laser: a punched-out pale "
        "patch with pigmented edges.",
    ),
)

DEFAULT_CATALOG = Catalog(diseases=tuple(disease for disease, _ in _DEFAULTS), version="2")
"""The screening categories shipped with Predilect; ``normal`` is the absence of all of them."""

DEFAULT_CONCEPTS: dict[str, Concepts] = dict(pair for _, pair in _DEFAULTS)
"""The vocabulary keys each default category's descriptions are built from."""


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
