"""Manifests: the CSV index of a data set, shared by phantom and real data.

Format, one row per image::

    path,patient_id,eye,split,labels,<one 0/1 column per catalog disease id, in catalog order>

``path`` is relative to the manifest's own directory (POSIX separators); ``labels`` is the
semicolon-joined disease ids, or ``normal`` when the image shows none. The 0/1 columns repeat
``labels`` in a form spreadsheets can sum; reading checks that both agree.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from predilect.catalog import DEFAULT_CATALOG, NORMAL_LABEL, Catalog
from predilect.contract import EYES, parse_eye
from predilect.errors import UserError

BASE_COLUMNS = ("path", "patient_id", "eye", "split", "labels")
LABEL_SEPARATOR = ";"


class ManifestError(UserError, ValueError):
    """A manifest (or a record) that cannot be read: the message names the file and line."""


@dataclass(frozen=True)
class Record:
    """One image of a manifest; ``path`` is absolute, ``labels`` empty for a normal image."""

    path: Path
    patient_id: str
    eye: str
    split: str
    labels: frozenset[str]

    def __post_init__(self) -> None:
        if self.eye not in EYES:
            raise ManifestError(f"eye must be one of {EYES} (see contract.parse_eye), got {self.eye!r}")
        if not self.patient_id or not self.split:
            raise ManifestError(f"patient_id and split must be non-empty: {self}")
        if NORMAL_LABEL in self.labels:
            raise ManifestError(f"{NORMAL_LABEL!r} is no disease; a normal record has empty labels")


def format_labels(labels: Iterable[str], catalog: Catalog = DEFAULT_CATALOG) -> str:
    """The ``labels`` cell: ids in catalog order joined by ';', or ``normal``."""
    ids = set(labels)
    unknown = ids - set(catalog.ids)
    if unknown:
        raise ManifestError(f"unknown disease ids {sorted(unknown)}; catalog has {catalog.ids}")
    ordered = [d for d in catalog.ids if d in ids]
    return LABEL_SEPARATOR.join(ordered) if ordered else NORMAL_LABEL


def parse_labels(cell: str, catalog: Catalog = DEFAULT_CATALOG) -> frozenset[str]:
    """Inverse of ``format_labels``; raises ValueError on unknown ids or a mixed ``normal``."""
    parts = [p.strip() for p in cell.split(LABEL_SEPARATOR)]
    if parts == [NORMAL_LABEL]:
        return frozenset()
    if any(not p for p in parts):
        raise ManifestError(f"empty disease id in labels {cell!r} (use {NORMAL_LABEL!r} for none)")
    if NORMAL_LABEL in parts:
        raise ManifestError(f"labels {cell!r} mix {NORMAL_LABEL!r} with diseases")
    unknown = sorted(set(parts) - set(catalog.ids))
    if unknown:
        raise ManifestError(f"unknown disease ids {unknown} in labels {cell!r}; catalog has {catalog.ids}")
    return frozenset(parts)


def _check_header(fieldnames: Sequence[str] | None, catalog: Catalog, path: Path) -> None:
    expected = [*BASE_COLUMNS, *catalog.ids]
    if fieldnames is None:
        raise ManifestError(f"{path}: empty manifest, expected header {','.join(expected)}")
    if list(fieldnames) != expected:
        raise ManifestError(f"{path}: header {','.join(fieldnames)} does not match expected {','.join(expected)}")


def _parse_row(row: dict[str, str], root: Path, catalog: Catalog) -> Record:
    if None in row or any(v is None for v in row.values()):
        raise ManifestError("wrong number of cells")
    labels = parse_labels(row["labels"], catalog)
    for disease_id in catalog.ids:
        flag = row[disease_id].strip()
        if flag not in ("0", "1"):
            raise ManifestError(f"column {disease_id!r} must be 0 or 1, got {flag!r}")
        if (flag == "1") != (disease_id in labels):
            raise ManifestError(f"column {disease_id}={flag} disagrees with labels {row['labels']!r}")
    image = (root / row["path"]).resolve()
    if not image.is_file():
        raise ManifestError(f"image file not found: {image}")
    return Record(
        path=image, patient_id=row["patient_id"], eye=parse_eye(row["eye"]), split=row["split"], labels=labels
    )


def read_manifest(
    path: str | os.PathLike, *, catalog: Catalog = DEFAULT_CATALOG, split: str | None = None
) -> list[Record]:
    """Read and validate a manifest; keep only rows of ``split`` when given.

    Raises ValueError naming the line for a bad header, an unknown disease id, 0/1 columns
    that disagree with ``labels``, or a missing image file.
    """
    path = Path(path)
    root = path.resolve().parent
    records: list[Record] = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        _check_header(reader.fieldnames, catalog, path)
        for row in reader:
            try:
                record = _parse_row(row, root, catalog)
            except ValueError as e:
                raise ManifestError(f"{path}, line {reader.line_num}: {e}") from e
            if split is None or record.split == split:
                records.append(record)
    return records


def write_manifest(path: str | os.PathLike, records: Iterable[Record], *, catalog: Catalog = DEFAULT_CATALOG) -> Path:
    """Write ``records`` to ``path`` (paths made relative to its directory); returns the path."""
    path = Path(path)
    root = path.resolve().parent
    rows = []
    for record in records:
        relative = Path(os.path.relpath(Path(record.path).resolve(), root)).as_posix()
        flags = ["1" if d in record.labels else "0" for d in catalog.ids]
        rows.append(
            [relative, record.patient_id, record.eye, record.split, format_labels(record.labels, catalog), *flags]
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([*BASE_COLUMNS, *catalog.ids])
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
