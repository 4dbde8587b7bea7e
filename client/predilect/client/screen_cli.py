"""``predilect screen``: screen folders, manifests and DICOM files into a resumable JSONL journal.

One ``JournalRecord`` line per image (per frame for multi-frame DICOM) with the result, or the
reason the input itself is bad; inputs already in the journal are skipped, so a rerun after an
interruption ends with every input exactly once. An input that failed on the server's side
(deadline, model not ready, internal error, server at capacity) is not recorded and is tried again
by a rerun; only a rejected or unreadable input is final (``errors.is_final``). The journal is
locked while a run writes it: a second run on the same ``--out`` exits 2 at once. Prints the
exam-level result of every patient (both eyes together: refer, recall for re-photography, or no
referral) and writes it beside the journal (``<out>.exams.json``).
``--heatmaps DIR`` asks the server for each positive finding's attention map and draws it over
the photograph into ``DIR`` (PNG; needs the ``[report]`` extra).

Exit status: 0 all recorded; 1 some inputs left for a rerun; 2 a user error (bad option, input
list, TLS file, refused token); 3 the server is unreachable or unusable.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from predilect.cli import EXIT_INCOMPLETE, EXIT_OK, EXIT_UNAVAILABLE, CommandError, command
from predilect.client import dicom
from predilect.client.aggregate import summary_table
from predilect.client.batch_inputs import Entry, collect_entries, local_identity
from predilect.client.cli_options import add_client_options, client_from_args
from predilect.client.errors import PredilectClientError, ServerBusyError, ServerUnavailableError, is_final
from predilect.client.exam import exam_results, exams_table
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
    parser.add_argument(
        "--exams-out", type=Path, help="the exam results (JSON); default: beside --out, as <out>.exams.json"
    )
    parser.add_argument(
        "--heatmaps", type=Path, metavar="DIR", help="write each positive finding's heatmap overlay (PNG) here"
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=DEFAULT_MAX_IN_FLIGHT,
        help=f"concurrent requests (default {DEFAULT_MAX_IN_FLIGHT})",
    )
    add_client_options(parser)
    return parser


def _stops_the_run(error: PredilectClientError) -> bool:
    """Failures every later input would meet too: no server, or a user error such as a refused token.
    A server at capacity refused one request, not the run: that input is left for a rerun."""
    if isinstance(error, ServerBusyError):
        return False
    return isinstance(error, (ServerUnavailableError, UserError)) and not is_final(error)


def _run(
    client: ScreeningClient,
    todo: list[Entry],
    journal: ResultJournal,
    progress: Progress,
    max_in_flight: int,
    *,
    timeout_s: float | None = None,
    heatmaps_dir: Path | None = None,
) -> int:
    """Screen ``todo`` into the journal; the number of inputs left for a rerun (transient errors)."""
    unfinished = 0
    groups: dict[int, list[ScreeningItem]] = {}
    paths = (e.path for e in todo)
    heatmaps = heatmaps_dir is not None
    for item in client.screen_many(paths, max_in_flight=max_in_flight, timeout_s=timeout_s, heatmaps=heatmaps):
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
        if heatmaps_dir is not None:
            group = _with_overlays(entry, group, heatmaps_dir)
        patient_id, eye = local_identity(entry)
        journal.append(JournalRecord.of_items(entry.key, group, patient_id=patient_id, eye=eye))
        progress.advance()
    return unfinished


def _with_overlays(entry: Entry, group: list[ScreeningItem], folder: Path) -> list[ScreeningItem]:
    """The group's items with their heatmaps drawn over the photograph into ``folder``."""
    from predilect.client.overlay import write_overlays

    done = [i for i in group if i.result is not None]
    drawn = iter(write_overlays(entry.key, entry.path, [i.result for i in done if i.result is not None], folder))
    return [dataclasses.replace(i, result=next(drawn)) if i.result is not None else i for i in group]


def exams_path(out: Path) -> Path:
    """Where the exam results go by default: beside the journal, ``<out>.exams.json``."""
    return out.with_name(out.name.removesuffix(".jsonl") + ".exams.json")


@command("screen")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.max_in_flight < 1:
        raise CommandError(f"--max-in-flight must be >= 1, got {args.max_in_flight}")
    if args.heatmaps is not None:
        from predilect.client.overlay import pillow

        pillow()  # the [report] extra is missing: say so before anything is screened
    entries = collect_entries(args.inputs)
    if any(e.path.suffix.lower() == ".dcm" for e in entries):
        dicom.pydicom_module()  # imported here, once, before the worker threads need it
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
                unfinished = _run(client, todo, journal, progress, args.max_in_flight, heatmaps_dir=args.heatmaps)
        except UserError:
            raise
        except ServerUnavailableError as e:
            print(f"predilect screen: {e}\nrerun the same command to resume", file=sys.stderr)
            return EXIT_UNAVAILABLE
        except PredilectClientError as e:
            print(f"predilect screen: {e}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        progress.finish()
        exams = exam_results(journal.records)
        print(summary_table(journal.records))
        print()
        print(exams_table(exams))
        out = args.exams_out or exams_path(args.out)
        out.write_text(json.dumps([e.model_dump(mode="json") for e in exams], indent=1) + "\n", encoding="utf-8")
    finally:
        journal.close()
    if unfinished:
        print(
            f"predilect screen: {unfinished} inputs failed on the server's side (deadline, model not ready, "
            "server error, server at capacity); rerun the same command to retry them",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    return EXIT_OK
