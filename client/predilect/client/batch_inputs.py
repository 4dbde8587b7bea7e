"""What ``predilect screen`` screens: folders, manifests and files, as keyed entries.

Patient and eye are local bookkeeping for the per-patient aggregate: from the manifest's
``patient_id``/``eye`` columns, from a DICOM header (read here, never sent), or the file stem.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from predilect import contract
from predilect.client import dicom
from predilect.client.errors import InputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".dcm"})
_PATH_COLUMNS = ("path", "image", "file")


@dataclass(frozen=True)
class Entry:
    """One input: ``key`` is its resolved path (the journal's key); ``eye`` is R or L when known."""

    key: str
    path: Path
    patient_id: str | None = None
    eye: str | None = None


def _entry(path: Path, *, patient_id: str | None = None, eye: str | None = None) -> Entry:
    resolved = path.resolve()
    return Entry(key=str(resolved), path=resolved, patient_id=patient_id, eye=eye)


def _folder(folder: Path) -> list[Entry]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    inside = folder.resolve()
    for p in files:
        target = p.resolve()
        if not target.is_relative_to(inside):
            raise InputError(
                f"{p} is a link to {target}, outside the input folder {folder}: remove the link, "
                "or give that file as an input of its own"
            )
    return [_entry(p) for p in files]


def _manifest(manifest: Path) -> list[Entry]:
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        column = next((c for c in _PATH_COLUMNS if c in (reader.fieldnames or [])), None)
        if column is None:
            raise InputError(
                f"manifest {manifest} has no path column (one of {_PATH_COLUMNS}); its columns are {reader.fieldnames}"
            )
        rows = list(reader)
    entries = []
    for line, row in enumerate(rows, 2):  # line 1 is the header
        if not row.get(column):
            raise InputError(f"manifest {manifest} line {line}: no {column!r} given")
        try:
            eye = contract.parse_eye(row["eye"]) if (row.get("eye") or "").strip() else None
        except ValueError as e:
            raise InputError(f"manifest {manifest} line {line}: {e}") from e
        entries.append(_entry(manifest.parent / row[column], patient_id=row.get("patient_id") or None, eye=eye))
    return entries


def collect_entries(sources: Iterable[Path]) -> list[Entry]:
    """The entries of folders (recursively: .jpg .jpeg .png .dcm), manifests (.csv) and files; each once."""
    entries: dict[str, Entry] = {}
    for source in sources:
        if source.is_dir():
            found = _folder(source)
        elif source.suffix.lower() == ".csv":
            found = _manifest(source)
        elif source.is_file():
            found = [_entry(source)]
        else:
            raise InputError(f"{source} is neither a folder, a manifest (.csv) nor a file")
        for entry in found:
            entries.setdefault(entry.key, entry)
    return list(entries.values())


def local_identity(entry: Entry) -> tuple[str, str | None]:
    """(patient, eye) for the aggregate: manifest values, else the DICOM header, else the file stem."""
    patient, eye = entry.patient_id, entry.eye
    if patient is None and entry.path.suffix.lower() == ".dcm":
        try:
            header_patient, header_eye = dicom.identity(dicom.read_dataset(entry.path, stop_before_pixels=True))
        except InputError:  # unreadable or not DICOM: screening records why
            header_patient, header_eye = None, None
        patient, eye = header_patient, eye or header_eye
    return (patient or entry.path.stem), eye
