"""``predilect screen``: screen folders, manifests and DICOM files into a resumable JSONL journal.

One JSON line per image (per frame for multi-frame DICOM) with the result or the reason it
failed; inputs already in the journal are skipped, so a rerun after an interruption ends
with every input exactly once. Prints a per-patient "any eye referable" summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from predilect.client.aggregate import patients, summary_table
from predilect.client.batch_inputs import Entry, collect_entries, local_identity
from predilect.client.cli_options import add_client_options, client_from_args
from predilect.client.errors import (
    DeadlineExceededError,
    InputError,
    ModelNotReadyError,
    PredilectClientError,
    ServerUnavailableError,
)
from predilect.client.journal import ResultJournal
from predilect.client.progress import Progress
from predilect.client.results import ScreeningItem
from predilect.client.screening import ScreeningClient

# Not recorded: a rerun retries them. Everything else (rejected image, unsupported DICOM) is final.
_TRANSIENT = (DeadlineExceededError, ModelNotReadyError)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="predilect screen", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="folders, manifest .csv files, images or .dcm files")
    parser.add_argument("--out", type=Path, required=True, help="JSONL journal (appended; resumable)")
    parser.add_argument("--patients-out", type=Path, help="also write the per-patient aggregate as JSON here")
    parser.add_argument("--max-in-flight", type=int, default=8, help="concurrent requests (default 8)")
    add_client_options(parser)
    return parser


def _records(entry: Entry, items: list[ScreeningItem]) -> list[dict[str, Any]]:
    patient, eye = local_identity(entry)
    records = []
    for item in items:
        result = item.result
        records.append(
            {
                "key": entry.key,
                "frame": result.frame if result is not None else None,
                "frames": len(items),
                "patient_id": patient,
                "eye": eye,
                "sop_instance_uid": result.sop_instance_uid if result is not None else None,
                "result": result.model_dump(mode="json") if result is not None else None,
                "error": str(item.error) if item.error is not None else None,
                "error_type": type(item.error).__name__ if item.error is not None else None,
            }
        )
    return records


def _run(
    client: ScreeningClient, todo: list[Entry], journal: ResultJournal, progress: Progress, max_in_flight: int
) -> int:
    """Screen ``todo`` into the journal; the number of inputs left unfinished (transient errors)."""
    unfinished, groups = 0, {}
    for item in client.screen_many((e.path for e in todo), max_in_flight=max_in_flight):
        group = groups.setdefault(item.index, [])
        group.append(item)
        if len(group) < item.frames:
            continue
        del groups[item.index]
        errors = [i.error for i in group if i.error is not None]
        unavailable = next((e for e in errors if isinstance(e, ServerUnavailableError)), None)
        if unavailable is not None:
            raise unavailable
        if any(isinstance(e, _TRANSIENT) for e in errors):
            unfinished += 1
            continue
        journal.append(_records(todo[item.index], group))
        progress.advance()
    return unfinished


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.max_in_flight < 1:
        print("predilect screen: --max-in-flight must be >= 1", file=sys.stderr)
        return 2
    try:
        entries = collect_entries(args.inputs)
    except (InputError, OSError) as e:
        print(f"predilect screen: {e}", file=sys.stderr)
        return 2
    journal = ResultJournal(args.out)
    try:
        done = journal.open()
        todo = [e for e in entries if e.key not in done]
        progress = Progress(len(entries), already_done=len(entries) - len(todo))
        print(
            f"predilect screen: {len(entries)} inputs, {len(entries) - len(todo)} already in {args.out}",
            file=sys.stderr,
        )
        try:
            with client_from_args(args) as client:
                unfinished = _run(client, todo, journal, progress, args.max_in_flight)
        except ServerUnavailableError as e:
            print(f"predilect screen: {e}\nrerun the same command to resume", file=sys.stderr)
            return 3
        except PredilectClientError as e:
            print(f"predilect screen: {e}", file=sys.stderr)
            return 3
        progress.finish()
        print(summary_table(journal.records))
        if args.patients_out is not None:
            args.patients_out.write_text(json.dumps([p.to_dict() for p in patients(journal.records)], indent=1))
    finally:
        journal.close()
    if unfinished:
        print(
            f"predilect screen: {unfinished} inputs timed out or met an unready model; rerun to retry them",
            file=sys.stderr,
        )
        return 1
    return 0
