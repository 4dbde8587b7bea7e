"""`predilect report`: a screening journal as an HTML report folder: a reading worklist, then each patient's exam.

    predilect report results/                  # the folder `predilect screen --out` or the gateway's --out wrote
    predilect report results/ --out reading/   # anywhere else; zip it, copy it or serve it as it is

Reads the complete records of the journal (``results.jsonl`` in the folder given, or a journal file),
groups them into exams and writes ``index.html`` and ``images/`` into ``--out`` (a folder; default
``report/`` inside the results folder), every link relative. Diseases are named from the catalog
the run screened with (``catalog.json`` beside the journal), ``--catalog``, or the built-in one.
Photographs of gateway records come from the DICOM instances it stored (``--incoming``; default
``incoming/`` beside the results folder, the gateway's own default). Run ``screen`` with
``--heatmaps`` to have overlays. Needs the ``[report]`` extra (Jinja2, Pillow).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from predilect.catalog import load_catalog
from predilect.cli import CommandError, command, description
from predilect.client.journal import read_records
from predilect.client.report import write_report
from predilect.client.results_folder import JOURNAL_FILE, REPORT_DIR, out_folder, read_catalog


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="predilect report", description=description(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "journal",
        type=Path,
        metavar="RESULTS",
        help=f"the results folder of `predilect screen --out` or the gateway (its {JOURNAL_FILE}), or a journal file",
    )
    p.add_argument(
        "--out", type=Path, default=None, help=f"report folder to write (default: RESULTS/{REPORT_DIR}/)", metavar="DIR"
    )
    p.add_argument("--title", default="Fundus screening report", help="the page title")
    p.add_argument(
        "--catalog", type=Path, default=None, help="catalog JSON naming the diseases (default: the run's catalog.json)"
    )
    p.add_argument(
        "--incoming",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="folder of the DICOM instances the gateway stored (repeatable; default: incoming/ beside RESULTS)",
    )
    p.add_argument(
        "--no-photographs", dest="photographs", action="store_false", help="leave the photographs out (overlays stay)"
    )
    return p


@command("report")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    journal: Path = args.journal / JOURNAL_FILE if args.journal.is_dir() else args.journal
    if not journal.is_file():
        raise CommandError(f"no journal at {journal}; write one with `predilect screen --out DIR`")
    records = read_records(journal)
    if not records:
        raise CommandError(f"{journal} holds no complete screening record")
    folder = journal.parent
    out = out_folder(args.out or folder / REPORT_DIR, holds="index.html and images/")
    beside = read_catalog(folder)
    incoming = args.incoming or [d for d in (folder.parent / "incoming",) if d.is_dir()]
    page = write_report(
        records,
        out,
        title=args.title,
        source=str(journal),
        journal_dir=folder,
        catalog=load_catalog(args.catalog) if args.catalog else None,
        catalogs=[beside] if beside is not None else [],
        dicom_dirs=incoming,
        photographs=args.photographs,
    )
    print(f"report of {len(records)} images written to {page}")
    return 0
