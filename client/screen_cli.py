"""``predilect screen``: screen folders, manifests and DICOM files into a resumable JSONL journal.

One ``JournalRecord`` line per image (per frame for multi-frame DICOM) with the result, or the
reason the input itself is bad; inputs already in the journal are skipped, so a rerun after an
interruption ends with every input exactly once. An input that failed on the server's side
(deadline, model not ready, internal error) is not recorded and is tried again by a rerun.
Prints a per-patient "any eye referable" summary.

Exit status: 0 all recorded; 1 some inputs left for a rerun; 2 a user error (bad option, input
list, TLS file, refused token); 3 the server is unreachable or unusable.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from predilect.cli import EXIT_INCOMPLETE, EXIT_OK, EXIT_UNAVAILABLE, CommandError, command
from predilect.client.aggregate import patients, summary_table
from predilect.client.batch_inputs import Entry, collect_entries, local_identity
from predilect.client.cli_options import add_client_options, client_from_args
from predilect.client.errors import PredilectClientError, ServerUnavailableError, is_final
from predilect.client.journal import ResultJournal
from predilect.client.progress import Progress
from predilect.client.records import JournalRecord
from predilect.client.results import ScreeningItem
from predilect.client.screening import ScreeningClient
from predilect.client.settings import DEFAULT_MAX_IN_FLIGHT
from predilect.errors import UserError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="predilect screen", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="folders, manifest .csv files, images or .dcm files")
    parser.add_argument("--out", type=Path, required=True, help="JSONL journal (appended; resumable)")
    parser.add_argument("--patients-out", type=Path, help="also write the per-patient aggregate as JSON here")
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=DEFAULT_MAX_IN_FLIGHT,
        help=f"concurrent requests (default {DEFAULT_MAX_IN_FLIGHT})",
    )
    add_client_options(parser)
    return parser


def _stops_the_run(error: PredilectClientError) -> bool:
    """Failures every later input would meet too: no server, or a user error such as a refused token."""
    return isinstance(error, (ServerUnavailableError, UserError)) and not is_final(error)


def _run(
    client: ScreeningClient,
    todo: list[Entry],
    journal: ResultJournal,
    progress: Progress,
    max_in_flight: int,
    *,
    timeout_s: float | None = None,
) -> int:
    """Screen ``todo`` into the journal; the number of inputs left for a rerun (transient errors)."""
    unfinished = 0
    groups: dict[int, list[ScreeningItem]] = {}
    for item in client.screen_many((e.path for e in todo), max_in_flight=max_in_flight, timeout_s=timeout_s):
        group = groups.setdefault(item.index, [])
        group.append(item)
        if len(group) < item.frames:
            continue
        del groups[item.index]
        errors = [i.error for i in group if i.error is not None]
        stop = next((e for e in errors if _stops_the_run(e)), None)
        if stop is not None:
            raise stop
        if not all(is_final(e) for e in errors):
            unfinished += 1
            continue
        entry = todo[item.index]
        patient_id, eye = local_identity(entry)
        journal.append(JournalRecord.of_items(entry.key, group, patient_id=patient_id, eye=eye))
        progress.advance()
    return unfinished


@command("screen")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.max_in_flight < 1:
        raise CommandError(f"--max-in-flight must be >= 1, got {args.max_in_flight}")
    entries = collect_entries(args.inputs)
    client = client_from_args(args)  # reads the TLS files: a missing one is reported before anything is written
    journal = ResultJournal(args.out)
    try:
        done = journal.open()
        todo = [e for e in entries if e.key not in done]
        already = len(entries) - len(todo)
        progress = Progress(len(entries), already_done=already)
        print(f"predilect screen: {len(entries)} inputs, {already} already in {args.out}", file=sys.stderr)
        try:
            with client:
                unfinished = _run(client, todo, journal, progress, args.max_in_flight)
        except UserError:
            raise
        except ServerUnavailableError as e:
            print(f"predilect screen: {e}\nrerun the same command to resume", file=sys.stderr)
            return EXIT_UNAVAILABLE
        except PredilectClientError as e:
            print(f"predilect screen: {e}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        progress.finish()
        print(summary_table(journal.records))
        if args.patients_out is not None:
            args.patients_out.write_text(json.dumps([p.to_dict() for p in patients(journal.records)], indent=1))
    finally:
        journal.close()
    if unfinished:
        print(
            f"predilect screen: {unfinished} inputs failed on the server's side (deadline, model not ready, "
            "server error); rerun the same command to retry them",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    return EXIT_OK
