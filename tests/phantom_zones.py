"""The location concepts of the catalog vocabulary as zones on the fundus and on the OCT B-scan.

A zone is where a location concept lies: on the fundus in terms of the anatomy (distances in
disc diameters, DD, from the fovea, the disc or the arcades), on the horizontal B-scan through
fovea and disc in terms of ``u``, the distance from the fovea towards the disc in DD. The OCT
line crosses the macula and the disc, not the arcades or the mid-periphery: for those, the
scan's zone is where the same disease process shows on that line (the whole posterior pole
for scattered lesions, both ends outside the central island for the mid-periphery).
Registry entries draw lesions inside their locations' zones; ``tests/test_phantom_hard.py``
checks that they do, in both modalities, against these zones.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from predilect.training.phantom.fundus import Anatomy


def _to(point: tuple[float, float], x: np.ndarray, y: np.ndarray, dd: float) -> np.ndarray:
    return np.hypot(x - point[0], y - point[1]) / dd


def _near_arcades(a: Anatomy, x: np.ndarray, y: np.ndarray, within_dd: float) -> np.ndarray:
    points = np.vstack([v.points for v in a.vessels if v.trunk.endswith("_temporal")])[::2]
    best = np.full(x.shape, np.inf)
    for start in range(0, len(points), 256):
        chunk = points[start : start + 256]
        d = np.hypot(x[..., None] - chunk[:, 0], y[..., None] - chunk[:, 1]).min(axis=-1)
        best = np.minimum(best, d)
    return best / a.dd < within_dd


FundusZone = Callable[[Anatomy, np.ndarray, np.ndarray], np.ndarray]
OctZone = Callable[[np.ndarray], np.ndarray]


def _middle(a: Anatomy) -> tuple[float, float]:
    return ((a.fovea[0] + a.disc[0]) / 2, (a.fovea[1] + a.disc[1]) / 2)


def _radial(a: Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.hypot(x - a.centre[0], y - a.centre[1]) / a.radius


FUNDUS_ZONES: dict[str, FundusZone] = {
    "fovea": lambda a, x, y: _to(a.fovea, x, y, a.dd) <= 0.6,
    "macula": lambda a, x, y: _to(a.fovea, x, y, a.dd) <= 1.8,
    "perifoveal_ring": lambda a, x, y: _to(a.fovea, x, y, a.dd) <= 2.0,
    "one_side": lambda a, x, y: _to(a.fovea, x, y, a.dd) <= 2.5,
    "optic_disc": lambda a, x, y: _to(a.disc, x, y, a.dd) <= 0.8,
    "peripapillary": lambda a, x, y: _to(a.disc, x, y, a.dd) <= 2.2,
    "arcades": lambda a, x, y: _near_arcades(a, x, y, 1.0),
    "one_sector": lambda a, x, y: _near_arcades(a, x, y, 1.0),
    "posterior_pole": lambda a, x, y: _to(_middle(a), x, y, a.dd) <= 4.0,
    "mid_periphery": lambda a, x, y: (_radial(a, x, y) >= 0.5) & (_radial(a, x, y) <= 0.97),
    "whole_image": lambda a, x, y: _radial(a, x, y) <= 1.0,
}
"""Location concept -> which fundus pixels (x, y arrays) lie in it."""

OCT_ZONES: dict[str, OctZone] = {
    "fovea": lambda u: np.abs(u) <= 0.6,
    "macula": lambda u: np.abs(u) <= 1.8,
    "perifoveal_ring": lambda u: np.abs(u) <= 2.0,
    "one_side": lambda u: np.ones_like(u, dtype=bool),
    "optic_disc": lambda u: u >= 1.7,
    "peripapillary": lambda u: u >= 0.3,
    "arcades": lambda u: np.ones_like(u, dtype=bool),
    "one_sector": lambda u: np.ones_like(u, dtype=bool),
    "posterior_pole": lambda u: np.ones_like(u, dtype=bool),
    "mid_periphery": lambda u: np.abs(u) >= 0.5,
    "whole_image": lambda u: np.ones_like(u, dtype=bool),
}
"""Location concept -> which B-scan columns (``u``: DD from the fovea towards the disc) show it."""


def fundus_zone(anatomy: Anatomy, locations: tuple[str, ...], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether each (x, y) lies in any of ``locations`` on the fundus of ``anatomy``."""
    inside = np.zeros(np.broadcast(x, y).shape, dtype=bool)
    for location in locations:
        inside |= FUNDUS_ZONES[location](anatomy, x, y)
    return inside


def oct_zone(locations: tuple[str, ...], u: np.ndarray) -> np.ndarray:
    """Whether each B-scan column at ``u`` DD from the fovea lies in any of ``locations``."""
    inside = np.zeros(u.shape, dtype=bool)
    for location in locations:
        inside |= OCT_ZONES[location](u)
    return inside
