"""What ``predilect screen`` screens: folders, manifests and files, as keyed entries with their patient and eye.

Patient and eye are local bookkeeping for the exams (never sent), taken from what the files say:

* a manifest's ``patient_id`` and ``eye`` columns (and ``study``, a visit, when it has one);
* a DICOM header: PatientID, ImageLaterality (or Laterality) and StudyInstanceUID;
* otherwise the file's path inside the folder given, matched against a filename pattern
  (``--filename-pattern``): a template such as ``{patient}_{eye}`` (the default) or ``{patient}/{eye}``
  (a folder per patient), where ``{patient}`` is any text without ``/``, ``{eye}`` one of R/L, right/left,
  OD/OS in any case, ``{study}`` a visit and ``{*}`` anything; or a regular expression with named groups
  ``patient``, ``eye`` and ``study``. The pattern must match the end of the path without its suffix
  (``P001_left.jpg`` and ``P001_right.jpg`` are the two eyes of patient P001); a file it does not
  match is a patient of its own, named by its file name.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from predilect import contract
from predilect.client import dicom
from predilect.client.errors import InputError

DEFAULT_FILENAME_PATTERN = "{patient}_{eye}"
_EYE_WORDS = "r|l|od|os|right|left"
_PLACEHOLDERS = {
    "patient": r"(?P<patient>[^/]+?)",
    "eye": rf"(?P<eye>{_EYE_WORDS})",
    "study": r"(?P<study>[^/]+?)",
    "*": r"[^/]*?",
}


class FilenamePatternError(InputError):
    """A ``--filename-pattern`` that cannot be used; the message says why."""


@dataclass(frozen=True)
class FilenamePattern:
    """Patient, eye and study from a file's path (see the module docstring)."""

    text: str
    regex: re.Pattern[str]

    @classmethod
    def parse(cls, text: str) -> FilenamePattern:
        """A template (``{patient}_{eye}``) or a regular expression with named groups (``(?P<patient>...)``)."""
        if "(?P<" in text:
            source = text
        else:
            parts = re.split(r"(\{[a-z*]+\})", text)
            unknown = [p for p in parts if p.startswith("{") and p[1:-1] not in _PLACEHOLDERS]
            if unknown:
                raise FilenamePatternError(
                    f"--filename-pattern {text!r}: unknown placeholder {unknown[0]}; use {{patient}}, {{eye}}, "
                    "{study} and {*}"
                )
            source = "".join(_PLACEHOLDERS[p[1:-1]] if p.startswith("{") else re.escape(p) for p in parts)
        try:
            regex = re.compile(rf"(?:^|.*/){source}", re.IGNORECASE)
        except re.error as e:
            raise FilenamePatternError(f"--filename-pattern {text!r} is not a valid regular expression: {e}") from e
        if "patient" not in regex.groupindex:
            raise FilenamePatternError(
                f"--filename-pattern {text!r} names no patient ({{patient}} or (?P<patient>...))"
            )
        return cls(text=text, regex=regex)

    def identity(self, relative: str) -> tuple[str, str | None, str | None] | None:
        """(patient, eye, study) of a path relative to the folder screened, suffix removed; None when no match."""
        found = self.regex.fullmatch(relative)
        if found is None:
            return None
        groups = found.groupdict()
        eye = groups.get("eye")
        try:
            canonical = contract.parse_eye(eye) if eye else None
        except ValueError:
            return None
        return groups["patient"], canonical, groups.get("study")


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".dcm"})
_PATH_COLUMNS = ("path", "image", "file")


@dataclass(frozen=True)
class Entry:
    """One input: ``key`` is its resolved path (the journal's key); ``eye`` is R or L when known; ``relative``
    its path inside the folder it was found in (what a filename pattern reads)."""

    key: str
    path: Path
    patient_id: str | None = None
    eye: str | None = None
    study: str | None = None
    relative: str | None = None


def _entry(path: Path, *, patient_id: str | None = None, eye: str | None = None, study: str | None = None) -> Entry:
    resolved = path.resolve()
    return Entry(key=str(resolved), path=resolved, patient_id=patient_id, eye=eye, study=study)


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
    return [replace(_entry(p), relative=p.relative_to(folder).with_suffix("").as_posix()) for p in files]


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
        entries.append(
            _entry(
                manifest.parent / row[column],
                patient_id=row.get("patient_id") or None,
                eye=eye,
                study=row.get("study") or None,
            )
        )
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
            found = [replace(_entry(source), relative=source.with_suffix("").name)]
        else:
            raise InputError(f"{source} is neither a folder, a manifest (.csv) nor a file")
        for entry in found:
            entries.setdefault(entry.key, entry)
    return list(entries.values())


@dataclass(frozen=True)
class Identity:
    """Who and which eye an input is of (local bookkeeping), and where that came from."""

    patient_id: str
    eye: str | None
    study: str | None
    source: str  # "manifest", "DICOM header", "filename pattern" or "file name"


def local_identity(entry: Entry, pattern: FilenamePattern | None = None) -> Identity:
    """The patient, eye and study of ``entry``: the manifest's values, else the DICOM header, else the
    filename ``pattern``, else the file name alone (a patient of its own, eye unknown)."""
    if entry.patient_id is not None:
        return Identity(entry.patient_id, entry.eye, entry.study, "manifest")
    if entry.path.suffix.lower() == ".dcm":
        try:
            header = dicom.read_dataset(entry.path, stop_before_pixels=True)
        except InputError:  # unreadable or not DICOM: screening records why
            header = None
        if header is not None:
            patient, eye = dicom.identity(header)
            if patient is not None:
                return Identity(patient, entry.eye or eye, dicom.study_uid(header), "DICOM header")
    found = pattern.identity(entry.relative or entry.path.stem) if pattern is not None else None
    if found is not None:
        patient, eye, study = found
        return Identity(patient, entry.eye or eye, study, "filename pattern")
    return Identity(entry.path.stem, entry.eye, None, "file name")
