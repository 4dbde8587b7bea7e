"""MultiEYE (Wang et al., IEEE TMI 2024; github.com/xmed-lab/MultiEYE), native layout::

    ROOT/assemble/{train,dev,test}/large9cls.txt            fundus: "<image name> <class>" per line
    ROOT/assemble/train/large9cls_balance.txt               the official (class-balanced) training list
    ROOT/assemble/train/ImageData/<variant>/<image name>.png (every split's images live under train/)
    ROOT/assemble_oct/{train,dev,test}/large9cls.txt        OCT B-scans, same layout
    ROOT/assemble_oct/train/ImageData/<variant>/<image name>.png

``<variant>`` is the released preprocessing folder (``cfp-clahe-224x224`` for fundus,
``oct-filter-448x448`` for OCT); every folder under ``ImageData`` is searched. ``dev`` is the
validation split; a line may separate name and class by a space or a tab.

The official training code trains the fundus model on ``large9cls_balance.txt`` (and the OCT
teacher on ``large9cls.txt``): ``multieye`` reads that list for the training split (the report
says which list it read; without it, ``large9cls.txt``), ``multieye_all`` the whole
``large9cls.txt``. The official code also shows each fundus image with a random OCT image of its
class; stage 1 does the same with ``--set pretrain.oct_pairing=same_class``.

Classes (single-label) as the official code names them (``NOR AMD CSC DR GLC MEM MYO RVO
WAMD``): 0 normal, 1 dry AMD, 2 CSC, 3 DR, 4 glaucoma, 5 macular epiretinal membrane, 6
myopia, 7 RVO, 8 wet AMD. (The data README lists eight classes, 0-7, without myopia, while saying
the labels run to 8; the table follows the code that trains and scores the benchmark.) The
fundus and OCT sets are unpaired (different patients): use ``modality="oct"`` for the OCT corpus
of stage-1 pretraining.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from predilect.training.datasets.adapters.base import (
    Adapter,
    AdapterResult,
    DatasetLayoutError,
    LabelMapping,
    NativeImage,
    Note,
    Skipped,
    find_first,
    index_images,
    parse_int,
)

NAME = "multieye"
LABEL_FILE = "large9cls.txt"
SPLITS = (("train", "train"), ("val", "dev"), ("test", "test"))
MODALITY_FOLDERS = {"fundus": "assemble", "oct": "assemble_oct"}
LABEL_FILE_BALANCED = "large9cls_balance.txt"
MAPPING: LabelMapping = {
    "0": (),
    "1": ("amd",),
    "2": ("csc",),
    "3": ("dr",),  # MultiEYE does not grade DR
    "4": ("glaucoma",),
    "5": ("erm",),
    "6": ("myopia",),
    "7": ("rvo",),  # retinal vein occlusion, branch or central (MultiEYE does not say which)
    "8": ("namd",),
}
"""Class index -> catalog ids, in the official code's order (see the module docstring)."""


def _image_index(base: Path) -> dict[str, Path]:
    data = find_first(base, ["train/ImageData"], what="MultiEYE ImageData folder")
    index: dict[str, Path] = {}
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        for stem, path in index_images(folder, (".png", ".jpg")).items():
            index.setdefault(stem, path)
    index.update({stem: p for stem, p in index_images(data, (".png", ".jpg")).items() if stem not in index})
    return index


def _label_lines(path: Path) -> Iterator[tuple[int, str, int]]:
    """``(line, image name, class)`` of a ``large9cls.txt`` file."""
    with path.open(encoding="utf-8") as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            parts = text.split()
            if len(parts) != 2:
                raise DatasetLayoutError(f"{path}, line {line}: expected '<image name> <class>', got {text.strip()!r}")
            yield line, parts[0], parse_int(parts[1], column="class", path=path, line=line, allowed=range(9))


def _layout(root: Path, *, modality: str, balanced: bool = False) -> Iterator[NativeImage | Note | Skipped]:
    """MultiEYE's fundus or OCT images under ``root``, the splits as released (``dev`` is val);
    with ``balanced`` the training split is the official balanced list when the release has it."""
    base = find_first(root, [MODALITY_FOLDERS[modality]], what=f"MultiEYE {modality} folder")
    images = _image_index(base)
    for split, folder in SPLITS:
        labels_file = base / folder / LABEL_FILE
        if balanced and split == "train":
            official = base / folder / LABEL_FILE_BALANCED
            labels_file = official if official.is_file() else labels_file
            missing = "" if official.is_file() else f" ({LABEL_FILE_BALANCED} not in the release)"
            yield Note(f"training split from {labels_file.name}{missing}")
        if not labels_file.is_file():
            if split == "train":
                raise DatasetLayoutError(f"{base}: MultiEYE label file not found: {labels_file}")
            continue
        listed: set[str] = set()
        for line, name, label in _label_lines(labels_file):
            image = images.get(name)
            if image is None:
                where = base / "train" / "ImageData"
                raise DatasetLayoutError(f"{labels_file}, line {line}: image {name!r} not found under {where}")
            if name in listed:  # a list may repeat an image; a manifest holds it once
                yield Skipped(f"listed again in {labels_file.name} (class balance: data.sampling=balanced)")
                continue
            listed.add(name)
            yield NativeImage(image, [str(label)], split=split, extra={"modality": modality, "class": str(label)})


MODALITIES = {
    "fundus": Adapter(NAME, MAPPING, partial(_layout, modality="fundus", balanced=True)),
    "fundus_all": Adapter(f"{NAME}_all", MAPPING, partial(_layout, modality="fundus")),
    "oct": Adapter(f"{NAME}_oct", MAPPING, partial(_layout, modality="oct")),
}
"""The fundus set (official training list; ``fundus_all``: the whole ``large9cls.txt``) and the
(unpaired) OCT corpus, each an ``Adapter``."""


def read_multieye(root: str | Path, *, modality: str = "fundus", **options: Any) -> AdapterResult:
    """Records of MultiEYE's fundus (``modality="fundus"``) or OCT (``"oct"``) images under ``root``;
    ``options`` as every adapter takes them (``catalog``, ``overrides``, ``unmapped``)."""
    if modality not in MODALITIES:
        raise DatasetLayoutError(f"MultiEYE modality must be one of {sorted(MODALITIES)}, got {modality!r}")
    return MODALITIES[modality](root, **options)
