"""The results folder ``predilect screen --out DIR`` writes, and what ``predilect report`` reads.

Every ``--out`` of the ``predilect`` commands names a folder (``predilect.outdir``); this one holds:

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
from predilect.outdir import OutFolderError, check_out_folder, out_folder

__all__ = [
    "CATALOG_FILE",
    "catalog_text",
    "EXAMS_FILE",
    "JOURNAL_FILE",
    "OVERLAYS_DIR",
    "REPORT_DIR",
    "OutFolderError",
    "check_out_folder",
    "out_folder",
    "read_catalog",
    "write_catalog",
]

JOURNAL_FILE = "results.jsonl"
EXAMS_FILE = "exams.json"
CATALOG_FILE = "catalog.json"
OVERLAYS_DIR = "overlays"
REPORT_DIR = "report"


def catalog_text(catalog: Catalog) -> str:
    """The text of ``catalog.json``: what ``read_catalog`` reads back."""
    return catalog.to_json() + "\n"


def write_catalog(folder: Path, catalog: Catalog) -> Path:
    """Write the catalog a run screened with beside its journal (``catalog.json``)."""
    path = folder / CATALOG_FILE
    path.write_text(catalog_text(catalog), encoding="utf-8")
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
