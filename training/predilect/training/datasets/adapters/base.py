"""What every dataset adapter shares: the mapping of native labels onto a catalog, and the report.

An adapter reads a public data set in its native layout (annotation files and image folders
exactly as distributed) and returns manifest ``Record``s labelled with catalog ids. Each
adapter is an ``Adapter``: its name, its mapping table (native label -> catalog ids; an empty
tuple means "no disease", the native normal class), and a reader of the layout that yields
each image's native findings (``NativeImage``) or why the layout leaves it out (``Skipped``);
calling the adapter maps them onto the catalog. A native label without an entry, or whose
entries are all missing from the catalog in use, is *unmapped*: the report counts it, and the
unmapped policy (``UNMAPPED_POLICIES``) decides what happens to the image, so nothing is
silently relabelled as normal.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from predilect.catalog import DEFAULT_CATALOG, Catalog
from predilect.errors import UserError
from predilect.manifest import Record, assign_split

UNMAPPED_POLICIES: tuple[str, ...] = ("skip_if_unlabelled", "skip_image", "ignore")
"""What to do with an image that has a finding the catalog cannot express:
``skip_if_unlabelled`` (default) leaves it out only when none of its findings maps (it would
otherwise read as normal); ``skip_image`` leaves out every such image; ``ignore`` keeps it with
the findings that do map (the others count as absent)."""

LabelMapping = Mapping[str, Sequence[str]]


class DatasetLayoutError(UserError, ValueError):
    """A data set that is not in the layout its adapter reads; the message names the file (and line)."""


@dataclass
class AdapterResult:
    """Records of one data set and what did not make it into them."""

    dataset: str
    records: list[Record]
    unmapped: Counter[str] = field(default_factory=Counter)
    """Native label -> number of images carrying it that no catalog id expresses."""
    skipped: Counter[str] = field(default_factory=Counter)
    """Reason -> number of images left out."""
    notes: list[str] = field(default_factory=list)
    """What a user of the manifest must know about how it was made (e.g. per-image splits)."""

    def summary(self) -> str:
        """A few lines for people: counts per split, unmapped labels, skipped images."""
        splits = Counter(r.split for r in self.records)
        lines = [
            f"{self.dataset}: {len(self.records)} images ("
            + ", ".join(f"{s} {splits[s]}" for s in ("train", "val", "test") if splits[s])
            + ")"
        ]
        if self.unmapped:
            lines.append(
                "  unmapped labels (images): " + ", ".join(f"{k} ({v})" for k, v in self.unmapped.most_common())
            )
        if self.skipped:
            lines.append("  skipped images: " + ", ".join(f"{k} ({v})" for k, v in self.skipped.most_common()))
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


class LabelMapper:
    """Native labels -> catalog ids under a mapping table and an unmapped policy (``UNMAPPED_POLICIES``)."""

    def __init__(
        self,
        table: LabelMapping,
        catalog: Catalog,
        *,
        overrides: LabelMapping | None = None,
        policy: str = "skip_if_unlabelled",
    ) -> None:
        if policy not in UNMAPPED_POLICIES:
            raise DatasetLayoutError(f"unmapped policy must be one of {UNMAPPED_POLICIES}, got {policy!r}")
        merged = {**table, **(overrides or {})}
        known = set(catalog.ids)
        self._table = {native: frozenset(t for t in targets if t in known) for native, targets in merged.items()}
        self._normal = {native for native, targets in merged.items() if not targets}
        self.policy = policy

    def map(self, native: Iterable[str], result: AdapterResult) -> frozenset[str] | None:
        """Catalog labels of an image with ``native`` findings, or None when the policy skips it."""
        labels: set[str] = set()
        missing = []
        for label in native:
            targets = self._table.get(label)
            if targets:
                labels |= targets
            elif label not in self._normal:
                missing.append(label)
        result.unmapped.update(missing)
        if missing and (self.policy == "skip_image" or (self.policy == "skip_if_unlabelled" and not labels)):
            result.skipped["finding not in catalog"] += 1
            return None
        return frozenset(labels)


@dataclass(frozen=True)
class NativeImage:
    """One image as its data set's annotation has it: the file, its native findings (keys of the
    mapping table) and, where the layout says, patient, eye, official split and extra columns."""

    path: Path
    findings: Sequence[str]
    patient: str | None = None
    eye: str | None = None
    split: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Skipped:
    """An image the layout leaves out (ungradable, not a fundus photograph, ...); the report counts ``reason``."""

    reason: str


@dataclass(frozen=True)
class Note:
    """Something the layout reader found that the report must say (e.g. which list it read)."""

    text: str


Layout = Callable[[Path], Iterable["NativeImage | Skipped | Note"]]
"""A data set's reader: the native images under a root folder, in order."""


@dataclass(frozen=True)
class Adapter:
    """One public data set: ``name`` (the records' ``dataset``), its ``mapping`` table and its ``layout``
    reader. Called with a root folder (and ``catalog``, ``overrides``, ``unmapped`` policy), it returns
    the records of the images that map onto the catalog and a report of the rest."""

    name: str
    mapping: LabelMapping
    layout: Layout
    notes: tuple[str, ...] = ()

    def __call__(
        self,
        root: str | Path,
        *,
        catalog: Catalog = DEFAULT_CATALOG,
        overrides: LabelMapping | None = None,
        unmapped: str = "skip_if_unlabelled",
    ) -> AdapterResult:
        mapper = LabelMapper(self.mapping, catalog, overrides=overrides, policy=unmapped)
        result = AdapterResult(self.name, [], notes=list(self.notes))
        for image in self.layout(Path(root)):
            if isinstance(image, Skipped):
                result.skipped[image.reason] += 1
                continue
            if isinstance(image, Note):
                result.notes.append(image.text)
                continue
            labels = mapper.map(image.findings, result)
            if labels is not None:
                result.records.append(
                    make_record(
                        image.path,
                        labels,
                        dataset=self.name,
                        patient=image.patient,
                        eye=image.eye,
                        split=image.split,
                        extra=image.extra,
                    )
                )
        return result


def make_record(
    image: Path,
    labels: frozenset[str],
    *,
    dataset: str,
    patient: str | None,
    eye: str | None = None,
    split: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> Record:
    """A record whose patient id is namespaced by data set (``odir:12``) so data sets can be merged;
    without an official split, the split is assigned by patient (or image) hash."""
    patient_id = f"{dataset}:{patient}" if patient else None
    key = patient_id or f"{dataset}:{image.name}"
    return Record(
        path=image,
        labels=labels,
        patient_id=patient_id,
        eye=eye,
        split=split or assign_split(key),
        extra={"dataset": dataset, **(extra or {})},
    )


def require_file(path: Path, *, what: str, source: Path, line: int | None = None) -> Path:
    """``path`` if it is a file; DatasetLayoutError naming ``source`` (and its line) otherwise."""
    if not path.is_file():
        where = f"{source}, line {line}" if line is not None else str(source)
        raise DatasetLayoutError(f"{where}: {what} not found: {path}")
    return path


def find_first(root: Path, candidates: Sequence[str], *, what: str) -> Path:
    """The first of ``candidates`` (relative to ``root``) that exists; DatasetLayoutError listing them."""
    for candidate in candidates:
        path = root / candidate
        if path.exists():
            return path
    tried = ", ".join(str(root / c) for c in candidates)
    raise DatasetLayoutError(f"{root}: no {what} found; looked for {tried}")


def csv_rows(path: Path, *, required: Sequence[str], delimiter: str = ",") -> Iterator[tuple[int, dict[str, str]]]:
    """``(line, row)`` of a CSV with a header; DatasetLayoutError naming the file for missing columns."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetLayoutError(f"{path}, line 1: header {header} lacks column(s) {missing}")
        reader.fieldnames = header
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise DatasetLayoutError(f"{path}, line {reader.line_num}: wrong number of cells")
            yield reader.line_num, {k: v.strip() for k, v in row.items()}


def parse_int(value: str, *, column: str, path: Path, line: int, allowed: Iterable[int] | None = None) -> int:
    """An integer cell (``2`` or ``2.0`` as spreadsheets write it); DatasetLayoutError naming file and line."""
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if number != number or number != int(number):
        raise DatasetLayoutError(f"{path}, line {line}: column {column!r} must be an integer, got {value!r}")
    allowed = set(allowed) if allowed is not None else None
    if allowed is not None and int(number) not in allowed:
        expected = sorted(allowed)
        raise DatasetLayoutError(f"{path}, line {line}: column {column!r} must be one of {expected}, got {value!r}")
    return int(number)


def index_images(folder: Path, suffixes: Sequence[str] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")) -> dict[str, Path]:
    """Stem -> path of the images in ``folder`` (one directory listing, not one stat per image)."""
    wanted = {s.lower() for s in suffixes}
    index: dict[str, Path] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            path = Path(entry.path)
            if entry.is_file() and path.suffix.lower() in wanted:
                index.setdefault(path.stem, path)
    return index
