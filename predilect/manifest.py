"""Manifests (v2): the CSV index of a data set, shared by phantom and real data.

One row per image, a header row first. Columns, in any order:

* ``path`` (required): the image, relative to the manifest's folder (POSIX separators) or absolute;
  for OCT also a folder of B-scans or a volume stack (see ``predilect.training.datasets.oct``).
* ``labels`` (required): ``;``-joined catalog disease ids, or ``normal`` when the image shows none.
* ``split`` (optional): ``train`` | ``val`` | ``test``; the legacy ``heldout`` is read as ``test``.
  Where the column is missing or a cell is empty the split is assigned deterministically by
  patient (``assign_split``: a hash of ``patient_id``, else of the ``path`` cell), so both eyes
  of a patient always share a split.
* ``patient_id``, ``eye`` (optional): ``eye`` through ``predilect.contract.parse_eye``
  (R/L, right/left, OD/OS); empty cells read as unknown (``None``).
* optional 0/1 columns named by catalog ids: when present they must agree with ``labels``
  (``write_manifest`` writes them so spreadsheets can count positives).
* ``capture`` (optional): what the camera recorded, one of ``CAPTURES`` (empty or missing: ``colour``).
  A colour screening model trains and is evaluated on ``COLOUR_CAPTURES`` only (``colour_screened``):
  a red-free photograph is another image type, for the gradability step to name, never to screen as colour.
* ``field_angle_deg`` (optional): the camera's field angle in degrees (empty or missing: the model's,
  ``PreprocessCfg.field_angle_deg``); training and evaluation send it to preprocessing as a client sends
  ``contract.REQUEST_FIELD_ANGLE_DEG``, so every camera reaches the model at one retinal scale.
* any other column (``camera``, ``severity``, ``degradation``, ``modality`` ...) is kept in
  ``Record.extra`` and written back by ``write_manifest``.

Every error names the file and the line (the header is line 1): a bad header, a row with the
wrong number of cells, an unknown disease id, 0/1 cells that disagree with ``labels``, a bad
eye or split, a missing image, the same image twice, one patient in two splits.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from predilect.catalog import DEFAULT_CATALOG, NORMAL_LABEL, Catalog
from predilect.contract import EYES, parse_eye
from predilect.errors import UserError
from predilect.preprocess.config import check_field_angle

SPLITS = ("train", "val", "test")
LEGACY_SPLITS = {"heldout": "test"}
"""Split names of manifests written before v2, and what they are read as."""
SPLIT_FRACTIONS: Mapping[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}
"""Shares of patients ``assign_split`` puts in each split when a manifest gives none."""
REQUIRED_COLUMNS = ("path", "labels")
BASE_COLUMNS = ("path", "patient_id", "eye", "split", "labels")
"""The columns ``write_manifest`` writes first, in this order."""
LABEL_SEPARATOR = ";"
CAPTURE_COLUMN = "capture"
FIELD_ANGLE_COLUMN = "field_angle_deg"
CAPTURES = ("colour", "pseudo_colour", "red_free")
"""What a photograph records: true colour, a two-laser pseudo-colour composite, or the green (red-free) band alone."""
COLOUR_CAPTURES = ("colour", "pseudo_colour")
"""The captures a colour screening model is trained and evaluated on."""


class ManifestError(UserError, ValueError):
    """A manifest (or a record) that cannot be read: the message names the file and line."""


def normalise_split(value: str) -> str:
    """``train``/``val``/``test`` (legacy ``heldout`` -> ``test``); ManifestError otherwise."""
    split = LEGACY_SPLITS.get(value.strip(), value.strip())
    if split not in SPLITS:
        raise ManifestError(f"split must be one of {'/'.join(SPLITS)} (or legacy 'heldout'), got {value!r}")
    return split


def assign_split(key: str, fractions: Mapping[str, float] = SPLIT_FRACTIONS) -> str:
    """The split of a patient (or image) ``key``: a fixed function of the key's sha256.

    The same key lands in the same split on every machine and every run, whatever else the
    manifest holds; over many keys the shares approach ``fractions``.
    """
    u = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64
    total = sum(fractions.values())
    edge = 0.0
    for split, share in fractions.items():
        edge += share / total
        if u < edge:
            return split
    return list(fractions)[-1]


@dataclass(frozen=True)
class Record:
    """One image: ``path`` absolute, ``labels`` the catalog ids shown (empty for a normal image).

    ``patient_id`` and ``eye`` (``R``/``L``) are ``None`` when unknown; ``split`` is one of
    ``SPLITS`` (legacy ``heldout`` is stored as ``test``); ``extra`` keeps every other column.
    """

    path: Path
    labels: frozenset[str]
    patient_id: str | None = None
    eye: str | None = None
    split: str = "train"
    extra: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "labels", frozenset(self.labels))
        object.__setattr__(self, "split", normalise_split(self.split))
        if self.eye is not None and self.eye not in EYES:
            raise ManifestError(f"eye must be one of {EYES} or None (see contract.parse_eye), got {self.eye!r}")
        if self.patient_id == "":
            raise ManifestError("patient_id must be None (unknown) or non-empty")
        if NORMAL_LABEL in self.labels:
            raise ManifestError(f"{NORMAL_LABEL!r} is no disease; a normal record has empty labels")
        clash = sorted(set(self.extra) & set(BASE_COLUMNS))
        if clash:
            raise ManifestError(f"extra columns {clash} clash with the manifest's own columns")


def capture_of(record: Record) -> str:
    """The record's ``capture`` (``colour`` when the column is missing or empty); ManifestError for an unknown one."""
    value = record.extra.get(CAPTURE_COLUMN, "") or "colour"
    if value not in CAPTURES:
        raise ManifestError(f"{record.path}: capture must be one of {CAPTURES}, got {value!r}")
    return value


def field_angle_of(record: Record) -> float | None:
    """The record's ``field_angle_deg`` (None when the column is missing or empty); ManifestError for a bad one."""
    value = record.extra.get(FIELD_ANGLE_COLUMN, "").strip()
    if not value:
        return None
    try:
        return check_field_angle(value)
    except ValueError as e:
        raise ManifestError(f"{record.path}: {FIELD_ANGLE_COLUMN}: {e}") from e


def colour_screened(records: Iterable[Record]) -> list[Record]:
    """The records a colour screening model may train or be evaluated on (``COLOUR_CAPTURES``)."""
    return [r for r in records if capture_of(r) in COLOUR_CAPTURES]


def format_labels(labels: Iterable[str], catalog: Catalog = DEFAULT_CATALOG) -> str:
    """The ``labels`` cell: ids in catalog order joined by ';', or ``normal``."""
    ids = set(labels)
    unknown = ids - set(catalog.ids)
    if unknown:
        raise ManifestError(f"unknown disease ids {sorted(unknown)}; catalog has {catalog.ids}")
    ordered = [d for d in catalog.ids if d in ids]
    return LABEL_SEPARATOR.join(ordered) if ordered else NORMAL_LABEL


def parse_labels(cell: str, catalog: Catalog = DEFAULT_CATALOG) -> frozenset[str]:
    """Inverse of ``format_labels``; ManifestError on unknown ids or a mixed ``normal``."""
    parts = [p.strip() for p in cell.split(LABEL_SEPARATOR)]
    if parts == [NORMAL_LABEL]:
        return frozenset()
    if parts == [""]:
        raise ManifestError(f"empty labels cell (write {NORMAL_LABEL!r} for an image without disease)")
    if any(not p for p in parts):
        raise ManifestError(f"empty disease id in labels {cell!r}")
    if NORMAL_LABEL in parts:
        raise ManifestError(f"labels {cell!r} mix {NORMAL_LABEL!r} with diseases")
    unknown = sorted(set(parts) - set(catalog.ids))
    if unknown:
        raise ManifestError(f"unknown disease ids {unknown} in labels {cell!r}; catalog has {catalog.ids}")
    return frozenset(parts)


@dataclass(frozen=True)
class _Layout:
    """What the header says: which optional columns exist, which are 0/1 flags, which are extra."""

    columns: tuple[str, ...]
    flags: tuple[str, ...]
    extras: tuple[str, ...]


def _layout(fieldnames: Sequence[str] | None, catalog: Catalog, path: Path) -> _Layout:
    if not fieldnames:
        expected = ",".join(REQUIRED_COLUMNS)
        raise ManifestError(f"{path}, line 1: empty manifest, expected a header with at least {expected}")
    columns = tuple(name.strip() for name in fieldnames)
    duplicated = sorted(name for name, n in Counter(columns).items() if n > 1)
    if duplicated or "" in columns:
        raise ManifestError(f"{path}, line 1: header has duplicated or empty column names {duplicated or ['']}")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ManifestError(f"{path}, line 1: header {','.join(columns)} lacks required column(s) {','.join(missing)}")
    ids = set(catalog.ids)
    return _Layout(
        columns=columns,
        flags=tuple(c for c in columns if c in ids),
        extras=tuple(c for c in columns if c not in ids and c not in BASE_COLUMNS),
    )


def _parse_row(cells: list[str], layout: _Layout, root: Path, catalog: Catalog) -> Record:
    if len(cells) != len(layout.columns):
        raise ManifestError(f"wrong number of cells: {len(cells)} for {len(layout.columns)} columns")
    row = dict(zip(layout.columns, (c.strip() for c in cells), strict=True))
    labels = parse_labels(row["labels"], catalog)
    for disease_id in layout.flags:
        flag = row[disease_id]
        if flag not in ("0", "1"):
            raise ManifestError(f"column {disease_id!r} must be 0 or 1, got {flag!r}")
        if (flag == "1") != (disease_id in labels):
            raise ManifestError(f"column {disease_id}={flag} disagrees with labels {row['labels']!r}")
    if not row["path"]:
        raise ManifestError("empty path")
    image = Path(os.path.abspath(root / row["path"]))
    if not image.exists():  # a file, or a folder of OCT B-scans
        raise ManifestError(f"image file not found: {image}")
    patient = row.get("patient_id") or None
    eye = parse_eye(row["eye"]) if row.get("eye") else None
    split_cell = row.get("split", "")
    split = normalise_split(split_cell) if split_cell else assign_split(patient or row["path"])
    return Record(
        path=image,
        labels=labels,
        patient_id=patient,
        eye=eye,
        split=split,
        extra={c: row[c] for c in layout.extras if row[c]},  # an empty cell is an absent value
    )


def read_manifest(
    path: str | os.PathLike, *, catalog: Catalog = DEFAULT_CATALOG, split: str | None = None
) -> list[Record]:
    """Read and validate a manifest; keep only rows of ``split`` when given (``heldout`` means ``test``).

    Raises ``ManifestError`` naming the file and line (see the module docstring for the rules).
    The whole file is validated whatever ``split`` is, so a patient leaking between splits is
    caught by every reader.
    """
    path = Path(path)
    wanted = normalise_split(split) if split is not None else None
    root = Path(os.path.abspath(path)).parent
    records: list[Record] = []
    seen_paths: dict[Path, int] = {}
    patient_split: dict[str, tuple[str, int]] = {}
    try:
        # utf-8-sig: spreadsheets save CSV with a byte-order mark.
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, strict=True)
            layout = _layout(next(reader, None), catalog, path)
            for cells in reader:
                line = reader.line_num
                if not any(c.strip() for c in cells):
                    continue
                try:
                    record = _parse_row(cells, layout, root, catalog)
                    _check_unique(record, line, seen_paths, patient_split)
                except ValueError as e:
                    raise ManifestError(f"{path}, line {line}: {e}") from e
                if wanted is None or record.split == wanted:
                    records.append(record)
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the manifest as UTF-8") from e
    except csv.Error as e:
        raise ManifestError(f"{path}, line {reader.line_num}: malformed CSV: {e}") from e
    return records


def _check_unique(
    record: Record, line: int, seen_paths: dict[Path, int], patient_split: dict[str, tuple[str, int]]
) -> None:
    first = seen_paths.setdefault(record.path, line)
    if first != line:
        raise ManifestError(f"image {record.path} is listed twice (first on line {first})")
    if record.patient_id is None:
        return
    split, first = patient_split.setdefault(record.patient_id, (record.split, line))
    if split != record.split:
        raise ManifestError(
            f"patient {record.patient_id!r} is in split {record.split!r} here but in {split!r} on line {first}; "
            "a patient's images must share one split"
        )


def write_manifest(
    path: str | os.PathLike,
    records: Iterable[Record],
    *,
    catalog: Catalog = DEFAULT_CATALOG,
    label_columns: bool = True,
) -> Path:
    """Write ``records`` to ``path`` atomically (paths made relative to its folder); returns the path.

    Columns: ``BASE_COLUMNS``, then one 0/1 column per catalog id (unless ``label_columns`` is
    false), then every ``extra`` key in order of first appearance (empty where a record lacks it).
    """
    path = Path(path)
    root = Path(os.path.abspath(path)).parent
    records = list(records)
    extras: dict[str, None] = {}
    for record in records:
        extras.update(dict.fromkeys(record.extra))
    flag_ids = catalog.ids if label_columns else []
    clash = sorted(set(extras) & set(catalog.ids))
    if clash:
        raise ManifestError(f"extra columns {clash} are catalog disease ids; rename them")
    rows = []
    for record in records:
        relative = Path(os.path.relpath(os.path.abspath(record.path), root)).as_posix()
        rows.append(
            [
                relative,
                record.patient_id or "",
                record.eye or "",
                record.split,
                format_labels(record.labels, catalog),
                *("1" if d in record.labels else "0" for d in flag_ids),
                *(record.extra.get(c, "") for c in extras),
            ]
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([*BASE_COLUMNS, *flag_ids, *extras])
        writer.writerows(rows)
    partial.replace(path)  # readers never see a half-written manifest
    return path


def label_matrix(records: Sequence[Record], catalog: Catalog = DEFAULT_CATALOG) -> np.ndarray:
    """Multi-hot targets ``(N, C)`` float32, columns in catalog order."""
    column = {d: i for i, d in enumerate(catalog.ids)}
    matrix = np.zeros((len(records), len(catalog)), dtype=np.float32)
    for i, record in enumerate(records):
        for disease_id in record.labels:
            if disease_id not in column:
                raise ManifestError(f"{record.path}: disease id {disease_id!r} is not in catalog {catalog.ids}")
            matrix[i, column[disease_id]] = 1.0
    return matrix


def label_counts(records: Iterable[Record], catalog: Catalog = DEFAULT_CATALOG) -> dict[str, dict[str, int]]:
    """Per split: number of images, of normal images, and of positives per disease id."""
    counts: dict[str, Counter] = {}
    for record in records:
        c = counts.setdefault(record.split, Counter())
        c["images"] += 1
        c[NORMAL_LABEL] += not record.labels
        c.update(record.labels)
    keys = ["images", NORMAL_LABEL, *catalog.ids]
    return {split: {k: int(c[k]) for k in keys} for split, c in sorted(counts.items())}
