"""`predilect screen`: screen folders, manifests and DICOM files into a results folder (resumable).

    predilect screen images/ --out results/ --server triton:8001             # then: predilect report results/
    predilect screen manifest.csv --out results/ --heatmaps                  # with each finding's overlay

Writes into the ``--out`` folder: ``results.jsonl``, one ``JournalRecord`` line per image (per frame
for multi-frame DICOM) with the result, or the reason the input itself is bad; ``exams.json``, the
exam result of every patient (both eyes together: refer, recall for re-photography, or no
referral), also printed; ``catalog.json``, the catalog the server screened with; and with
``--heatmaps``, each positive finding's heatmap drawn over the photograph in ``overlays/`` (PNG;
needs the ``[report]`` extra). Inputs already in the journal are skipped, so a rerun after an
interruption ends with every input exactly once; an input that failed on the server's side
(deadline, model not ready, internal error, server at capacity) is not recorded and is tried again
by a rerun; only a rejected or unreadable input is final. The journal is locked while a run writes
it: a second run on the same ``--out`` exits 2 at once. Nothing is written when the server cannot
be reached.

Patients and eyes come from a manifest's ``patient_id``/``eye`` columns, DICOM headers (PatientID,
laterality, StudyInstanceUID), or a file's path through ``--filename-pattern`` (default
``{patient}_{eye}``: ``P001_left.jpg`` and ``P001_right.jpg`` are patient P001's two eyes).

Exit status: 0 all recorded; 1 some inputs left for a rerun; 2 a user error (bad option, input
list, TLS file, refused token); 3 the server is unreachable or unusable.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from predilect.catalog import Catalog
from predilect.cli import EXIT_INCOMPLETE, EXIT_OK, EXIT_UNAVAILABLE, CommandError, command, description
from predilect.client import dicom
from predilect.client.aggregate import summary_table
from predilect.client.batch_inputs import (
    DEFAULT_FILENAME_PATTERN,
    Entry,
    FilenamePattern,
    collect_entries,
    local_identity,
)
from predilect.client.cli_options import add_client_options, client_from_args
from predilect.client.errors import PredilectClientError, ServerBusyError, ServerUnavailableError, is_final
from predilect.client.exam import exam_results, exams_table
from predilect.client.journal import ResultJournal
from predilect.client.progress import Progress
from predilect.client.records import JournalRecord
from predilect.client.results import ScreeningItem
from predilect.client.results_folder import (
    CATALOG_FILE,
    EXAMS_FILE,
    JOURNAL_FILE,
    OVERLAYS_DIR,
    check_out_folder,
    out_folder,
    write_catalog,
)
from predilect.client.screening import ScreeningClient
from predilect.client.settings import DEFAULT_MAX_IN_FLIGHT
from predilect.errors import UserError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="predilect screen", description=description(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="folders, manifest .csv files, images or .dcm files")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help=f"results folder: {JOURNAL_FILE} (appended; a rerun resumes), {EXAMS_FILE}, {CATALOG_FILE}, "
        f"{OVERLAYS_DIR}/",
    )
    parser.add_argument(
        "--heatmaps",
        action="store_true",
        help=f"ask for each positive finding's heatmap and draw it over the photograph into DIR/{OVERLAYS_DIR}/ (PNG)",
    )
    parser.add_argument(
        "--filename-pattern",
        default=DEFAULT_FILENAME_PATTERN,
        metavar="PATTERN",
        help="patient and eye of a file in a folder from its path: a template ({patient}, {eye}, {study}, {*}) "
        f"or a regular expression with those named groups (default {DEFAULT_FILENAME_PATTERN!r}; manifests and "
        "DICOM headers say it themselves)",
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
    pattern: FilenamePattern,
    catalog: Catalog,
    timeout_s: float | None = None,
    overlays: Path | None = None,
) -> int:
    """Screen ``todo`` into the journal; the number of inputs left for a rerun (transient errors)."""
    unfinished = 0
    groups: dict[int, list[ScreeningItem]] = {}
    paths = (e.path for e in todo)
    heatmaps = overlays is not None
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
        if overlays is not None:
            group = _with_overlays(entry, group, overlays, catalog, journal.path.parent)
        who = local_identity(entry, pattern)
        journal.append(
            JournalRecord.of_items(entry.key, group, patient_id=who.patient_id, eye=who.eye, study=who.study)
        )
        progress.advance()
    return unfinished


def _with_overlays(
    entry: Entry, group: list[ScreeningItem], folder: Path, catalog: Catalog, journal_dir: Path
) -> list[ScreeningItem]:
    """The group's items with their heatmaps drawn over the photograph into ``folder``."""
    from predilect.client.overlay import write_overlays

    done = [i.result for i in group if i.result is not None]
    names = {d.id: d.name for d in catalog}
    drawn = iter(write_overlays(entry.key, entry.path, done, folder, names=names, relative_to=journal_dir))
    return [dataclasses.replace(i, result=next(drawn)) if i.result is not None else i for i in group]


def _without_heatmaps(records: Sequence[JournalRecord]) -> int:
    """Recorded inputs with a positive finding but no heatmap: what ``--heatmaps`` on a rerun cannot draw."""
    return len({r.key for r in records if r.result is not None and r.result.positive and not r.result.heatmaps})


def _grouping(entries: Sequence[Entry], pattern: FilenamePattern) -> str:
    """One line on how the inputs were grouped into patients (what a reader checks first)."""
    sources = Counter(local_identity(e, pattern).source for e in entries if e.path.suffix.lower() != ".dcm")
    by_pattern = sources.get("filename pattern", 0)
    alone = sources.get("file name", 0)
    if not by_pattern and not alone:
        return ""
    text = f"{by_pattern} files grouped into patients and eyes by --filename-pattern {pattern.text!r}"
    return text + (f"; {alone} matched no pattern and are a patient each" if alone else "")


@command("screen")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.max_in_flight < 1:
        raise CommandError(f"--max-in-flight must be >= 1, got {args.max_in_flight}")
    pattern = FilenamePattern.parse(args.filename_pattern)
    if args.heatmaps:
        from predilect.client.overlay import pillow

        pillow()  # the [report] extra is missing: say so before anything is screened
    entries = collect_entries(args.inputs)
    if any(e.path.suffix.lower() == ".dcm" for e in entries):
        dicom.pydicom_module()  # imported here, once, before the worker threads need it
    check_out_folder(args.out, holds=f"{JOURNAL_FILE}, {EXAMS_FILE}")  # before anything is written
    client = client_from_args(args)  # reads the TLS files: a missing one is reported before anything is written
    try:
        client.connect()  # an unreachable server writes nothing, not even an empty journal
    except ServerUnavailableError as e:
        print(f"predilect screen: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except UserError:
        raise
    except PredilectClientError as e:
        print(f"predilect screen: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    catalog = client.catalog
    folder = out_folder(args.out, holds=f"{JOURNAL_FILE}, {EXAMS_FILE}")
    journal = ResultJournal(folder / JOURNAL_FILE)
    try:
        done = journal.open()
        todo = [e for e in entries if e.key not in done]
        already = len(entries) - len(todo)
        missing_maps = _without_heatmaps(journal.records) if args.heatmaps else 0
        if missing_maps and not todo:
            raise CommandError(
                f"every input is already in {journal.path}, {missing_maps} with findings but no heatmaps: --heatmaps "
                "draws overlays only for inputs screened now; screen into a new --out folder to draw them"
            )
        write_catalog(folder, catalog)
        progress = Progress(len(entries), already_done=already)
        print(f"predilect screen: {len(entries)} inputs, {already} already in {journal.path}", file=sys.stderr)
        if missing_maps:
            print(
                f"predilect screen: {missing_maps} inputs already recorded without heatmaps get none (--heatmaps "
                "applies to the inputs screened now; a new --out folder screens them all again)",
                file=sys.stderr,
            )
        grouping = _grouping(todo, pattern)
        if grouping:
            print(f"predilect screen: {grouping}", file=sys.stderr)
        overlays = folder / OVERLAYS_DIR if args.heatmaps else None
        try:
            with client:
                unfinished = _run(
                    client,
                    todo,
                    journal,
                    progress,
                    args.max_in_flight,
                    pattern=pattern,
                    catalog=catalog,
                    overlays=overlays,
                )
        except UserError:
            raise
        except ServerUnavailableError as e:
            print(f"predilect screen: {e}\nrerun the same command to resume", file=sys.stderr)
            return EXIT_UNAVAILABLE
        except PredilectClientError as e:
            print(f"predilect screen: {e}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        progress.finish()
        names = {d.id: d.name for d in catalog}
        exams = exam_results(journal.records, names=names)
        print(summary_table(journal.records))
        print()
        print(exams_table(exams))
        exams_file = folder / EXAMS_FILE
        exams_file.write_text(json.dumps([e.model_dump(mode="json") for e in exams], indent=1) + "\n", encoding="utf-8")
        print(
            f"predilect screen: results in {folder}/ (`predilect report {folder}` writes the HTML report)",
            file=sys.stderr,
        )
    finally:
        journal.close()
        client.close()
    if unfinished:
        print(
            f"predilect screen: {unfinished} inputs failed on the server's side (deadline, model not ready, "
            "server error, server at capacity); rerun the same command to retry them",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    return EXIT_OK
