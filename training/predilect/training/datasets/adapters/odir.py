"""ODIR-5K (Ocular Disease Intelligent Recognition, 2019), native layout::

    ROOT/data.xlsx                      (the challenge's ODIR-5K_Training_Annotations(Updated)_V2.xlsx,
                                         or Kaggle's full_df.csv, are read as well)
    ROOT/Training Images/<n>_left.jpg, <n>_right.jpg

One annotation row per patient: ``ID``, ``Patient Age``, ``Patient Sex``, ``Left-Fundus``,
``Right-Fundus``, ``Left-Diagnostic Keywords``, ``Right-Diagnostic Keywords`` and the
patient-level 0/1 columns N D G C A H M O. The N..O columns mix both eyes, so labels come from
each eye's own diagnostic keywords (comma-separated, the full-width ``，`` included) through
``MAPPING``; image-quality keywords (lens dust, low image quality, ...) are not findings, and
an image whose keywords say it is no fundus photograph is skipped. Both eyes of a patient
share a patient id and so a split (assigned by hash; ODIR publishes no labelled test set).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from predilect.training.datasets.adapters.base import (
    Adapter,
    DatasetLayoutError,
    LabelMapping,
    NativeImage,
    Skipped,
    csv_rows,
    find_first,
    require_file,
)

NAME = "odir5k"
ANNOTATIONS = ("data.xlsx", "ODIR-5K_Training_Annotations(Updated)_V2.xlsx", "full_df.csv")
IMAGE_FOLDERS = ("Training Images", "ODIR-5K_Training_Dataset", "preprocessed_images")
COLUMNS = ("ID", "Left-Fundus", "Right-Fundus", "Left-Diagnostic Keywords", "Right-Diagnostic Keywords")
QUALITY_KEYWORDS = frozenset(
    {"lens dust", "low image quality", "image offset", "optic disk photographically invisible"}
)
"""Keywords about the photograph, not the eye: ignored."""
NOT_FUNDUS_KEYWORDS = frozenset({"no fundus image", "anterior segment image"})
"""Keywords saying the image is no fundus photograph: the image is skipped."""
_DR = ("dr",)
_PDR = ("dr", "pdr")
MAPPING: LabelMapping = {
    "normal fundus": (),
    # diabetic retinopathy: referable from moderate NPDR on; "mild nonproliferative retinopathy" stays unmapped
    "moderate non proliferative retinopathy": _DR,
    "severe nonproliferative retinopathy": _DR,
    "diabetic retinopathy": _DR,
    "proliferative diabetic retinopathy": _PDR,
    "severe proliferative diabetic retinopathy": _PDR,
    "glaucoma": ("glaucoma",),
    "suspected glaucoma": ("glaucoma",),
    "cataract": ("media_opacity",),
    "refractive media opacity": ("media_opacity",),
    "dry age-related macular degeneration": ("amd",),
    "age-related macular degeneration": ("amd",),
    "wet age-related macular degeneration": ("namd",),
    "drusen": ("drusen",),
    "hypertensive retinopathy": ("hypertensive",),
    "pathological myopia": ("myopia",),
    "myopia retinopathy": ("myopia",),
    "myopic retinopathy": ("myopia",),
    "myopic maculopathy": ("myopia",),
    "epiretinal membrane": ("erm",),
    "macular epiretinal membrane": ("erm",),
    "epiretinal membrane over the macula": ("erm",),
    "macular hole": ("macular_hole",),
    "branch retinal vein occlusion": ("rvo",),
    "old branch retinal vein occlusion": ("rvo",),
    "central retinal vein occlusion": ("crvo",),
    "old central retinal vein occlusion": ("crvo",),
    "central retinal artery occlusion": ("rao",),
    "branch retinal artery occlusion": ("rao",),
    "retinitis pigmentosa": ("rp",),
    "central serous chorioretinopathy": ("csc",),
    "optic disc edema": ("papilloedema",),
    "optic nerve atrophy": ("optic_atrophy",),
    "retinal detachment": ("retinal_detachment",),
    "rhegmatogenous retinal detachment": ("retinal_detachment",),
    "choroidal nevus": ("naevus",),
}
"""Diagnostic keyword -> catalog ids; keywords not listed (laser spot, tessellated fundus, ...) stay unmapped."""
_SEPARATORS = re.compile(r"[,，]")


def keywords(cell: str) -> list[str]:
    """The keywords of one eye's cell, lower-case, split at ASCII or full-width commas."""
    return [k.strip().lower() for k in _SEPARATORS.split(cell) if k.strip()]


def _xlsx_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        from openpyxl import load_workbook
    except ImportError as e:
        raise DatasetLayoutError(f"{path}: reading .xlsx needs openpyxl (pip install 'predilect[train]')") from e
    workbook = load_workbook(path, read_only=True, data_only=True)
    try:
        rows = workbook.worksheets[0].iter_rows(values_only=True)
        header = [str(c).strip() if c is not None else "" for c in next(rows, ())]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise DatasetLayoutError(f"{path}, line 1: header {header} lacks column(s) {missing}")
        for line, values in enumerate(rows, 2):
            if all(v is None for v in values):
                continue
            cells = ["" if v is None else str(v).strip() for v in values]
            yield line, dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=False))
    finally:
        workbook.close()


def _layout(root: Path) -> Iterator[NativeImage | Skipped]:
    """The ODIR-5K training images under ``root``, each eye with its own keywords."""
    annotations = find_first(root, ANNOTATIONS, what="ODIR-5K annotation file")
    images = find_first(root, IMAGE_FOLDERS, what="ODIR-5K image folder")
    rows = _xlsx_rows(annotations) if annotations.suffix == ".xlsx" else csv_rows(annotations, required=COLUMNS)
    seen: set[str] = set()
    for line, row in rows:
        patient = row["ID"].removesuffix(".0")
        if patient in seen:  # full_df.csv repeats each patient once per image
            continue
        seen.add(patient)
        for side, eye in (("Left", "L"), ("Right", "R")):
            name = row[f"{side}-Fundus"]
            if not name:
                raise DatasetLayoutError(f"{annotations}, line {line}: empty {side}-Fundus cell")
            found = keywords(row[f"{side}-Diagnostic Keywords"])
            if NOT_FUNDUS_KEYWORDS & set(found):
                yield Skipped("not a fundus photograph")
                continue
            image = require_file(images / name, what="image", source=annotations, line=line)
            findings = [k for k in found if k not in QUALITY_KEYWORDS]
            if not findings:  # only remarks on the photograph: the eye's state is unknown, not normal
                yield Skipped("no diagnostic keyword")
                continue
            yield NativeImage(image, findings, patient=patient, eye=eye, extra={"keywords": ";".join(found)})


read_odir = Adapter(NAME, MAPPING, _layout)
"""Records of the ODIR-5K training images under a root folder, labelled per eye."""
