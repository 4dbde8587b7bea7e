"""An HTML report of a screening journal: a reading worklist, then each patient's exam.

``write_report`` writes a folder -- ``index.html`` and ``images/`` -- whose every link and image is
relative, so the folder can be zipped, copied or served as it is. The page opens with the
worklist: how many images were screened, how many patients are referable (and with which
disease), how many images are ungradable and why, how many inputs were refused; then the
patients in order of urgency, each linking to its exam. Each exam gives the outcome and what to
do, then per eye the decision, the gradability (and why not), the findings by name with their
probabilities and operating points, a thumbnail of the photograph that opens the full-size
photograph, and each finding's heatmap overlay with a caption saying which map it is and where
its peak lies, in the photograph's own pixels. Photographs come from the screened files, or, for
the gateway's records (keyed by SOP Instance UID), from the DICOM instances it stored.

Elements carry ``data-*`` attributes (patient, eye, outcome, decision, kind of image, the worklist's
counts) so the page can be read by programs too. Rendering needs the ``[report]`` extra (Jinja2 for
autoescaped templating, Pillow for the photographs), imported on first use.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from predilect import contract
from predilect.catalog import DEFAULT_CATALOG, Catalog
from predilect.client.errors import InputError, PredilectClientError, ReportSupportMissingError
from predilect.client.exam import (
    INCOMPLETE,
    NOT_REFERRED,
    RECALL,
    REFER_ROUTINELY,
    REFER_URGENTLY,
    ExamResult,
    exam_key,
    exam_results,
)
from predilect.client.records import JournalRecord

TEMPLATE = Path(__file__).with_name("report.html.j2")
PAGE = "index.html"
IMAGES_DIR = "images"
THUMBNAIL_PX = 480
FULL_JPEG_QUALITY = 92
URGENCY = (REFER_URGENTLY, REFER_ROUTINELY, RECALL, INCOMPLETE, NOT_REFERRED)
"""The worklist's order: the most urgent exams first."""
REFUSAL_KINDS = {"ImageRejectedError": "rejected by the server", "UnsupportedDicomError": "DICOM not screenable"}


@dataclass
class ImageView:
    kind: str  # "photograph" or "overlay"
    src: str  # the thumbnail, relative to the page
    caption: str
    link: str  # the full-size image, relative to the page
    disease: str = ""


@dataclass
class RecordView:
    record: JournalRecord
    images: list[ImageView] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ExamView:
    exam: ExamResult
    anchor: str  # the id of its section on the page
    records: list[JournalRecord]


@dataclass(frozen=True)
class Worklist:
    """The counts at the top of the report and the exams in reading order."""

    images: int
    screened: int
    gradable: int
    patients: int
    referable: int
    urgent: int
    recall: int
    referable_by_disease: dict[str, int]  # disease id -> patients referable with it
    ungradable_by_reason: dict[str, int]  # quality reason -> ungradable images failing it
    ungradable: int
    refused: int
    refused_by_kind: dict[str, int]
    exams: list[ExamResult]  # most urgent first


def _jinja() -> Any:
    try:
        import jinja2
    except ImportError as e:
        raise ReportSupportMissingError("reports need the optional extra: pip install 'predilect[report]'") from e
    return jinja2


def disease_names(
    records: Sequence[JournalRecord], catalogs: Sequence[Catalog] = (), *, given: Catalog | None = None
) -> dict[str, str]:
    """Catalog id -> the disease's name: from ``given`` (``--catalog``), then from each of ``catalogs`` and the
    built-in catalog whose digest is one the records were screened with; other ids keep their id."""
    digests = {r.result.catalog_digest for r in records if r.result is not None}
    names = {d.id: d.name for d in given} if given is not None else {}
    for catalog in (*catalogs, DEFAULT_CATALOG):
        if catalog.digest() in digests:
            for disease in catalog:
                names.setdefault(disease.id, disease.name)
    return names


def worklist(records: Sequence[JournalRecord], exams: Sequence[ExamResult]) -> Worklist:
    """The report's counts over ``records`` and its reading order of ``exams``."""
    results = [r.result for r in records if r.result is not None]
    referable: Counter[str] = Counter()
    for exam in exams:
        if exam.referable:
            referable.update({finding for eye in exam.eyes for finding in eye.findings})
    reasons: Counter[str] = Counter(reason for r in results if not r.gradable for reason in r.quality.reasons)
    refused = [r for r in records if r.result is None]
    kinds: Counter[str] = Counter(REFUSAL_KINDS.get(r.error_type or "", "unreadable input") for r in refused)
    order = sorted(exams, key=lambda e: (URGENCY.index(e.outcome), e.patient_id))
    return Worklist(
        images=len(records),
        screened=len(results),
        gradable=sum(r.gradable for r in results),
        patients=len(exams),
        referable=sum(e.referable for e in exams),
        urgent=sum(e.outcome == REFER_URGENTLY for e in exams),
        recall=sum(e.outcome == RECALL for e in exams),
        referable_by_disease=dict(referable.most_common()),
        ungradable_by_reason=dict(reasons.most_common()),
        ungradable=sum(not r.gradable for r in results),
        refused=len(refused),
        refused_by_kind=dict(kinds.most_common()),
        exams=order,
    )


class _Images:
    """Writes the report's images under ``out_dir/images`` and names them relative to the page."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)

    def name(self, key: str, frame: int | None, suffix: str) -> str:
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(key).stem)[:48] or "image"
        digest = hashlib.sha1(key.encode()).hexdigest()[:8]
        return f"{IMAGES_DIR}/{stem}-{digest}{f'-f{frame}' if frame is not None else ''}{suffix}"

    def jpeg(self, pixels: np.ndarray, relative: str, *, max_side_px: int | None = None) -> str:
        from predilect.client.overlay import pillow

        image = pillow().fromarray(pixels)
        if max_side_px is not None:
            image.thumbnail((max_side_px, max_side_px))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=FULL_JPEG_QUALITY if max_side_px is None else 85)
        (self.out_dir / relative).write_bytes(buffer.getvalue())
        return relative

    def copy(self, source: Path, relative: str) -> str:
        shutil.copyfile(source, self.out_dir / relative)
        return relative


def _dicom_file(record: JournalRecord, dicom_dirs: Sequence[Path]) -> Path | None:
    """The stored instance of a gateway record (``<SOP Instance UID>.dcm`` in one of ``dicom_dirs``)."""
    uid = record.sop_instance_uid or record.key
    return next((d / f"{uid}.dcm" for d in dicom_dirs if (d / f"{uid}.dcm").is_file()), None)


def _photograph(record: JournalRecord, dicom_dirs: Sequence[Path]) -> np.ndarray | None:
    """The RGB pixels of the record's photograph (its frame), or None when its source is not here."""
    from predilect.client.inputs import prepare
    from predilect.client.overlay import decode_photograph

    path = Path(record.key)
    source = path if path.is_file() else _dicom_file(record, dicom_dirs)
    if source is None:
        return None
    payload = next((p.payload for p in prepare(source) if p.frame == record.frame), None)
    return decode_photograph(payload) if payload is not None else None


def _peak_words(peak: tuple[float, float], size: tuple[int, int] | None) -> str:
    if size is None:
        return f"peak at {peak[0]:.0%} across, {peak[1]:.0%} down the photograph"
    width, height = size
    return (
        f"peak at x = {round(peak[0] * width)}, y = {round(peak[1] * height)} px of the {width} x {height} photograph"
    )


def _record_view(
    record: JournalRecord,
    images: _Images,
    *,
    names: Mapping[str, str],
    journal_dir: Path,
    dicom_dirs: Sequence[Path],
    photographs: bool,
) -> RecordView:
    view = RecordView(record)
    result = record.result
    if result is None:
        return view
    pixels = None
    try:
        pixels = _photograph(record, dicom_dirs)
    except (OSError, ValueError, InputError, PredilectClientError) as e:  # moved or damaged since screening
        view.notes.append(f"photograph not shown: {e}")
    if pixels is None and not view.notes:
        where = (
            " (gateway records: pass --incoming, the gateway's --incoming folder)" if record.sop_instance_uid else ""
        )
        view.notes.append(f"photograph not available here{where}")
    size = (int(pixels.shape[1]), int(pixels.shape[0])) if pixels is not None else None
    if pixels is not None and photographs:
        full = images.jpeg(pixels, images.name(record.key, record.frame, ".jpg"))
        thumb = images.jpeg(pixels, images.name(record.key, record.frame, "-thumb.jpg"), max_side_px=THUMBNAIL_PX)
        caption = f"photograph, {size[0]} x {size[1]} px (open for full size)" if size else "photograph"
        view.images.append(ImageView("photograph", thumb, caption, full))
    for heatmap in result.heatmaps or ():
        name = names.get(heatmap.disease, heatmap.disease)
        overlay = Path(heatmap.overlay) if heatmap.overlay else None
        if overlay is not None and not overlay.is_absolute():
            overlay = journal_dir / overlay
        if overlay is None or not overlay.is_file():
            view.notes.append(f"{name}: heatmap overlay file missing ({heatmap.overlay})")
            continue
        probability = result.scores.get(heatmap.disease)
        threshold = result.thresholds.get(heatmap.disease)
        odds = f"p = {probability:.2f}" if probability is not None else ""
        if threshold is not None:
            odds += f" (operating point {threshold:.2f})"
        caption = f"{name}, {odds}: {heatmap.describe()}; {_peak_words(heatmap.peak, size)}"
        stem = f"-{heatmap.disease}"
        full = images.copy(overlay, images.name(record.key, record.frame, f"{stem}.png"))
        from predilect.client.overlay import decode_photograph

        thumb = images.jpeg(
            decode_photograph(overlay.read_bytes()),
            images.name(record.key, record.frame, f"{stem}-thumb.jpg"),
            max_side_px=THUMBNAIL_PX,
        )
        view.images.append(ImageView("overlay", thumb, caption, full, heatmap.disease))
    return view


def write_report(
    records: Sequence[JournalRecord],
    out_dir: Path,
    *,
    title: str,
    source: str,
    journal_dir: Path,
    catalog: Catalog | None = None,
    catalogs: Sequence[Catalog] = (),
    dicom_dirs: Sequence[Path] = (),
    photographs: bool = True,
) -> Path:
    """Write the report of ``records`` (a journal's complete records) into ``out_dir``; the page's path.

    ``journal_dir`` resolves the overlays the journal names relative to it; the diseases are named from
    ``catalog`` (given by the user), else from whichever of ``catalogs`` and the built-in catalog the records
    were screened with (by digest), else by their ids; ``dicom_dirs`` hold the instances the gateway stored."""
    jinja2 = _jinja()
    names = disease_names(records, catalogs, given=catalog)
    exams = exam_results(records, names=names)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = _Images(out_dir)
    views = {
        (r.key, r.frame): _record_view(
            r, images, names=names, journal_dir=journal_dir, dicom_dirs=dicom_dirs, photographs=photographs
        )
        for r in records
    }
    by_exam: dict[tuple[str, str], list[JournalRecord]] = {}
    for r in records:
        by_exam.setdefault(exam_key(r), []).append(r)
    screened = [r.result for r in records if r.result is not None]
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    work = worklist(records, exams)
    html = environment.get_template(TEMPLATE.name).render(
        title=title,
        source=source,
        generated=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        schema_version=contract.RESULT_SCHEMA_VERSION,
        work=work,
        exams=[ExamView(e, f"exam-{i}", by_exam[(e.patient_id, e.study or "")]) for i, e in enumerate(work.exams, 1)],
        views=views,
        names=names,
        models=sorted({(r.model_name, r.model_version) for r in screened}),
        digests=sorted({(r.catalog_digest, r.rules_digest) for r in screened}),
        thresholds=screened[0].thresholds if screened else {},
    )
    page = out_dir / PAGE
    page.write_text(html, encoding="utf-8")
    return page
