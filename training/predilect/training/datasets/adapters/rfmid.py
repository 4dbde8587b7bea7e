"""RFMiD 1.0 (Retinal Fundus Multi-disease Image Dataset), native layout::

    ROOT/Training_Set/RFMiD_Training_Labels.csv    ID,Disease_Risk,<one 0/1 column per condition>
    ROOT/Training_Set/Training/<ID>.png
    ROOT/Evaluation_Set/RFMiD_Validation_Labels.csv
    ROOT/Evaluation_Set/Validation/<ID>.png
    ROOT/Test_Set/RFMiD_Testing_Labels.csv
    ROOT/Test_Set/Test/<ID>.png

(Kaggle's copy nests each set once more, ``Training_Set/Training_Set/...``; both are read.) The
official sets become the splits train/val/test. Condition columns are read by name, so the
full release (45 conditions) and the challenge variant (27 conditions + ``OTHER``) both work;
``Disease_Risk`` 0 with no condition is a normal eye. RFMiD has no patient ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from predilect.training.datasets.adapters.base import (
    Adapter,
    DatasetLayoutError,
    LabelMapping,
    NativeImage,
    csv_rows,
    find_first,
    parse_int,
    require_file,
)

NAME = "rfmid"
SETS = (
    ("train", "Training_Set", "RFMiD_Training_Labels.csv", "Training"),
    ("val", "Evaluation_Set", "RFMiD_Validation_Labels.csv", "Validation"),
    ("test", "Test_Set", "RFMiD_Testing_Labels.csv", "Test"),
)
NOT_CONDITIONS = ("ID", "Disease_Risk")
MAPPING: LabelMapping = {
    "DR": ("dr",),  # any diabetic retinopathy (RFMiD does not grade it)
    "ARMD": ("amd",),
    "MH": ("media_opacity",),  # media haze
    "DN": ("drusen",),
    "MYA": ("myopia",),
    "BRVO": ("rvo",),
    "ERM": ("erm",),
    "MS": ("chorioretinal_scar",),  # macular scar
    "CSR": ("csc",),
    "ODC": ("glaucoma",),  # optic disc cupping
    "CRVO": ("crvo",),
    "ODP": ("optic_atrophy",),  # optic disc pallor
    "ODE": ("papilloedema",),  # optic disc oedema
    "MHL": ("macular_hole",),
    "RP": ("rp",),
    "CRAO": ("rao",),
    "BRAO": ("rao",),
}
"""Condition column -> catalog ids; the other conditions (tessellation, laser scars, ...) stay unmapped."""


def _layout(root: Path) -> Iterator[NativeImage]:
    """The images of the three official RFMiD sets found under ``root`` (at least the training set)."""
    for split, folder, labels_name, images_name in SETS:
        try:
            base = find_first(root, [f"{folder}/{folder}", folder], what=f"RFMiD {folder}")
        except DatasetLayoutError:
            if split == "train":
                raise
            continue
        labels_csv = require_file(base / labels_name, what="RFMiD label file", source=base)
        images = find_first(base, [images_name], what="RFMiD image folder")
        yield from _read_set(labels_csv, images, split)


def _read_set(labels_csv: Path, images: Path, split: str) -> Iterator[NativeImage]:
    for line, row in csv_rows(labels_csv, required=NOT_CONDITIONS):
        present = []
        for column, cell in row.items():
            if column in NOT_CONDITIONS:
                continue
            if parse_int(cell, column=column, path=labels_csv, line=line, allowed=(0, 1)):
                present.append(column)
        risk = parse_int(row["Disease_Risk"], column="Disease_Risk", path=labels_csv, line=line, allowed=(0, 1))
        if risk and not present:
            present.append("Disease_Risk")  # abnormal without a named condition: not normal, not mappable
        image_id = parse_int(row["ID"], column="ID", path=labels_csv, line=line)
        image = require_file(images / f"{image_id}.png", what="image", source=labels_csv, line=line)
        yield NativeImage(image, present, split=split)


read_rfmid = Adapter(NAME, MAPPING, _layout)
"""Records of the three official RFMiD sets found under a root folder (at least the training set)."""
