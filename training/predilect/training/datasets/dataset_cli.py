"""`predilect dataset`: a public data set in its native layout -> a manifest (v2) on a catalog.

    predilect dataset odir5k /data/ODIR-5K --out data/odir          # data/odir/manifest.csv
    predilect dataset rfmid /data/RFMiD --catalog my_catalog.json --mapping rfmid_extra.json
    predilect dataset aptos2019 /data/aptos --print-mapping

Prints how many images each split got, which native labels no catalog id expresses, and which
images were left out and why. ``--mapping`` is a JSON object ``{native label: [catalog ids]}``
merged over the adapter's own table (``[]`` declares a label normal).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from predilect.catalog import DEFAULT_CATALOG, Catalog, load_catalog
from predilect.cli import CommandError, add_dataclass_options, command, dataclass_from_args, description
from predilect.manifest import label_counts, write_manifest
from predilect.outdir import out_folder
from predilect.training.datasets.adapters import ADAPTERS, UNMAPPED_POLICIES, read_native


@dataclass(frozen=True)
class DatasetOptions:
    out: Path = field(default=Path("data"), metadata={"help": "folder to write manifest.csv into"})
    catalog: Path | None = field(default=None, metadata={"help": "catalog JSON file (default: the built-in catalog)"})
    mapping: Path | None = field(
        default=None, metadata={"help": "JSON {native label: [catalog ids]} merged over the adapter's table"}
    )
    unmapped: str = field(
        default="skip_if_unlabelled",
        metadata={"help": f"images with findings the catalog lacks: {' | '.join(UNMAPPED_POLICIES)}"},
    )
    print_mapping: bool = field(default=False, metadata={"help": "print the mapping table and exit"})


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="predilect dataset", description=description(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("format", choices=sorted(ADAPTERS), help="the data set's native layout")
    p.add_argument("root", type=Path, help="the data set's folder, as distributed")
    add_dataclass_options(p, DatasetOptions)
    return p


def _overrides(path: Path | None) -> dict[str, list[str]] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CommandError(f"{path}: not JSON: {e}") from e
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(t, str) for t in v) for v in data.values()
    ):
        raise CommandError(f"{path}: expected a JSON object {{native label: [catalog ids]}}")
    return data


def _print_mapping(name: str, catalog: Catalog) -> None:
    known = set(catalog.ids)
    for native, targets in ADAPTERS[name].mapping.items():
        kept = [t for t in targets if t in known]
        missing = [t for t in targets if t not in known]
        shown = ", ".join(kept) if kept else ("normal" if not targets else "(unmapped)")
        note = f"   (not in catalog: {', '.join(missing)})" if missing else ""
        print(f"  {native!r:45} -> {shown}{note}")


@command("dataset")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    options = dataclass_from_args(DatasetOptions, args)
    catalog = load_catalog(options.catalog) if options.catalog else DEFAULT_CATALOG
    if options.unmapped not in UNMAPPED_POLICIES:
        raise CommandError(f"--unmapped must be one of {', '.join(UNMAPPED_POLICIES)}, got {options.unmapped!r}")
    if options.print_mapping:
        print(f"{args.format}: native label -> catalog ids (catalog {catalog.digest()})")
        _print_mapping(args.format, catalog)
        return 0
    result = read_native(
        args.format, args.root, catalog=catalog, overrides=_overrides(options.mapping), unmapped=options.unmapped
    )
    if not result.records:
        raise CommandError(f"{args.root}: no image of {args.format} maps onto the catalog; see --print-mapping")
    folder = out_folder(options.out, holds="manifest.csv")
    manifest = write_manifest(folder / "manifest.csv", result.records, catalog=catalog)
    print(result.summary())
    for split, counts in label_counts(result.records, catalog).items():
        positives = ", ".join(f"{d} {counts[d]}" for d in catalog.ids if counts[d])
        print(f"  {split}: {counts['images']} images, {counts['normal']} normal; {positives or 'no positives'}")
    print(f"wrote {manifest}")
    return 0
