"""How much of a finding a painter draws: lesion count, contrast and a size/extent scale.

A painter draws ``rng.integers(*count)`` lesions at opacity ``rng.uniform(*contrast)`` and
uses ``rng.uniform(*scale)`` for its one structural magnitude (cup-to-disc ratio, vein
calibre, patch size). The easy preset passes each painter its original fixed ranges (so the
same seed draws the same picture as before presets existed); the hard preset derives the
ranges from a severity in [0, 1] with ``graded``: from a single faint lesion to florid.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dose:
    """Ranges a painter draws from; ``severity`` gates the extras of advanced disease."""

    count: tuple[int, int] = (1, 2)
    contrast: tuple[float, float] = (1.0, 1.0)
    scale: tuple[float, float] = (1.0, 1.0)
    severity: float = 1.0


def lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def graded(
    severity: float,
    *,
    count: tuple[int, int] = (1, 2),
    contrast: tuple[float, float] = (1.0, 1.0),
    scale: tuple[float, float] = (1.0, 1.0),
    jitter: float = 0.08,
) -> Dose:
    """The dose at ``severity``: each range runs from its first value (mild) to its second (florid)."""
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must lie in [0, 1], got {severity}")
    n = round(lerp(count[0], count[1], severity))
    c = lerp(contrast[0], contrast[1], severity)
    s = lerp(scale[0], scale[1], severity)
    return Dose(
        count=(n, n + 1),
        contrast=(max(0.0, c - jitter / 2), min(1.0, c + jitter / 2)),
        scale=(s * (1 - jitter / 2), s * (1 + jitter / 2)),
        severity=severity,
    )
