"""`predilect drift`: compare a screening journal with the model's reference distributions.

Reads the journal ``predilect screen`` (or the gateway) wrote, takes the quality measures of every
screened image, the probabilities of the gradable ones and the ungradable share, and compares them
with the reference distributions stored with the model (``predilect assemble --reference-manifest``:
from the server's model discovery, or a reference JSON file) -- for all images and, with
``--by-camera``, per camera the requests named. Prints and writes a report: per series PSI, KS and an
alert level (``predilect.drift``). Exit 0, or 1 when a group reaches ``--fail-on``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from predilect import contract, drift
from predilect.cli import EXIT_INCOMPLETE, CommandError, command
from predilect.client.cli_options import add_client_options, client_from_args
from predilect.client.journal import JournalError
from predilect.client.records import JournalRecord
from predilect.client.results import ScreeningResult
from predilect.outdir import out_folder


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predilect drift", description=(__doc__ or "").split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("journal", type=Path, help="a screening journal (JSONL)")
    p.add_argument("--reference", type=Path, help="a reference JSON file (default: the server's, by discovery)")
    p.add_argument("--by-camera", action="store_true", help="also compare each camera's images on their own")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="folder that gets drift.md and drift.json (default: the journal's folder, as <journal>.drift.md)",
    )
    p.add_argument("--fail-on", choices=drift.LEVELS[1:], help="exit 1 when a group's level reaches this one")
    add_client_options(p)
    return p


def journal_results(path: Path) -> list[ScreeningResult]:
    """The screening results of a journal (records with an error are left out)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise CommandError(f"cannot read journal {path}: {e.strerror}") from e
    results = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = JournalRecord.model_validate_json(line)
        except ValueError as e:
            raise JournalError(
                f"{path}:{number}: not a journal record of schema {contract.RESULT_SCHEMA_VERSION}: {e}"
            ) from e
        if record.result is not None:
            results.append(record.result)
    return results


def compare_results(reference: drift.Reference, results: Sequence[ScreeningResult], group: str) -> drift.Drift:
    """``drift.compare`` over a group of journal results."""
    with_measures = [r for r in results if r.quality.measures is not None]
    measures = {
        m: np.array([r.quality.measures[m] for r in with_measures if r.quality.measures is not None])
        for m in contract.QUALITY_MEASURES
    }
    diseases = sorted({d for r in results for d in r.scores})
    probabilities = {d: np.array([r.scores.get(d, np.nan) for r in results]) for d in diseases}
    ungradable = np.array([not r.gradable for r in results], dtype=bool)
    return drift.compare(reference, measures=measures, probabilities=probabilities, ungradable=ungradable, group=group)


def _reference(args: argparse.Namespace) -> drift.Reference:
    if args.reference is not None:
        try:
            return drift.Reference.from_json(args.reference.read_text(encoding="utf-8"))
        except OSError as e:
            raise CommandError(f"cannot read reference {args.reference}: {e.strerror}") from e
    with client_from_args(args) as client:
        served = client.served
    if served.reference is None:
        raise CommandError(
            f"model {served.model_name} {served.model_version} on {args.server} carries no reference distributions: "
            "assemble it with `predilect assemble --reference-manifest`, or give --reference FILE"
        )
    return drift.Reference.from_json(served.reference)


@command("drift")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    results = journal_results(args.journal)
    if not results:
        raise CommandError(f"{args.journal} holds no screening result to compare")
    reference = _reference(args)
    drifts = [compare_results(reference, results, "all")]
    if args.by_camera:
        cameras = sorted({r.camera or "unknown" for r in results})
        drifts += [compare_results(reference, [r for r in results if (r.camera or "unknown") == c], c) for c in cameras]
    if args.out is not None:
        folder = out_folder(args.out, holds="drift.md, drift.json")
        md_path, json_path = folder / "drift.md", folder / "drift.json"
    else:
        stem = args.journal.with_suffix("")
        md_path, json_path = Path(f"{stem}.drift.md"), Path(f"{stem}.drift.json")
    header = [f"# Drift of {args.journal} against the model's reference", ""]
    text = drift.report_markdown(drifts, reference, header=header)
    md_path.write_text(text, encoding="utf-8")
    report = {"journal": str(args.journal), "reference": reference.source, "groups": [d.to_dict() for d in drifts]}
    json_path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(text)
    print(f"wrote {md_path} and {json_path}", file=sys.stderr)
    if args.fail_on is not None:
        worst = [drift.LEVELS.index(d.level) for d in drifts if d.level in drift.LEVELS]
        if worst and max(worst) >= drift.LEVELS.index(args.fail_on):
            return EXIT_INCOMPLETE
    return 0
