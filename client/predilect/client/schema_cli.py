"""`predilect schema`: write (or check) the JSON Schemas of the journal record and the exam result."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from predilect.cli import EXIT_INCOMPLETE, command
from predilect.client import schema


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predilect schema", description=(__doc__ or "").split(": ", 1)[1])
    p.add_argument("--out", type=Path, default=schema.SCHEMA_DIR, help="folder of the schema files")
    p.add_argument("--check", action="store_true", help="only check that the files are up to date (exit 1 if not)")
    return p


@command("schema")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.check:
        stale = schema.stale(args.out)
        for stale_path in stale:
            print(f"stale or missing: {stale_path}")
        return EXIT_INCOMPLETE if stale else 0
    for path in schema.write_all(args.out):
        print(f"wrote {path}")
    return 0
