"""`predilect report`: a screening journal (JSONL) as an HTML summary per patient, with the overlays.

Reads the complete records of the journal (``predilect screen --out``; run ``screen`` with
``--heatmaps DIR`` to have overlays), groups them into exams and writes one self-contained HTML
page: what a grader opens. Needs the ``[report]`` extra (Jinja2, Pillow).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from predilect.cli import CommandError, command
from predilect.client.journal import read_records
from predilect.client.report import render_report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predilect report", description=(__doc__ or "").split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("journal", type=Path, help="results JSONL written by `predilect screen`")
    p.add_argument("--out", type=Path, default=None, help="HTML file to write (default: beside the journal, .html)")
    p.add_argument("--title", default="Fundus screening report", help="the page title")
    p.add_argument(
        "--no-photographs", dest="photographs", action="store_false", help="leave the photographs out (overlays stay)"
    )
    return p


@command("report")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.journal.is_file():
        raise CommandError(f"no journal at {args.journal}; write one with `predilect screen --out`")
    records = read_records(args.journal)
    if not records:
        raise CommandError(f"{args.journal} holds no complete screening record")
    out: Path = args.out or args.journal.with_suffix(".html")
    html = render_report(records, title=args.title, source=str(args.journal), photographs=args.photographs)
    out.write_text(html, encoding="utf-8")
    print(f"report of {len(records)} images written to {out}")
    return 0
