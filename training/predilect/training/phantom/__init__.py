"""Phantom data: synthetic fundus photographs, unpaired OCT B-scans and their manifests.

``render_fundus`` and ``render_oct`` draw one image with lesions at each disease's
predilection sites; ``generate`` writes a reproducible data set with both manifests.
"""

from predilect.training.phantom.fundus import Anatomy
from predilect.training.phantom.generate import (
    FUNDUS_MANIFEST,
    OCT_MANIFEST,
    allocate_labels,
    generate,
    image_rng,
    plan_cohort,
)
from predilect.training.phantom.registry import DISEASES, REGISTRY
from predilect.training.phantom.render import draw_fundus, draw_oct, fundus_anatomy, render_fundus, render_oct

__all__ = [
    "DISEASES",
    "FUNDUS_MANIFEST",
    "OCT_MANIFEST",
    "REGISTRY",
    "Anatomy",
    "allocate_labels",
    "draw_fundus",
    "draw_oct",
    "fundus_anatomy",
    "generate",
    "image_rng",
    "plan_cohort",
    "render_fundus",
    "render_oct",
]
