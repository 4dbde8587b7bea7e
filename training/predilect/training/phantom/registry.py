"""The one registry of phantom diseases: what each draws on the fundus and on OCT, and where.

Every disease the phantom can draw is one ``PhantomDisease``: a fundus recipe and an OCT recipe
composed of the concept painters (``fundus_lesions``, ``oct``), and the vocabulary keys it
draws (``draws``, a subset of ``vocabulary.DEFAULT_CONCEPTS`` for that id, so what is drawn
is what the descriptions say). Recipes take ``severity``: ``None`` for the easy preset (the
original fixed ranges, same pixels for the same seed) or a value in [0, 1] for the hard preset
(from a single faint lesion to florid). The order of ``REGISTRY`` fixes each disease's random
stream; append new diseases at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from predilect.training.phantom import fundus_lesions as fl
from predilect.training.phantom import oct as oc
from predilect.training.phantom.dose import Dose, graded, lerp
from predilect.training.phantom.fundus import Anatomy, Findings
from predilect.training.phantom.oct import Scan
from predilect.training.phantom.vocabulary import DEFAULT_CONCEPTS, Concepts

FundusRecipe = Callable[[Findings, Anatomy, np.random.Generator, "float | None"], None]
OctRecipe = Callable[[Scan, np.random.Generator, "float | None"], None]


@dataclass(frozen=True)
class PhantomDisease:
    """One drawable disease. ``oct_visible``: subtle on the fundus, obvious on OCT (hard preset)."""

    id: str
    fundus: FundusRecipe
    oct: OctRecipe
    draws: Concepts
    oct_visible: bool = False


def _gate(severity: float, start: float) -> float | None:
    """The severity of an extra that appears from ``start`` on, rescaled to [0, 1]; None below."""
    return None if severity < start else (severity - start) / (1.0 - start) if start < 1.0 else 1.0


def _amount(severity: float | None, mild: float, florid: float) -> Dose:
    """A fixed amplitude multiplier for an OCT edit: 1 for the easy preset."""
    k = 1.0 if severity is None else lerp(mild, florid, severity)
    return Dose(scale=(k, k))


# ----------------------------------------------------------------------------- the original six


def _dr(f: Findings, a: Anatomy, rng: np.random.Generator, severity: float | None) -> None:
    if severity is None:
        fl.dots_and_blots(f, a, rng, Dose(count=(25, 56), contrast=(0.75, 1.0)), fl.arcade_sites(a))
        return
    fl.dots_and_blots(f, a, rng, graded(severity, count=(1, 45), contrast=(0.45, 0.95)), fl.arcade_sites(a))
    extra = _gate(severity, 0.55)
    if extra is not None:
        fl.cotton_wool(f, a, rng, graded(extra, count=(1, 4), contrast=(0.45, 0.8)), fl.posterior_pole_sites(a))


def _dr_oct(scan: Scan, rng: np.random.Generator, severity: float | None) -> None:
    dose = Dose(count=(20, 41)) if severity is None else graded(severity, count=(4, 40))
    oc.hyperreflective_foci(scan, rng, dose)


def _dme(f: Findings, a: Anatomy, rng: np.random.Generator, severity: float | None) -> None:
    if severity is None:
        fl.exudate_ring(f, a, rng, Dose(count=(10, 22), contrast=(0.75, 1.0)))
    else:  # subtle on the fundus: from one faint cluster of exudates
        fl.exudate_ring(f, a, rng, graded(severity, count=(1, 14), contrast=(0.3, 0.85)))


def _dme_oct(scan: Scan, rng: np.random.Generator, severity: float | None) -> None:
    dose = _amount(severity, 0.8, 1.3)  # obvious on OCT at any severity
    count = (3, 9) if severity is None else graded(severity, count=(3, 9)).count
    oc.central_oedema(scan, rng, Dose(count=count, scale=dose.scale))


def _amd(f: Findings, a: Anatomy, rng: np.random.Generator, severity: float | None) -> None:
    if severity is None:
        fl.soft_spots(f, a, rng, Dose(count=(14, 36), contrast=(0.7, 1.0)))
        return
    fl.soft_spots(f, a, rng, graded(severity, count=(3, 32), contrast=(0.45, 1.0)))
    clumps = _gate(severity, 0.45)
    if clumps is not None:
        fl.pigment_clumps(f, a, rng, graded(clumps, count=(1, 6), contrast=(0.4, 0.8)), a.fovea, 0.5)
    atrophy = _gate(severity, 0.75)
    if atrophy is not None:
        fl.atrophic_patch(
            f, a, rng, graded(atrophy, count=(1, 2), contrast=(0.5, 0.85), scale=(0.2, 0.45)), a.fovea, 0.3
        )


def _amd_oct(scan: Scan, rng: np.random.Generator, severity: float | None) -> None:
    if severity is None:
        oc.rpe_elevation(scan, rng, Dose(count=(2, 6)))
        return
    oc.rpe_elevation(
        scan, rng, Dose(count=graded(severity, count=(1, 6)).count, scale=_amount(severity, 0.7, 1.1).scale)
    )
    atrophy = _gate(severity, 0.75)
    if atrophy is not None:
        oc.hypertransmission(scan, rng, Dose(count=(1, 3)))


def _glaucoma(f: Findings, a: Anatomy, rng: np.random.Generator, severity: float | None) -> None:
    if severity is None:
        fl.glaucomatous_disc(f, a, rng, Dose(scale=(0.7, 0.9), contrast=(0.75, 0.95)))
    else:  # cup ratios from 0.5 overlap the healthy range (up to 0.62 in the hard preset)
        fl.glaucomatous_disc(f, a, rng, graded(severity, scale=(0.5, 0.85), contrast=(0.2, 0.9)))


def _glaucoma_oct(scan: Scan, rng: np.random.Generator, severity: float | None) -> None:
    oc.rnfl_thinning(scan, rng, _amount(severity, 0.75, 1.15))


def _rvo(f: Findings, a: Anatomy, rng: np.random.Generator, severity: float | None) -> None:
    trunk = "superior_temporal" if rng.random() < 0.5 else "inferior_temporal"
    if severity is None:
        dose = Dose(count=(25, 56), contrast=(0.7, 1.0), scale=(1.25, 1.45))
    else:
        dose = graded(severity, count=(2, 45), contrast=(0.45, 1.0), scale=(1.1, 1.45))
    f.scale_vessels("vein", trunk, rng.uniform(*dose.scale))
    points, tangents = fl.vein_sites(a, trunks=(trunk,))
    fl.flames(f, a, rng, dose, points, tangents)
    extra = None if severity is None else _gate(severity, 0.6)
    if extra is not None:
        fl.cotton_wool(f, a, rng, graded(extra, count=(1, 4), contrast=(0.45, 0.8)), points)


def _rvo_oct(scan: Scan, rng: np.random.Generator, severity: float | None) -> None:
    count = (4, 11) if severity is None else graded(severity, count=(2, 10)).count
    oc.hemi_oedema(scan, rng, Dose(count=count, scale=_amount(severity, 0.7, 1.1).scale))


def _rp(f: Findings, a: Anatomy, rng: np.random.Generator, severity: float | None) -> None:
    if severity is None:
        dose = Dose(count=(40, 91), contrast=(0.75, 1.0), scale=(0.55, 0.7))
    else:
        dose = graded(severity, count=(5, 80), contrast=(0.5, 1.0), scale=(0.9, 0.55))
    attenuation = rng.uniform(*dose.scale)
    f.scale_vessels("vein", "*", attenuation)
    f.scale_vessels("artery", "*", attenuation)
    fl.pigment_spicules(f, a, rng, dose)


def _rp_oct(scan: Scan, rng: np.random.Generator, severity: float | None) -> None:
    oc.outer_loss(scan, rng, _amount(severity, 1.5, 1.0))  # a larger spared island when mild


# ----------------------------------------------------------------------------- more categories


def _florid(severity: float | None) -> float:
    return 1.0 if severity is None else severity


def _namd(f: Findings, a: Anatomy, rng: np.random.Generator, severity: float | None) -> None:
    s = _florid(severity)
    fl.red_grey_patch(f, a, rng, graded(s, contrast=(0.45, 1.0), scale=(0.3, 0.9)))
    fl.exudates(f, a, rng, graded(s, count=(0, 8), contrast=(0.5, 0.9)), a.fovea, 0.6)
    fl.soft_spots(f, a, rng, graded(s, count=(2, 8), contrast=(0.5, 0.8)))


def _namd_oct(scan: Scan, rng: np.random.Generator, severity: float | None) -> None:
    s = _florid(severity)
    oc.pigment_epithelial_detachment(scan, rng, _amount(s, 0.7, 1.2))
    oc.subretinal_fluid(scan, rng, _amount(s, 0.5, 1.0), width=(0.04, 0.07))
    oc.central_oedema(scan, rng, Dose(count=graded(s, count=(0, 4)).count, scale=(0.3, 0.3)), reach=0.06)


def _csc(f: Findings, a: Anatomy, rng: np.random.Generator, severity: float | None) -> None:
    fl.faint_blister(f, a, rng, graded(_florid(severity), contrast=(0.25, 0.75), scale=(0.6, 1.1)))


def _csc_oct(scan: Scan, rng: np.random.Generator, severity: float | None) -> None:
    oc.subretinal_fluid(scan, rng, _amount(_florid(severity), 0.8, 1.5), width=(0.05, 0.09))


def _erm(f: Findings, a: Anatomy, rng: np.random.Generator, severity: float | None) -> None:
    fl.glistening_sheen(f, a, rng, graded(_florid(severity), count=(3, 12), contrast=(0.12, 0.4), scale=(0.8, 1.5)))


def _erm_oct(scan: Scan, rng: np.random.Generator, severity: float | None) -> None:
    oc.epiretinal_membrane(scan, rng, _amount(_florid(severity), 0.7, 1.2))


def _macular_hole(f: Findings, a: Anatomy, rng: np.random.Generator, severity: float | None) -> None:
    fl.red_spot(f, a, rng, graded(_florid(severity), contrast=(0.5, 0.95), scale=(0.1, 0.2)))


def _macular_hole_oct(scan: Scan, rng: np.random.Generator, severity: float | None) -> None:
    oc.full_thickness_hole(scan, rng, _amount(_florid(severity), 0.8, 1.4))


def _papilloedema(f: Findings, a: Anatomy, rng: np.random.Generator, severity: float | None) -> None:
    s = _florid(severity)
    fl.swollen_disc(f, a, rng, graded(s, contrast=(0.45, 0.95), scale=(1.3, 1.9)))
    points, tangents = fl.vein_sites(a, from_disc=(0.4, 1.6))
    fl.flames(f, a, rng, graded(s, count=(0, 12), contrast=(0.5, 0.95)), points, tangents, side=0.35)


def _papilloedema_oct(scan: Scan, rng: np.random.Generator, severity: float | None) -> None:
    oc.rnfl_swelling(scan, rng, _amount(_florid(severity), 0.6, 1.2))


def _myopia(f: Findings, a: Anatomy, rng: np.random.Generator, severity: float | None) -> None:
    s = _florid(severity)
    fl.tessellation(f, a, rng, graded(s, count=(10, 40), contrast=(0.35, 0.9)))
    fl.pale_crescent(f, a, rng, graded(s, contrast=(0.5, 0.95)), shift=(0.5, 0.8), outer=(1.3, 1.7))
    atrophy = _gate(s, 0.5)
    if atrophy is not None:
        fl.atrophic_patch(
            f, a, rng, graded(atrophy, count=(1, 3), contrast=(0.5, 0.85), scale=(0.2, 0.45)), a.fovea, 0.6
        )


def _myopia_oct(scan: Scan, rng: np.random.Generator, severity: float | None) -> None:
    s = _florid(severity)
    oc.staphyloma(scan, rng, _amount(s, 0.6, 1.2))
    if s >= 0.5:
        oc.hypertransmission(scan, rng, Dose(count=(1, 3)), spread=0.12)


def _crvo(f: Findings, a: Anatomy, rng: np.random.Generator, severity: float | None) -> None:
    """Composed of trained concepts: rvo's flames and dilated veins, papilloedema's disc and site."""
    s = _florid(severity)
    f.scale_vessels("vein", "*", lerp(1.15, 1.5, s))
    points, tangents = fl.vein_sites(a, from_disc=(0.4, 3.5))
    fl.flames(f, a, rng, graded(s, count=(8, 70), contrast=(0.5, 1.0)), points, tangents)
    fl.swollen_disc(f, a, rng, graded(s, contrast=(0.3, 0.8), scale=(1.3, 1.7)))
    extra = _gate(s, 0.4)
    if extra is not None:
        fl.cotton_wool(f, a, rng, graded(extra, count=(1, 5), contrast=(0.45, 0.85)), fl.posterior_pole_sites(a))


def _crvo_oct(scan: Scan, rng: np.random.Generator, severity: float | None) -> None:
    s = _florid(severity)
    oc.central_oedema(
        scan, rng, Dose(count=graded(s, count=(3, 10)).count, scale=_amount(s, 0.8, 1.4).scale), reach=0.16
    )


def _hypertensive(f: Findings, a: Anatomy, rng: np.random.Generator, severity: float | None) -> None:
    """Composed of trained concepts: rp's narrowed vessels, flames, dr's cotton-wool spots."""
    s = _florid(severity)
    f.scale_vessels("artery", "*", lerp(0.8, 0.55, s))
    points, tangents = fl.vein_sites(a, from_disc=(0.4, 2.0))
    fl.flames(f, a, rng, graded(s, count=(1, 10), contrast=(0.45, 0.9)), points, tangents, side=0.4)
    fl.cotton_wool(f, a, rng, graded(s, count=(1, 8), contrast=(0.45, 0.9)), fl.posterior_pole_sites(a))


def _hypertensive_oct(scan: Scan, rng: np.random.Generator, severity: float | None) -> None:
    s = _florid(severity)
    oc.hyperreflective_foci(scan, rng, graded(s, count=(5, 25)))
    oc.central_oedema(scan, rng, Dose(count=(0, 1), scale=_amount(s, 0.3, 0.5).scale))


# ----------------------------------------------------------------------------- the registry


def _entry(
    disease_id: str, paint: FundusRecipe, edit: OctRecipe, *, oct_visible: bool = False, **draws: tuple[str, ...]
) -> PhantomDisease:
    catalog = DEFAULT_CONCEPTS[disease_id]
    concepts = Concepts(
        fundus=draws.get("fundus", catalog.fundus),
        where=draws.get("where", catalog.where),
        oct=draws.get("oct", catalog.oct),
        oct_where=draws.get("oct_where", catalog.oct_where),
    )
    return PhantomDisease(disease_id, paint, edit, concepts, oct_visible)


REGISTRY: dict[str, PhantomDisease] = {
    d.id: d
    for d in (
        _entry("dr", _dr, _dr_oct),
        _entry("dme", _dme, _dme_oct, oct_visible=True),
        _entry("amd", _amd, _amd_oct),
        _entry("glaucoma", _glaucoma, _glaucoma_oct, oct_visible=True),
        _entry("rvo", _rvo, _rvo_oct),
        _entry("rp", _rp, _rp_oct, fundus=("pigment_clumps", "narrow_vessels")),
        _entry("namd", _namd, _namd_oct),
        _entry("csc", _csc, _csc_oct, oct_visible=True),
        _entry("erm", _erm, _erm_oct, oct_visible=True),
        _entry("macular_hole", _macular_hole, _macular_hole_oct),
        _entry("papilloedema", _papilloedema, _papilloedema_oct),
        _entry("myopia", _myopia, _myopia_oct),
        _entry("crvo", _crvo, _crvo_oct),
        _entry("hypertensive", _hypertensive, _hypertensive_oct),
    )
}
"""Every disease the phantom draws, in the fixed order of their random streams."""

DISEASES: tuple[str, ...] = tuple(REGISTRY)
"""The ids of ``REGISTRY``."""
