"""APTOS 2019 Blindness Detection (Kaggle), native layout::

    ROOT/train.csv           id_code,diagnosis   (diagnosis: ICDR grade 0 no DR .. 4 proliferative DR)
    ROOT/train_images/<id_code>.png
    ROOT/test.csv            id_code             (no labels: not read)

One image per row, no patient ids and no official validation split: splits are assigned by
image hash, so the two eyes of one patient may fall in different splits and every image is its
own bootstrap cluster (the report says so). Grades map onto the catalog's referable-DR
category (grade >= 2, moderate NPDR or worse) and proliferative DR (grade 4); grade 1 (mild
NPDR) is neither normal nor referable, so it is unmapped unless the catalog or an override says
otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from predilect.training.datasets.adapters.base import (
    Adapter,
    LabelMapping,
    NativeImage,
    csv_rows,
    find_first,
    parse_int,
    require_file,
)

NAME = "aptos2019"
MAPPING: LabelMapping = {
    "0": (),  # no DR
    "2": ("dr",),  # moderate NPDR
    "3": ("dr",),  # severe NPDR
    "4": ("dr", "pdr"),  # proliferative DR
}
"""ICDR grade (the ``diagnosis`` cell) -> catalog ids; grade 1 (mild NPDR) deliberately absent."""


def _layout(root: Path) -> Iterator[NativeImage]:
    """The labelled APTOS 2019 training images under ``root``."""
    labels_csv = find_first(root, ["train.csv"], what="APTOS label file")
    images = find_first(root, ["train_images"], what="APTOS image folder")
    for line, row in csv_rows(labels_csv, required=("id_code", "diagnosis")):
        grade = parse_int(row["diagnosis"], column="diagnosis", path=labels_csv, line=line, allowed=range(5))
        image = require_file(images / f"{row['id_code']}.png", what="image", source=labels_csv, line=line)
        yield NativeImage(image, [str(grade)], extra={"grade": str(grade)})


read_aptos = Adapter(
    NAME,
    MAPPING,
    _layout,
    notes=("no patient ids: splits are per image (a patient's two eyes may be split) and so are bootstrap clusters",),
)
"""Records of the labelled APTOS 2019 training images under a root folder."""
