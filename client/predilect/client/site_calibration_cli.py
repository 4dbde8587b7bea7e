"""`predilect gradability --manifest LABELLED.csv`: calibrate gradability and check the operating points on a
site's own graded photographs, through the server that is to go live (``predilect.client.site_calibration``).

Writes ``quality_calibration.json`` (the site's thresholds: serve them with ``predilect assemble --quality``),
``site_report.md`` and ``site_report.json``. Without ``--manifest`` the command calibrates on a phantom.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from predilect import contract, drift, quality
from predilect.cli import CommandError, command
from predilect.client import site_calibration
from predilect.client.cli_options import add_client_options, client_from_args
from predilect.client.results import ScreeningResult


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predilect gradability --manifest", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument(
        "--manifest", type=Path, required=True, help="labelled CSV: path, gradable[, reasons, camera, labels]"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the thresholds and the site report")
    p.add_argument(
        "--clean-quantile", type=float, default=0.995, help="share of gradable photographs each check passes"
    )
    p.add_argument(
        "--target-sensitivity", type=float, default=0.9, help="referral sensitivity the site thresholds reach"
    )
    p.add_argument("--max-in-flight", type=int, default=8, help="photographs screened at once")
    add_client_options(p)
    return p


def screen_labelled(
    args: argparse.Namespace, rows: Sequence[site_calibration.Labelled]
) -> tuple[site_calibration.Screened, ScreeningResult]:
    """Screen every labelled photograph (each camera's under its name and with its field angle); the arrays,
    and one result."""
    results: list[ScreeningResult | None] = [None] * len(rows)
    groups: dict[tuple[str | None, float | None], list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r.camera, r.field_angle_deg), []).append(i)
    default_camera, default_angle = args.camera, args.field_angle_deg
    for (camera, angle), indices in groups.items():
        args.camera = camera or default_camera
        args.field_angle_deg = angle if angle is not None else default_angle
        with client_from_args(args) as client:
            for item in client.screen_many([rows[i].path for i in indices], max_in_flight=args.max_in_flight):
                if item.error is not None:
                    raise CommandError(f"{rows[indices[item.index]].path}: {item.error}")
                results[indices[item.index]] = item.result
    done = [r for r in results if r is not None]
    first = done[0]
    diseases = tuple(first.scores)
    screened = site_calibration.Screened(
        measures=np.array(
            [[r.quality.measures[m] for m in contract.QUALITY_MEASURES] for r in done if r.quality.measures]
        ),
        served_gradable=np.array([r.gradable for r in done], dtype=bool),
        probabilities=np.array([[r.scores[d] for d in diseases] for r in done], dtype=np.float64),
        diseases=diseases,
    )
    return screened, first


@command("gradability")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    client = client_from_args(args)
    with client:
        served = client.served
    rows = site_calibration.read_labelled(args.manifest, diseases=served.catalog.ids)
    print(f"screening {len(rows)} labelled photographs on {args.server} ...", file=sys.stderr, flush=True)
    screened, _ = screen_labelled(args, rows)
    if len(screened.measures) != len(rows):
        raise CommandError(f"the server on {args.server} returns no quality measures: re-assemble its repository")
    command_line = "predilect gradability " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    today = datetime.date.today().isoformat()
    reference = drift.Reference.from_json(served.reference) if served.reference else None
    report = site_calibration.calibrate_site(
        rows,
        screened,
        quality.QualityCfg.from_dict(served.rules.quality),
        served_thresholds=served.rules.thresholds,
        reference=reference,
        clean_quantile=args.clean_quantile,
        target_sensitivity=args.target_sensitivity,
        source=f"{command_line} ({today}): {len(rows)} graded photographs of {args.manifest}",
    )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality_calibration.json").write_text(json.dumps(report.site_quality.to_dict(), indent=1) + "\n")
    header = [
        f"# Site calibration: {args.manifest}",
        "",
        f"Command: `{command_line}`; date {today}; model {served.model_name} {served.model_version} on {args.server}.",
        f"{len(rows)} photographs, graded by the site; each screened through the server.",
    ]
    text = site_calibration.report_markdown(report, header=header)
    (out / "site_report.md").write_text(text, encoding="utf-8")
    data = {
        "command": command_line,
        "date": today,
        "model": [served.model_name, served.model_version],
        **report.to_dict(),
    }
    (out / "site_report.json").write_text(json.dumps(data, indent=1, default=float) + "\n", encoding="utf-8")
    print(text)
    print(f"wrote {out / 'quality_calibration.json'}, {out / 'site_report.md'}", file=sys.stderr)
    return 0
