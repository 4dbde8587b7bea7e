"""An HTML summary of a screening journal, per patient: what a grader opens.

One self-contained page (images embedded as data URIs, no script): per patient the exam outcome
and what to do, then per eye the decision, the gradability (and why not), the findings with
their probabilities and operating points, the photograph and each finding's heatmap overlay;
the model, catalog and rules that decided are named at the top. Elements carry ``data-*``
attributes (patient, eye, outcome, decision, kind of image) so the page can be read by programs
too. Rendering needs the ``[report]`` extra (Jinja2 for autoescaped templating, Pillow for the
photographs), imported on first use.
"""

from __future__ import annotations

import base64
import datetime
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from predilect import contract
from predilect.client.errors import InputError, PredilectClientError, ReportSupportMissingError
from predilect.client.exam import ExamResult, exam_results
from predilect.client.records import JournalRecord

TEMPLATE = Path(__file__).with_name("report.html.j2")
THUMBNAIL_PX = 360


@dataclass
class ImageView:
    kind: str  # "photograph" or "overlay"
    src: str  # a data URI
    caption: str
    disease: str = ""
    link: str = ""  # the full-size file, when there is one


@dataclass
class RecordView:
    record: JournalRecord
    images: list[ImageView] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _jinja() -> Any:
    try:
        import jinja2
    except ImportError as e:
        raise ReportSupportMissingError("reports need the optional extra: pip install 'predilect[report]'") from e
    return jinja2


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _thumbnail(record: JournalRecord) -> bytes | None:
    """A JPEG thumbnail of the record's photograph (its frame), or None when the key is not a readable file."""
    from predilect.client.inputs import prepare

    path = Path(record.key)
    if not path.is_file():
        return None
    try:
        payload = next((p.payload for p in prepare(path) if p.frame == record.frame), None)
    except PredilectClientError:
        return None
    return _jpeg_thumbnail(payload) if payload is not None else None


def _record_view(record: JournalRecord, *, photographs: bool) -> RecordView:
    view = RecordView(record)
    if record.result is None:
        return view
    if photographs:
        try:
            thumbnail = _thumbnail(record)
        except (OSError, ValueError, InputError) as e:  # a photograph moved or damaged since screening
            view.notes.append(f"photograph not shown: {e}")
            thumbnail = None
        if thumbnail is not None:
            view.images.append(ImageView("photograph", _data_uri(thumbnail, "image/jpeg"), "photograph"))
        else:
            view.notes.append("photograph not available here")
    for heatmap in record.result.heatmaps or ():
        overlay = Path(heatmap.overlay) if heatmap.overlay else None
        if overlay is not None and overlay.is_file():
            caption = f"{heatmap.disease}: attention (peak at x={heatmap.peak[0]:.2f}, y={heatmap.peak[1]:.2f})"
            uri = _data_uri(_jpeg_thumbnail(overlay.read_bytes()), "image/jpeg")
            view.images.append(ImageView("overlay", uri, caption, heatmap.disease, link=overlay.resolve().as_uri()))
        else:
            view.notes.append(f"{heatmap.disease}: heatmap overlay file missing ({heatmap.overlay})")
    return view


def _jpeg_thumbnail(encoded: bytes) -> bytes:
    """A JPEG thumbnail of an encoded image (the page embeds thumbnails and links the full PNG)."""
    from predilect.client.overlay import decode_photograph, pillow

    image = pillow().fromarray(decode_photograph(encoded))
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def render_report(records: Sequence[JournalRecord], *, title: str, source: str, photographs: bool = True) -> str:
    """The HTML page of ``records`` (a journal's complete records)."""
    jinja2 = _jinja()
    exams: list[ExamResult] = exam_results(records)
    views = {(r.key, r.frame): _record_view(r, photographs=photographs) for r in records}
    by_patient: dict[str, list[JournalRecord]] = {}
    for r in records:
        by_patient.setdefault(r.patient_id or r.key, []).append(r)
    screened = [r.result for r in records if r.result is not None]
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment.get_template(TEMPLATE.name).render(
        title=title,
        source=source,
        generated=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        schema_version=contract.RESULT_SCHEMA_VERSION,
        exams=exams,
        by_patient=by_patient,
        views=views,
        models=sorted({(r.model_name, r.model_version) for r in screened}),
        digests=sorted({(r.catalog_digest, r.rules_digest) for r in screened}),
        thresholds=screened[0].thresholds if screened else {},
        images=len(records),
        failed=sum(r.result is None for r in records),
    )
