"""The results folder ``predilect screen --out DIR`` writes, and what ``predilect report`` reads.

Every ``--out`` of the ``predilect`` commands names a folder; this one holds:

* ``results.jsonl``: the journal, one ``JournalRecord`` per image (the gateway's ``--out`` folder
  holds one of the same name);
* ``exams.json``: the exam result of every patient;
* ``catalog.json``: the catalog the server screened with, so a report names the diseases;
* ``overlays/``: the heatmap overlays (``--heatmaps``), referenced from the journal relative to the folder;
* ``report/``: where ``predilect report`` writes by default.
"""

from __future__ import annotations

from pathlib import Path

from predilect.catalog import Catalog
from predilect.errors import UserError

JOURNAL_FILE = "results.jsonl"
EXAMS_FILE = "exams.json"
CATALOG_FILE = "catalog.json"
OVERLAYS_DIR = "overlays"
REPORT_DIR = "report"
FILE_SUFFIXES = frozenset({".jsonl", ".json", ".csv", ".html", ".md", ".onnx", ".safetensors", ".png", ".txt"})
"""Suffixes that say a path names a file: given as an ``--out`` folder, it is refused (a folder named
``results.jsonl`` would surprise everyone)."""


class OutFolderError(UserError):
    """``--out`` names a file where the command writes a folder."""


def check_out_folder(path: Path, *, holds: str) -> None:
    """``OutFolderError`` when ``--out`` ``path`` is a file or looks like a file name; nothing is created.

    ``holds`` says what the folder gets, for the message (``"results.jsonl, exams.json"``)."""
    if path.is_file() or (not path.exists() and path.suffix.lower() in FILE_SUFFIXES):
        raise OutFolderError(
            f"--out is a folder (it gets {holds}); {path} names a file: give a folder, "
            f"e.g. --out {path.with_suffix('')}"
        )


def out_folder(path: Path, *, holds: str) -> Path:
    """``path`` as an ``--out`` folder, created; ``OutFolderError`` as ``check_out_folder`` says."""
    check_out_folder(path, holds=holds)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_catalog(folder: Path, catalog: Catalog) -> Path:
    """Write the catalog a run screened with beside its journal (``catalog.json``)."""
    path = folder / CATALOG_FILE
    path.write_text(catalog.to_json() + "\n", encoding="utf-8")
    return path


def read_catalog(folder: Path) -> Catalog | None:
    """The catalog beside a journal, when there is a readable one."""
    path = folder / CATALOG_FILE
    if not path.is_file():
        return None
    try:
        return Catalog.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError):
        return None
