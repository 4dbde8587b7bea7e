"""The common public OCT B-scan sets, in their published layouts, as OCT manifests for stage 1.

* **Kermany OCT2017** (Kermany et al., Cell 2018; Mendeley "Large Dataset of Labeled OCT and
  Chest X-Ray Images", also on Kaggle)::

      ROOT/[OCT2017/ | CellData/OCT/ | OCT/]{train,test[,val]}/{CNV,DME,DRUSEN,NORMAL}/<CLASS>-<patient>-<n>.jpeg

  The splits as released (the Kaggle copy adds ``val``); the patient is the middle field of the
  file name, so both of a patient's images share a bootstrap cluster; no eye is given.
* **OCTDL** (Kulyabin et al., Scientific Data 2024; Mendeley ``sncdhf53xc``)::

      ROOT/OCTDL_labels.csv                     file_name, disease, patient_id[, eye, subcategory, ...]
      ROOT/[OCTDL/]<disease>/<file_name>[.jpg]  disease folders AMD DME ERM NO RAO RVO VID

  No official split: splits are assigned by patient hash. ``VID`` (vitreomacular interface
  disease: holes, traction) has no single catalog id and stays unmapped unless overridden.
* **OCTID** (Gholami et al., 2018, University of Waterloo)::

      ROOT/{NORMAL,AMRD,CSR,DR,MH}/<image>.{jpeg,jpg,png}     (folder names in any case)

  No patient ids and no split: splits (and bootstrap clusters) are per image, which the report
  states.

Every record gets the scan's line on the fundus plane (``GEOMETRY_COLUMNS``, fractions of a
photograph's field) from the data set's default: all three hold foveal B-scans of macular
protocols (about 6 mm, a horizontal line through the fovea: centre (0.5, 0.5), span 0.4 of a
45-degree field); edit the manifest's columns for scans that lie elsewhere.
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
    index_images,
)

FOVEAL_LINE = {"oct_centre_x": "0.5", "oct_centre_y": "0.5", "oct_span": "0.4"}
"""The default line of a foveal macular B-scan on the fundus plane (see the module docstring)."""
SUFFIXES = (".jpeg", ".jpg", ".png", ".tif", ".tiff", ".bmp")

KERMANY_MAPPING: LabelMapping = {
    "NORMAL": (),
    "CNV": ("namd",),  # choroidal neovascularisation (wet AMD)
    "DME": ("dme",),
    "DRUSEN": ("amd", "drusen"),  # multiple drusen of early AMD
}
OCTDL_MAPPING: LabelMapping = {
    "NO": (),
    "AMD": ("amd",),
    "DME": ("dme",),
    "ERM": ("erm",),
    "RAO": ("rao",),
    "RVO": ("rvo",),
}
"""OCTDL disease -> catalog ids; ``VID`` deliberately absent (no single catalog category)."""
OCTID_MAPPING: LabelMapping = {
    "NORMAL": (),
    "AMRD": ("amd",),
    "CSR": ("csc",),
    "DR": ("dr",),
    "MH": ("macular_hole",),
}


def _oct_extra(native: str) -> dict[str, str]:
    return {"modality": "oct", "class": native, **FOVEAL_LINE}


def _kermany(root: Path) -> Iterator[NativeImage]:
    base = root
    if not (root / "train").is_dir():
        base = find_first(root, ["OCT2017", "OCT2017 ", "CellData/OCT", "OCT"], what="Kermany OCT2017 folder")
    if not (base / "train").is_dir():
        raise DatasetLayoutError(f"{base}: no train/ folder of CNV, DME, DRUSEN, NORMAL")
    for split in ("train", "val", "test"):
        folder = base / split
        if not folder.is_dir():
            continue
        for native in sorted(KERMANY_MAPPING):
            images = folder / native
            if not images.is_dir():
                continue
            for path in sorted(index_images(images, SUFFIXES).values()):
                parts = path.stem.split("-")
                if len(parts) != 3 or parts[0] != native:
                    raise DatasetLayoutError(f"{path}: expected <CLASS>-<patient>-<n> in the {native} folder")
                yield NativeImage(path, [native], patient=parts[1], split=split, extra=_oct_extra(native))


def _octdl(root: Path) -> Iterator[NativeImage]:
    labels = find_first(root, ["OCTDL_labels.csv", "OCTDL/OCTDL_labels.csv"], what="OCTDL label file")
    images = labels.parent / "OCTDL" if (labels.parent / "OCTDL").is_dir() else labels.parent
    folders: dict[str, dict[str, Path]] = {}
    for line, row in csv_rows(labels, required=("file_name", "disease", "patient_id")):
        disease = row["disease"]
        if disease not in folders:
            folder = images / disease
            folders[disease] = index_images(folder, SUFFIXES) if folder.is_dir() else {}
        name = row["file_name"]
        path = folders[disease].get(Path(name).stem if Path(name).suffix.lower() in SUFFIXES else name)
        if path is None:
            raise DatasetLayoutError(f"{labels}, line {line}: image {name!r} not found under {images / disease}")
        eye = {"OD": "R", "OS": "L"}.get(row.get("eye", "").upper()) or None
        extra = _oct_extra(disease) | {k: row[k] for k in ("subcategory", "condition") if row.get(k)}
        yield NativeImage(path, [disease], patient=row["patient_id"], eye=eye, extra=extra)


def _octid(root: Path) -> Iterator[NativeImage]:
    folders = {p.name.upper(): p for p in root.iterdir() if p.is_dir()} if root.is_dir() else {}
    found = [name for name in OCTID_MAPPING if name in folders]
    if not found:
        raise DatasetLayoutError(f"{root}: no OCTID class folder ({', '.join(OCTID_MAPPING)})")
    for native in found:
        for path in sorted(index_images(folders[native], SUFFIXES).values()):
            yield NativeImage(path, [native], extra=_oct_extra(native))


read_kermany = Adapter("kermany_oct2017", KERMANY_MAPPING, _kermany)
read_octdl = Adapter("octdl", OCTDL_MAPPING, _octdl)
read_octid = Adapter(
    "octid", OCTID_MAPPING, _octid, notes=("no patient ids: splits and bootstrap clusters are per image",)
)
