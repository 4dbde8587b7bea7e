"""`predilect localisation`: does each positive finding's heatmap peak on the lesion the phantom drew?

Runs the exported model (with its ATTENTION output) on the held-out split of a phantom through
the served preprocessing, and scores, per disease, how often the hottest cell of the disease's
attention map falls on one of the lesions ``lesions.jsonl`` records for it -- beside the chance
rate of a random peak in the field of view. Target: >= 90% per disease; reported as measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from predilect.artifacts import default_artifacts
from predilect.build.localisation import measure_localisation, report_markdown
from predilect.cli import CommandError, command
from predilect.lesions import read_lesions


def _parser() -> argparse.ArgumentParser:
    artifacts = default_artifacts()
    p = argparse.ArgumentParser(prog="predilect localisation", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--onnx", type=Path, default=artifacts.onnx, help="exported model with its ATTENTION output")
    p.add_argument("--phantom", type=Path, default=artifacts.phantom, help="phantom folder (manifest + lesions.jsonl)")
    p.add_argument("--split", default="test", help="the manifest split to score (default: test)")
    p.add_argument("--report", type=Path, default=None, help="also write the table (markdown) and a .json beside it")
    return p


@command("localisation")
def main(argv: Sequence[str] | None = None) -> int:
    from predilect.build.export import read_onnx_meta
    from predilect.catalog import resolve_catalog
    from predilect.manifest import read_manifest

    args = _parser().parse_args(argv)
    lesions_path = args.phantom / "lesions.jsonl"
    if not lesions_path.is_file():
        raise CommandError(f"{args.phantom} has no lesions.jsonl; generate it with `predilect phantom`")
    catalog, preprocess, name, version = read_onnx_meta(args.onnx)
    manifest = args.phantom / "manifest.csv"
    # Labels are read on the phantom's own catalog (it may hold categories the model never
    # learned, e.g. zero-shot ones); only the model's diseases are scored.
    labels_catalog, _ = resolve_catalog(None, manifest)
    records = read_manifest(manifest, catalog=labels_catalog, split=args.split)
    seen = {r.extra.get("camera", "") for r in read_manifest(manifest, catalog=labels_catalog, split="train")}

    def groups(record: Any) -> list[str]:
        camera = record.extra.get("camera", "")
        if not camera:
            return []
        where = "seen cameras" if camera in seen else "held-out cameras"
        return [where, f"camera {camera} ({where.split()[0]})"]

    result = measure_localisation(
        args.onnx, records, read_lesions(lesions_path), args.phantom, catalog, preprocess, groups=groups
    )
    command_line = "predilect localisation " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    text = report_markdown(
        result,
        header=[
            "# Heatmap localisation",
            "",
            f"Command: `{command_line}`; date {datetime.date.today().isoformat()}; model {name} {version}; "
            f"phantom `{args.phantom}`, split {args.split}.",
            "A hit: the hottest cell of the disease's attention, mapped onto the photograph, overlaps a lesion "
            "drawn for that disease; centre: the hottest cell's centre lies inside one. Each chance column is "
            "what a peak on a random field-of-view cell of the same image would score on the figure left of it.",
        ],
    )
    print(text)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text, encoding="utf-8")
        data = {"command": command_line, **result.to_dict()}
        args.report.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return 0
