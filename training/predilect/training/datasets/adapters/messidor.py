"""MESSIDOR-2 with the adjudicated grades of Krause et al. (2018), native layout::

    ROOT/IMAGES/<image_id>                  the ADCIS images (.png for Messidor-Original, .JPG for the extension)
    ROOT/messidor_data.csv                  image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable
    ROOT/messidor-2.csv (optional)          pairing: one examination per row naming its two image files

``adjudicated_gradable`` 0 rows carry no grade and are skipped (reported). With the pairing sheet,
the two images of one examination share a patient id, so they land in the same split; without it
each image is its own patient. (The pairing sheet is read as any ``;``/``,`` table whose rows
name the two image files of one examination; rows naming none, such as a header, are skipped.)
DR grades map as for APTOS (referable DR = ICDR >= 2); DME=1 maps to the catalog's DME category.
"""

from __future__ import annotations

import csv
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
    parse_int,
    require_file,
)

NAME = "messidor2"
MAPPING: LabelMapping = {
    "dr_grade=0": (),
    "dr_grade=2": ("dr",),
    "dr_grade=3": ("dr",),
    "dr_grade=4": ("dr", "pdr"),
    "dme=1": ("dme",),
}
"""Adjudicated findings -> catalog ids; ``dr_grade=1`` (mild NPDR) deliberately absent."""
COLUMNS = ("image_id", "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable")


def _pairs(path: Path) -> dict[str, str]:
    """Image name -> examination id from the pairing sheet (``;``- or ``,``-separated, image names per row)."""
    text = path.read_text(encoding="utf-8-sig")
    delimiter = ";" if text.count(";") > text.count(",") else ","
    exams: dict[str, str] = {}
    for number, row in enumerate(csv.reader(text.splitlines(), delimiter=delimiter), 1):
        names = [cell.strip() for cell in row if cell.strip().lower().endswith((".png", ".jpg", ".jpeg", ".tif"))]
        if names and len(names) != 2:
            raise DatasetLayoutError(f"{path}, line {number}: expected the two image names of one examination")
        for name in names:
            exams[name] = f"exam{number - 1}"
    return exams


def _layout(root: Path) -> Iterator[NativeImage | Skipped]:
    """The MESSIDOR-2 images under ``root``; the ungradable ones skipped."""
    grades = find_first(root, ["messidor_data.csv"], what="MESSIDOR-2 adjudicated grades")
    images = find_first(root, ["IMAGES", "images"], what="MESSIDOR-2 image folder")
    pairing = root / "messidor-2.csv"
    exams = _pairs(pairing) if pairing.is_file() else {}
    for line, row in csv_rows(grades, required=COLUMNS):
        image = require_file(images / row["image_id"], what="image", source=grades, line=line)
        gradable = parse_int(row["adjudicated_gradable"], column="adjudicated_gradable", path=grades, line=line)
        if not gradable:
            yield Skipped("ungradable")
            continue
        grade = parse_int(
            row["adjudicated_dr_grade"], column="adjudicated_dr_grade", path=grades, line=line, allowed=range(5)
        )
        dme = parse_int(row["adjudicated_dme"], column="adjudicated_dme", path=grades, line=line, allowed=(0, 1))
        native = [f"dr_grade={grade}"] + (["dme=1"] if dme else [])
        patient = exams.get(row["image_id"], row["image_id"])
        yield NativeImage(image, native, patient=patient, extra={"grade": str(grade), "dme_grade": str(dme)})


read_messidor2 = Adapter(NAME, MAPPING, _layout)
"""Records of the gradable MESSIDOR-2 images under a root folder."""
